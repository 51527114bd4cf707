"""`plt-deploy check` on a bfloat16 export, the graph level on the CPU (issue 16, defect 1).

Polygraphy rejects numpy ml_dtypes.bfloat16 feeds and ONNX Runtime's CPU provider has no bf16
kernels, so the graph level feeds torch.bfloat16 tensors (what TrtRunner takes) and the reference is
the graph's float32 copy (check/bf16_reference.py). Here: the copy holds no bf16 and the same
values, the whole graph-level comparison runs on torch bf16 feeds, and the float32 copy's prefill
logits are the torch model's. TensorRT's side of the comparison runs in scripts/gpu-check.sh
(DTYPES=bfloat16).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper


@pytest.fixture(scope="module")
def bf16_export(tmp_path_factory):
    from plt_deploy.checkpoint import init_checkpoint
    from plt_deploy.export.exporter import export_model

    root = tmp_path_factory.mktemp("bf16")
    ck = init_checkpoint("tiny", root / "ck", seed=3, dtype="bfloat16")
    return ck, export_model(ck, root / "ex", max_batch=2, max_seq=64, progress=False, validate=False)


def _bf16_anywhere(model: onnx.ModelProto) -> list[str]:
    found = [t.name for t in model.graph.initializer if t.data_type == TensorProto.BFLOAT16]
    found += [v.name for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]
              if v.type.tensor_type.elem_type == TensorProto.BFLOAT16]
    for n in [*model.graph.node, *(n for f in model.functions for n in f.node)]:
        for a in n.attribute:
            if (n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.BFLOAT16) or \
                    (a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.BFLOAT16):
                found.append(f"{n.op_type}:{n.name}")
    return found


@pytest.mark.slow
def test_float32_copy_has_no_bf16_and_the_same_values(bf16_export):
    from plt_deploy.check.bf16_reference import upcast_bf16

    _, ex = bf16_export
    for graph in ("prefill", "decode"):
        model = onnx.load(str(ex / f"{graph}.onnx"))
        assert _bf16_anywhere(model), f"{graph}: the export should be bf16"
        up = upcast_bf16(model)
        assert _bf16_anywhere(up) == []
        before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        after = {t.name: numpy_helper.to_array(t) for t in up.graph.initializer}
        assert before.keys() == after.keys()
        for name, a in before.items():
            np.testing.assert_array_equal(after[name], a.astype(np.float32) if a.dtype.name == "bfloat16" else a)


@pytest.mark.slow
def test_graph_level_runs_on_torch_bf16_feeds(bf16_export):
    """The comparison `check --backends tensorrt` makes per graph, with the ONNX Runtime reference on both
    sides (TensorRT is not here): it used to raise on the bf16 feeds; now every output compares."""
    from plt_deploy.check.tolerances import tolerance
    from plt_deploy.check.trt import compare_graph_runners, graph_feeds, onnxrt_runners, polygraphy_feeds
    from plt_deploy.export.manifest import read_manifest

    _, ex = bf16_export
    m = read_manifest(ex)
    feeds = polygraphy_feeds(graph_feeds(m, "decode", 2, m.max_seq, 5, 1), m.dtype)
    cache = next(t.name for t in m.graphs["decode"].inputs if t.role == "key")
    assert feeds[0][cache].dtype == torch.bfloat16
    report = compare_graph_runners(m, onnxrt_runners(ex), onnxrt_runners(ex), tolerance("tensorrt", m.dtype),
                                   batch=2, cache_len=m.max_seq, prompt=5, iterations=2)
    assert report["passed"] and report["dtype"] == "bfloat16"
    for graph, result in report["graphs"].items():
        assert {r["name"] for r in result["results"]} == set(m.graphs[graph].output_names)
        assert all(r["max_abs"] == 0.0 for r in result["results"])  # same runner, same feeds


@pytest.mark.slow
def test_float32_copy_prefill_matches_the_torch_model(bf16_export):
    """The reference is right: its prefill logits are the float32 torch model's (bf16 weights upcast)."""
    from polygraphy.comparator import Comparator

    from plt_deploy.backends.torch_backend import load as load_torch
    from plt_deploy.check.compare import as_float64, runner_iterations
    from plt_deploy.check.trt import graph_feeds, onnxrt_runners, polygraphy_feeds
    from plt_deploy.export.manifest import read_manifest

    ck, ex = bf16_export
    m = read_manifest(ex)
    spec = m.graphs["prefill"]
    raw = graph_feeds(m, "prefill", 2, m.max_seq, 7, 1)
    raw[0][spec.one("start").name][:] = 0  # a prompt from position 0 (the random state is then not read)
    feeds = polygraphy_feeds(raw, m.dtype)
    (_, iters), = runner_iterations(Comparator.run([onnxrt_runners(ex)["prefill"]], data_loader=feeds))
    got = as_float64(iters[0][spec.one("logits", "outputs").name])  # [B, V]
    with load_torch(ck, dtype="float32") as be:
        session = be.start(2, m.max_seq)
        want = session.prefill(torch.as_tensor(feeds[0][spec.one("tokens").name]),
                               torch.as_tensor(feeds[0][spec.one("lengths").name])).double().numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)


def test_triton_repo_refuses_a_bf16_export_for_onnxruntime(bf16_export, tmp_path, capsys):
    """Reported: triton-repo wrote an onnxruntime repository of a bf16 export, which Triton then could not
    load (UNAVAILABLE); generate / serve / check refuse it up front, and so does triton-repo now."""
    from cli_helpers import assert_one_line_error, run_cli

    _, ex = bf16_export
    code, _, err = run_cli(capsys, "triton-repo", "--model", str(ex), "--out", str(tmp_path / "tr"))
    assert_one_line_error(code, err, "bfloat16 exports do not run on ONNX Runtime")
    assert not (tmp_path / "tr").exists()
