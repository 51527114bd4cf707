"""Export of the tiny preset (plt, looped, vanilla), ONNX Runtime parity, the manifest, damaged artifacts.

Each mode is exported once per module (the slow part); every other test reuses those folders.
"""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from plt_deploy.backends.ort_backend import OrtBackend
from plt_deploy.backends.torch_backend import load as load_torch
from plt_deploy.check.parity import compare_backends, compare_greedy
from plt_deploy.errors import ArtifactError, InputError
from plt_deploy.export import manifest as manifest_lib
from plt_deploy.export.exporter import DEFAULT_OPSET, export_model
from plt_deploy.ops import contract

MODES = ("plt", "looped", "vanilla")


@pytest.fixture(scope="module")
def exports(tiny_exports):
    return tiny_exports


@pytest.mark.parametrize("mode", MODES)
def test_ort_matches_torch_prefill_and_decode(exports, mode):
    ck, ex = exports[mode]
    ref, be = load_torch(ck), OrtBackend(ex)
    report = compare_backends(ref, be, steps=32, batch=2, prompt_lengths=[9, 4])
    assert report["summary"]["prefill_logits"]["max_abs"] <= 1e-5, report["summary"]
    assert report["summary"]["decode_logits"]["max_abs"] <= 1e-5, report["summary"]
    assert report["summary"]["decode_logits"]["iterations"] == 32
    assert report["passed"] and report["rule"].startswith("max|d|")


@pytest.mark.parametrize("mode", MODES)
def test_greedy_tokens_identical(exports, mode):
    ck, ex = exports[mode]
    result = compare_greedy(load_torch(ck), OrtBackend(ex), [[1, 72, 101, 108, 108, 111, 32], [1, 80, 76]], 64)
    assert result["passed"], result["prompts"]
    assert all(len(t) == 64 for t in result["test_tokens"])


def test_plt3_greedy_tokens_identical(tmp_path):
    """Issue 10: torch and ONNX Runtime agree token for token over 64 greedy tokens for plt-3 too
    (three rows per G-SWA call: the body's two-local-row path, R = 3, G = 1)."""
    from plt_deploy.checkpoint import init_checkpoint

    ck = init_checkpoint("tiny", tmp_path / "ck", mode="plt", seed=2, loops=3)
    ex = export_model(ck, tmp_path / "ex", max_batch=8, progress=False, validate=False)  # 3 x 8 rows > 16: the
    # eager small-M linear path must not put a shape guard into the trace (regression)
    result = compare_greedy(load_torch(ck), OrtBackend(ex), [[1, 72, 101, 108, 108, 111, 32], [1, 80, 76]], 64)
    assert result["passed"], result["prompts"]
    assert all(len(t) == 64 for t in result["test_tokens"])


@pytest.mark.parametrize("mode", MODES)
def test_checker_op_nodes_and_plugin_attributes(exports, mode):
    _, ex = exports[mode]
    m = manifest_lib.read_manifest(ex)
    for graph in ("prefill", "decode"):
        path = m.graph_path(graph)
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        nodes = [n for n in model.graph.node if n.domain == contract.OP_DOMAIN]
        if mode != "plt":
            assert not nodes and not model.functions  # baselines export without the plugin
            continue
        assert len(nodes) == m.config.n_layers  # one G-SWA node per layer of loops >= 2
        for node in nodes:
            assert node.op_type == contract.OP_NAME
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["plugin_namespace"] == contract.PLUGIN_NAMESPACE.encode()
            assert attrs["plugin_version"] == str(contract.OP_VERSION).encode()
            assert attrs["window"] == m.config.window and attrs["num_heads"] == m.config.n_heads
            assert attrs["num_kv_heads"] == m.config.n_kv_heads
            assert attrs["scale"] == pytest.approx(m.config.head_dim ** -0.5)
        fns = [f for f in model.functions if f.name == contract.OP_NAME and f.domain == contract.OP_DOMAIN]
        assert len(fns) == 1
        assert {(o.domain, o.version) for o in model.opset_import} >= {("", DEFAULT_OPSET), ("plt", contract.OP_VERSION)}


def test_manifest_describes_graphs_and_cache(exports):
    ck, ex = exports["plt"]
    data = json.loads((ex / "manifest.json").read_text())
    assert data["custom_op"]["name"] == contract.OP_NAME and data["custom_op"]["version"] == contract.OP_VERSION
    assert set(data["files"]) == {"prefill.onnx", "decode.onnx"}
    assert data["versions"]["torch"] == torch.__version__ and data["versions"]["onnx"] == onnx.__version__
    dec = data["graphs"]["decode"]
    names = [t["name"] for t in dec["inputs"]]
    assert names[:2] == ["input_ids", "position"] and "past_key.0" in names and "past_carry" in names
    in_place = {t["name"]: t["alias_of"] for t in dec["outputs"] if t["in_place"]}
    assert in_place["present_key.0"] == "past_key.0" and "present_carry" not in in_place
    pairs = {t["name"]: t["alias_of"] for t in dec["outputs"] if t["alias_of"]}
    assert pairs["present_carry"] == "past_carry"
    assert dec["inputs"][2]["shape"] == ["batch", 2, "max_seq", 16]
    assert "local_ring" in data["cache"] and data["model"]["sha256"] == manifest_lib.model_identity(ck)
    # the ONNX graphs really carry the names the manifest lists
    for g in ("prefill", "decode"):
        model = onnx.load(str(ex / data["graphs"][g]["file"]), load_external_data=False)
        assert [i.name for i in model.graph.input] == [t["name"] for t in data["graphs"][g]["inputs"]]
        assert [o.name for o in model.graph.output] == [t["name"] for t in data["graphs"][g]["outputs"]]


def test_decode_writes_cache_in_place(exports):
    _, ex = exports["plt"]
    be = OrtBackend(ex)
    s = be.start(2, 40)
    s.prefill(torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]]), torch.tensor([4, 3]))
    host = s.cache_arrays()
    before = {k: v.copy() for k, v in host.items()}
    ptrs = {k: s._bufs[k].data_ptr() for k in host}
    s.decode(torch.tensor([3, 4]))
    for name in ("past_key.0", "past_value.1"):
        changed = np.argwhere(np.any(host[name] != before[name], axis=(1, 3)))
        assert changed.tolist() == [[0, 4], [1, 3]]  # exactly the slot at each sequence's position
        assert s._bufs[name].data_ptr() == ptrs[name] == host[name].ctypes.data
    ring = np.argwhere(np.any(host["past_local_key.0"] != before["past_local_key.0"], axis=(1, 3)))  # [B, rows*Hkv, W, D]
    assert ring.tolist() == [[0, 4 % 8], [1, 3 % 8]]
    assert s.lengths.tolist() == [5, 4]


def test_session_limits(exports):
    _, ex = exports["plt"]
    be = OrtBackend(ex)
    with pytest.raises(InputError, match="max-batch"):
        be.start(5, 16)
    with pytest.raises(InputError, match="before prefill"):
        be.start(1, 16).decode(torch.tensor([1]))


def test_generate_cli_onnxruntime_matches_torch(exports, capsys):
    from plt_deploy.cli import main

    ck, ex = exports["vanilla"]
    main(["generate", "--model", str(ck), "--prompt", "hello", "--max-new-tokens", "12"])
    torch_text = capsys.readouterr().out
    main(["generate", "--backend", "onnxruntime", "--model", str(ex), "--prompt", "hello", "--max-new-tokens", "12",
          "--threads", "1"])
    assert capsys.readouterr().out == torch_text


def test_check_cli_report_and_exit_codes(exports, tmp_path, monkeypatch, capsys):
    from plt_deploy.check import tolerances
    from plt_deploy.cli import main

    ck, ex = exports["plt"]
    report = tmp_path / "report.json"
    main(["check", "--model", str(ck), "--onnx", str(ex), "--report", str(report), "--steps", "32"])
    data = json.loads(report.read_text())
    assert data["passed"] and data["backends"]["onnxruntime"]["greedy"]["new_tokens"] == 64
    assert "PASSED" in capsys.readouterr().out
    monkeypatch.setitem(tolerances.TOLERANCES["onnxruntime"], "float32", (0.0, 0.0))  # nothing passes a zero tolerance
    with pytest.raises(SystemExit) as exc:
        main(["check", "--model", str(ck), "--onnx", str(ex), "--report", str(report), "--steps", "2",
              "--new-tokens", "2"])
    assert exc.value.code == 1 and not json.loads(report.read_text())["passed"]
    other, _ = exports["vanilla"]
    with pytest.raises(SystemExit) as exc:
        main(["check", "--model", str(other), "--onnx", str(ex)])
    assert exc.value.code == 1 and "another model" in capsys.readouterr().err


def test_export_refuses_bad_requests(exports, tmp_path):
    ck, ex = exports["plt"]
    with pytest.raises(ArtifactError, match="already exists"):
        export_model(ck, ex, progress=False)
    with pytest.raises(InputError, match="opset"):
        export_model(ck, tmp_path / "x", opset=18, progress=False)
    with pytest.raises(InputError, match="max-seq"):
        export_model(ck, tmp_path / "x", max_seq=10_000, progress=False)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))


# Damaged artifacts ---------------------------------------------------------------------------

@pytest.fixture
def copy_of(exports, tmp_path):
    def make(mode="plt"):
        dst = tmp_path / f"copy_{mode}"
        shutil.copytree(exports[mode][1], dst)
        return dst
    return make


def _rehash(folder):
    """Re-record file hashes (as if an attacker or a bad tool also rewrote the manifest)."""
    data = json.loads((folder / "manifest.json").read_text())
    manifest_lib.write_manifest(folder, data)


def test_flipped_bytes_refused(copy_of):
    ex = copy_of()
    path = ex / "decode.onnx"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=r"decode\.onnx: sha256 does not match"):
        OrtBackend(ex)


def test_missing_external_data_refused(copy_of):
    ex = copy_of()
    model = onnx.load(str(ex / "prefill.onnx"))
    onnx.save_model(model, str(ex / "prefill.onnx"), save_as_external_data=True, location="prefill.onnx.data",
                    size_threshold=1024)
    _rehash(ex)
    assert OrtBackend(ex).sessions  # loads with its data file
    (ex / "prefill.onnx.data").unlink()
    with pytest.raises(ArtifactError, match=r"prefill\.onnx\.data: file not found"):
        OrtBackend(ex)


def test_external_data_written_above_limit(exports, tmp_path, monkeypatch):
    from plt_deploy.export import exporter

    _, ex = exports["vanilla"]
    monkeypatch.setattr(exporter, "EXTERNAL_DATA_LIMIT", 1024)
    files = exporter.save_onnx(onnx.load(str(ex / "decode.onnx")), tmp_path / "decode.onnx")
    assert files == ["decode.onnx", "decode.onnx.data"] and (tmp_path / "decode.onnx.data").stat().st_size > 1000
    onnx.checker.check_model(str(tmp_path / "decode.onnx"), full_check=True)


def test_wrong_op_version_refused(copy_of):
    ex = copy_of()
    model = onnx.load(str(ex / "prefill.onnx"))
    for o in model.opset_import:
        if o.domain == contract.OP_DOMAIN:
            o.version = contract.OP_VERSION + 1
    onnx.save(model, str(ex / "prefill.onnx"))
    _rehash(ex)
    with pytest.raises(ArtifactError, match=r"prefill\.onnx: imports custom op domain 'plt': G-SWA op version 3"):
        OrtBackend(ex)
    data = json.loads((ex / "manifest.json").read_text())
    data["custom_op"]["version"] = 7
    (ex / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"manifest\.json: G-SWA op version 7"):
        OrtBackend(ex)


def test_version_1_export_refused_with_how_to_reexport(copy_of, capsys):
    """An export made before issue 10 (op version 1) fails in one line naming the version and the fix."""
    from plt_deploy.cli import main

    ex = copy_of()
    data = json.loads((ex / "manifest.json").read_text())
    data["custom_op"].update(version=1, plugin_version="1")
    (ex / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--backend", "onnxruntime", "--model", str(ex), "--prompt", "hi", "--max-new-tokens", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1 and len(err) == 1, err
    assert "G-SWA op version 1" in err[0] and "implements version 2" in err[0] and "plt-deploy export" in err[0]


def test_manifest_hash_mismatch_refused(copy_of):
    ex = copy_of()
    data = json.loads((ex / "manifest.json").read_text())
    data["files"]["prefill.onnx"]["sha256"] = "0" * 64
    (ex / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"prefill\.onnx: sha256 does not match .*manifest\.json"):
        OrtBackend(ex)


def test_manifest_from_another_model_refused(copy_of, exports):
    ex = copy_of("plt")
    shutil.copyfile(exports["vanilla"][1] / "manifest.json", ex / "manifest.json")
    with pytest.raises(ArtifactError, match=r"(decode|prefill)\.onnx: .*(sha256|bytes)"):
        OrtBackend(ex)
    with pytest.raises(ArtifactError, match="another model"):
        manifest_lib.read_manifest(exports["plt"][1], expect_model=exports["vanilla"][0])


def test_missing_or_corrupt_manifest_refused(copy_of, tmp_path):
    ex = copy_of()
    (ex / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"manifest\.json: not valid JSON"):
        OrtBackend(ex)
    (ex / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"manifest\.json: file not found"):
        OrtBackend(ex)
    with pytest.raises(ArtifactError, match="no such export folder"):
        OrtBackend(tmp_path / "nowhere")


# Decode graph size after ONNX Runtime's optimisation (issue 10) --------------------------------

STEP_ONLY_OPS = {"Range", "LessOrEqual", "Less", "Greater", "GreaterOrEqual", "And", "Equal", "Where", "Mod", "Tile"}


def _optimized_decode_nodes(model, tmp_path, name):
    """Op types of `model`'s decode graph as ONNX Runtime runs it (ORT_ENABLE_ALL, the session's own
    optimized-model file): the G-SWA function inlined, fusions and eliminations applied."""
    import onnxruntime as ort

    from plt_deploy.bench.variants import _export

    ex = _export(model, tmp_path, name, 2, validate=False)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / f"{name}.opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(ex / "decode.onnx"), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(opts.optimized_model_filepath, load_external_data=False).graph.node]


def test_decode_graph_size_and_step_only_work_once(tmp_path):
    """PLT-2's optimized decode graph: masks and ring positions once per step (not per layer), and at
    most 21 nodes per layer more than vanilla's (the local Attention, gate 3, mix 3, ring writes 2,
    the row split and select 4, rank changes of the 5-D contract 4, 4 reshapes between the model's
    [B, L-1, Hkv, ., D] rows and the 4-D rings TensorScatter / TensorRT's KVCacheUpdate write, 2
    reshapes putting a KV head's query heads and rows in one query axis of the global Attention
    (0.97x decode time: onnx_op.build_function), minus 2 transposes vanilla has) plus 20 once per
    step (loop rows from the carry, ring slot and positions, local mask, gate bias).

    Issue 10's target of <= 1.15x vanilla is NOT met (docs/onnx.md): vanilla itself shrank to 40
    nodes per layer with the same one-node Attention, so 1.15x would leave 6 nodes per layer for
    everything G-SWA adds. The small preset measured 592 against 422 (1.40x; before: 1504 / 879) before
    the 4-D rings (issue 16) added their reshapes.
    """
    from plt_deploy.bench import variants as V
    from plt_deploy.config import PLTConfig

    def build(n_layers, names):
        base = PLTConfig.from_name("small", d_model=64, n_heads=8, n_kv_heads=4, mlp_hidden=128, max_seq_len=128,
                                   n_layers=n_layers)  # the small preset's graph structure at tiny widths
        return V.build_models(base, [V.BY_NAME[n] for n in names])

    one, two = build(1, ["plt-2"]), build(2, ["plt-2", "vanilla"])
    p1 = _optimized_decode_nodes(one["plt-2"], tmp_path / "l1", "plt-2")
    p2 = _optimized_decode_nodes(two["plt-2"], tmp_path / "l2", "plt-2")
    v2 = _optimized_decode_nodes(two["vanilla"], tmp_path / "l2", "vanilla")
    step_only = lambda o: sorted(x for x in o if x in STEP_ONLY_OPS)  # noqa: E731
    assert step_only(p1) == step_only(p2), "position-only nodes grow with the layers"
    assert p2.count("Attention") == 4 and p2.count("TensorScatter") == 8  # 2 attentions, 4 cache writes / layer
    assert "ScatterElements" not in p2 + v2 and v2.count("TensorScatter") == 4
    assert v2.count("Attention") == 2  # vanilla: the same one-node Attention per layer
    assert len(p2) - len(v2) <= 20 + 21 * 2, (len(p2), len(v2))


def test_generate_runs_more_prompts_than_max_batch_in_batches(tiny_exports, capsys):
    """An export's --max-batch (4 here) bounds one batch, not how many prompts `generate` takes."""
    from plt_deploy.cli import main

    ck, ex = tiny_exports["plt"]
    prompts = [x for p in ("a", "bc", "def", "g", "hi", "jk") for x in ("--prompt", p)]
    main(["generate", "--model", str(ck), *prompts, "--max-new-tokens", "6"])
    torch_text = capsys.readouterr().out
    main(["generate", "--backend", "onnxruntime", "--model", str(ex), *prompts, "--max-new-tokens", "6", "--threads", "1"])
    assert capsys.readouterr().out == torch_text and torch_text.count("\n") >= 6
