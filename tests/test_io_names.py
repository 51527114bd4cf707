"""The manifest is the runners' only source of tensor names, shapes and past/present pairing.

An export whose every graph input and output is renamed (in the ONNX files and the manifest, to
names sharing nothing with the originals) must run exactly like the original: a runner that
spells a name ("input_ids", "logits") or derives one ("present_" -> "past_") fails here.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from plt_deploy.backends.ort_backend import OrtBackend
from plt_deploy.backends.trt_backend import decode_state
from plt_deploy.build.engine import profile_axes, profile_shapes
from plt_deploy.config import PLTConfig
from plt_deploy.errors import ArtifactError
from plt_deploy.export import io_spec
from plt_deploy.export.manifest import MANIFEST_FILE, read_manifest, write_manifest


def _rename_graph(graph, mapping: dict[str, str]) -> None:
    """Rename values in an ONNX graph (and its subgraphs) by `mapping`."""
    import onnx

    for vi in (*graph.input, *graph.output, *graph.value_info):
        vi.name = mapping.get(vi.name, vi.name)
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_graph(attr.g, mapping)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _rename_graph(g, mapping)


def rename_export(src, dst) -> dict[str, dict[str, str]]:
    """Copy an export with every graph I/O tensor renamed. Returns graph -> {old: new}."""
    import onnx

    shutil.copytree(src, dst)
    data = json.loads((dst / MANIFEST_FILE).read_text())
    maps = {}
    for graph, g in data["graphs"].items():
        maps[graph] = {t["name"]: f"{graph[:3]}_{kind}{i:02d}" for kind in ("inputs", "outputs")
                       for i, t in enumerate(g[kind])}
    for graph, g in data["graphs"].items():
        for kind in ("inputs", "outputs"):
            for t in g[kind]:
                t["name"] = maps[graph][t["name"]]
                if t.get("alias_of"):
                    t["alias_of"] = maps["decode"][t["alias_of"]]  # alias_of always names a decode input
        path = dst / g["file"]
        model = onnx.load(str(path), load_external_data=False)
        _rename_graph(model.graph, maps[graph])
        onnx.save(model, str(path))
    write_manifest(dst, data)
    return maps


def _run(backend, steps: int = 3) -> torch.Tensor:
    s = backend.start(2, 24)
    out = [s.prefill(torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]]), torch.tensor([4, 3]))]
    for k in range(steps):
        out.append(s.decode(torch.tensor([12 + k, 20 + k])))
    return torch.stack(out)  # [1 + steps, B, V]


@pytest.mark.slow
def test_renamed_export_runs_identically_on_onnxruntime(tiny_exports, tmp_path):
    _, ex = tiny_exports["plt"]
    maps = rename_export(ex, tmp_path / "renamed")
    renamed = read_manifest(tmp_path / "renamed")
    original = read_manifest(ex)
    for graph in io_spec.GRAPHS:  # nothing of the old names is left
        old = set(original.graphs[graph].input_names + original.graphs[graph].output_names)
        new = set(renamed.graphs[graph].input_names + renamed.graphs[graph].output_names)
        assert not old & new and new == set(maps[graph].values())
    want = _run(OrtBackend(ex))
    got = _run(OrtBackend(tmp_path / "renamed"))
    assert torch.equal(want, got)
    assert np.isfinite(got.numpy()).all()


@pytest.mark.slow
def test_renamed_spec_drives_trt_pairing_and_profiles(tiny_exports, tmp_path):
    """The TensorRT runner's pairing and the engine profiles read the renamed manifest too (CPU: no engine)."""
    _, ex = tiny_exports["plt"]
    maps = rename_export(ex, tmp_path / "renamed")
    m = read_manifest(tmp_path / "renamed")
    dec = m.graphs["decode"]
    pairs = decode_state(dec)
    back = {new: old for old, new in maps["decode"].items()}
    assert {back[p]: back[o] for p, o in pairs.items()} == {
        t.alias_of: t.name for t in read_manifest(ex).graphs["decode"].state_outputs()}
    shapes = profile_shapes(dec, profile_axes("decode", 2, m.max_seq))
    assert set(shapes) == set(dec.input_names)


def test_every_state_output_is_paired_and_in_place_only_for_caches():
    cfg = PLTConfig.from_name("tiny")
    specs = io_spec.graph_specs(cfg, 64, "float16")
    dec_inputs = {t.name: t for t in specs["decode"].inputs}
    for graph, spec in specs.items():
        outs = spec.state_outputs()
        assert outs and len({o.alias_of for o in outs}) == len(outs)
        for o in outs:
            past = dec_inputs[o.alias_of]
            assert (past.role, past.index, past.dtype) == (o.role, o.index, o.dtype)
            # decode: every cache is a TensorScatter; prefill (extend): the K/V, its rings are rewritten whole
            assert o.in_place == (o.role != "carry" if graph == "decode" else o.role in ("key", "value"))
            assert o.concrete({"batch": 3, "max_seq": 64}) == past.concrete({"batch": 3, "max_seq": 64})
        paired = io_spec.state_inputs(spec, specs["decode"])  # both graphs read the same state buffers
        assert sorted(paired.values()) == sorted(o.alias_of for o in outs)
    assert any(o.role == "carry" for o in specs["decode"].state_outputs())


def test_named_axis_resolver():
    t = io_spec.IOTensor("x", ("batch", 2, "max_seq", 16), "float32", "key")
    assert t.concrete({"batch": 3, "max_seq": 40}) == (3, 2, 40, 16)
    with pytest.raises(ArtifactError, match=r"x: no size for dynamic axis 'max_seq'"):
        t.concrete({"batch": 3})
    spec = io_spec.graph_specs(PLTConfig.from_name("tiny"), 64, "float32")["decode"]
    assert spec.one("tokens").role == "tokens" and spec.maybe("lengths") is None
    with pytest.raises(ArtifactError, match="expected one input with role 'key'"):
        spec.one("key")
