"""Weight-only int8/int4 exports (export/quantize.py): the rounding, the graph rewrite, ONNX Runtime's
fusion into MatMulNBits, check's quantization-error report, generate, and bad input.

The tiny preset's float exports (conftest) are quantized without tracing again (`export --model
EXPORT --weights ...`); one test exports from the checkpoint the way users do (with validation).
Tiny's mlp_hidden is 176, so its block size is 16.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from cli_helpers import assert_one_line_error, run_cli
from plt_deploy.backends.ort_backend import OrtBackend
from plt_deploy.backends.torch_backend import load as load_torch
from plt_deploy.check.quant_error import quantization_error
from plt_deploy.export import manifest as manifest_lib
from plt_deploy.export.quantize import dequantize, rtn

MODES = ("plt", "looped", "vanilla")


@pytest.fixture(scope="module")
def quantized(tiny_exports, tmp_path_factory):
    """(mode, weights) -> (checkpoint, quantized export folder) from the tiny float exports."""
    from plt_deploy.export.quantize import WeightSpec
    from plt_deploy.export.quantize_export import quantize_export

    root = tmp_path_factory.mktemp("quant")
    out = {}
    for mode in MODES:
        ck, ex = tiny_exports[mode]
        for w in ("int8", "int4"):
            out[mode, w] = (ck, quantize_export(ex, root / f"{mode}_{w}", WeightSpec(w, block_size=16)))
    return out


@pytest.mark.parametrize("bits,qmax", [(8, 127), (4, 7)])
def test_rtn_rounds_to_nearest_within_half_a_step(bits, qmax):
    w = np.random.default_rng(0).normal(size=(64, 24)).astype(np.float32)
    w[:16, 3] = 0.0  # an all-zero block: scale must stay positive (TensorRT), values exactly 0
    q, scale = rtn(w, 16, qmax)
    assert q.shape == w.shape and scale.shape == (4, 24) and (scale > 0).all()
    assert np.abs(q).max() <= qmax and np.abs(q).max() == qmax  # each block's largest value maps to qmax
    err = np.abs(dequantize(q, scale, 16) - w)
    assert (err <= np.repeat(scale, 16, axis=0) / 2 + 1e-7).all()
    assert (dequantize(q, scale, 16)[:16, 3] == 0).all()


def test_int4_packing_reads_back(quantized):
    """The packed INT4 initializers read back (onnx's own unpacking) as the values rtn produced."""
    from plt_deploy.export.quantize import _q_tensor

    q = np.random.default_rng(1).integers(-7, 8, size=(32, 5)).astype(np.int8)
    back = numpy_helper.to_array(_q_tensor("w", q, 4)).astype(np.int8)
    assert (back == q).all()


def _optimized_ops(path, tmp_path):
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / f"opt_{path.stem}.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_ort_fuses_every_quantized_weight_into_matmulnbits(quantized, mode, weights, tmp_path):
    _, ex = quantized[mode, weights]
    m = manifest_lib.read_manifest(ex)
    assert m.quantized and m.weights["format"] == weights and m.weights["block_size"] == 16
    for graph in ("prefill", "decode"):
        ops = _optimized_ops(m.graph_path(graph), tmp_path)
        assert ops.count("MatMulNBits") == m.weights["quantized_tensors"][graph] > 0, (graph, ops)
        assert "DequantizeLinear" not in ops and "Gemm" not in ops  # nothing left to dequantize per run


@pytest.mark.parametrize("mode", MODES)
def test_only_linear_weights_are_quantized(tiny_exports, quantized, mode):
    """Every DequantizeLinear feeds a MatMul's weight; norms, the gate, RoPE tables and the G-SWA
    node's inputs stay float; per layer q/k/v/o + 3 MLP weights per loop, plus the lm_head."""
    ck, ex = quantized[mode, "int4"]
    m = manifest_lib.read_manifest(ex)
    cfg = m.config
    for graph in ("prefill", "decode"):
        model = onnx.load(str(m.graph_path(graph)))
        consumers = {}
        for n in model.graph.node:
            for i, name in enumerate(n.input):
                consumers.setdefault(name, []).append((n.op_type, i))
        dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        for n in dq:
            assert consumers[n.output[0]] == [("MatMul", 1)], n.name
        inits = {t.name: t for t in model.graph.initializer}
        for name, t in inits.items():
            if "norm" in name or "gate" in name or name.startswith("model.lm_head"):
                assert t.data_type == onnx.TensorProto.FLOAT, name  # the embedding table Gather stays float too
        for n in model.graph.node:
            if n.domain == "plt":
                assert all(i not in {d.output[0] for d in dq} for i in n.input)
        # plt's decode runs its L rows through each weight once; looped runs the loops one after another
        passes = 1 if mode == "vanilla" or (mode == "plt" and graph == "decode") else cfg.loops
        assert len(dq) == 7 * cfg.n_layers * passes + 1 == m.weights["quantized_tensors"][graph]


def test_check_reports_quantization_error_not_parity(quantized, capsys, tmp_path):
    ck, ex = quantized["plt", "int4"]
    code, out, err = run_cli(capsys, "check", "--model", str(ck), "--onnx", str(ex),
                             "--report", str(tmp_path / "r.json"))
    report = json.loads((tmp_path / "r.json").read_text())
    q = report["backends"]["onnxruntime"]["quantization"]
    assert code == 0 and "PASSED" in out and "quantization error" in out, out + err
    assert report["weights"] == "int4" and report["rule"].startswith("top-1 agreement")
    assert q["positions"] >= 900 and q["top1_agreement"] >= 0.95 and q["passed"]
    assert 0 < q["logit_rms_error_relative"] < 0.2  # int4 rounding shows, but far below the logits' size
    assert len(q["greedy_agreement_lengths"]) == 2


@pytest.mark.parametrize("mode", ["plt", "vanilla"])
def test_int8_error_is_smaller_than_int4(quantized, mode):
    ck, _ = quantized[mode, "int8"]
    ref = load_torch(ck)
    r8 = quantization_error(ref, OrtBackend(quantized[mode, "int8"][1]), "int8", positions=256, greedy_tokens=16)
    r4 = quantization_error(ref, OrtBackend(quantized[mode, "int4"][1]), "int4", positions=256, greedy_tokens=16)
    assert r8["passed"] and r8["top1_agreement"] >= 0.99
    assert r8["logit_rms_error"] * 4 < r4["logit_rms_error"]  # 4 fewer bits: ~16x coarser steps


def test_generate_runs_a_quantized_export(quantized, capsys):
    _, ex = quantized["plt", "int4"]
    code, out, err = run_cli(capsys, "generate", "--backend", "onnxruntime", "--model", str(ex),
                             "--prompt", "hello", "--max-new-tokens", "6")
    assert code == 0 and out.strip(), err


def test_export_from_checkpoint_int8_validates(tiny_exports, tmp_path, capsys):
    """The user's path: a checkpoint traced and quantized in one export, validated by quantization error.
    No --block-size: the default 32 does not divide tiny's mlp_hidden, so 16 is taken, with a note."""
    ck, _ = tiny_exports["plt"]
    out = tmp_path / "ex8"
    code, stdout, err = run_cli(capsys, "export", "--model", str(ck), "--out", str(out), "--weights", "int8",
                                "--max-batch", "2")
    assert code == 0, err
    assert "note: --block-size 16: the default 32 does not divide the model's mlp_hidden = 176" in err
    assert "quantization error (int8, block 16): top-1 agreement" in err and "check's bound" in err
    data = json.loads((out / "manifest.json").read_text())
    assert data["weights"]["format"] == "int8" and data["weights"]["method"] == "rtn"
    assert data["weights"]["block_size"] == 16 and "auto_block" not in data["weights"]
    assert data["weights"]["quantized_tensors"]["decode"] == 15


def _nothing_written(parent, name):
    return not any(p.name == name or p.name.startswith(f".{name}.") for p in parent.iterdir())


@pytest.mark.parametrize("args,needle", [
    (["--weights", "int4", "--block-size", "32"], "mlp_hidden = 176 is not a multiple of the block size; use "
                                                  "--block-size 16"),
    (["--weights", "int4", "--block-size", "48"], "Invalid value for --block-size: 48: choose from 16, 32, 64, 128"),
    (["--weights", "int4", "--quant-method", "gptq"], "Invalid value for --quant-method: 'gptq' is unknown"),
    (["--weights", "int3"], "Invalid value for '--weights': 'int3' is not one of"),
    (["--weights", "fp16", "--dtype", "fp32"], "--weights fp16 stores float16 weights but --dtype is float32"),
    (["--block-size", "16"], "need --weights int8|int4"),
])
def test_bad_quantization_options_one_line_nothing_written(tiny_exports, tmp_path, capsys, args, needle):
    ck, _ = tiny_exports["plt"]
    code, _, err = run_cli(capsys, "export", "--model", str(ck), "--out", str(tmp_path / "x"), *args)
    assert_one_line_error(code, err, needle)
    assert _nothing_written(tmp_path, "x")


def test_quantizing_a_quantized_export_is_refused(quantized, tmp_path, capsys):
    _, ex = quantized["plt", "int4"]
    for w in ("int4", "int8"):
        code, _, err = run_cli(capsys, "export", "--model", str(ex), "--out", str(tmp_path / "again"),
                               "--weights", w, "--block-size", "16")
        assert_one_line_error(code, err, "already quantized (int4, block 16)")
    assert _nothing_written(tmp_path, "again")


def test_quantize_embeddings_reads_the_table_through_dequantize(tiny_exports, tmp_path):
    """--quantize-embeddings: the token Gather reads DequantizeLinear(axis=1) of the table; RoPE's
    position Gathers keep their float tables; the export still agrees with torch."""
    from plt_deploy.export.quantize import WeightSpec
    from plt_deploy.export.quantize_export import quantize_export

    ck, ex = tiny_exports["vanilla"]
    out = quantize_export(ex, tmp_path / "emb", WeightSpec("int8", block_size=16, embeddings=True))
    m = manifest_lib.read_manifest(out)
    model = onnx.load(str(m.graph_path("decode")))
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids"]
    assert gathers and all(g.input[0] in dq for g in gathers)
    assert all(onnx.helper.get_attribute_value(a) == 1 for g in gathers for a in dq[g.input[0]].attribute
               if a.name == "axis")
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2]
    assert floats  # the RoPE cos/sin tables
    r = quantization_error(load_torch(ck), OrtBackend(out), "int8", positions=128, greedy_tokens=16)
    assert r["passed"], r["line"]


def test_runtime_matches_torch_with_the_rounded_weights(quantized):
    """export.quantize.fake_quantized (the plain torch path) computes what the int4 graph computes:
    ONNX Runtime is much closer to it than to the float model (what is left is MatMulNBits' own
    arithmetic, e.g. its int8 activation blocks)."""
    from plt_deploy.export.quantize import WeightSpec, fake_quantized

    ck, ex = quantized["plt", "int4"]
    ref = load_torch(ck)
    be = OrtBackend(ex)
    vs_float = quantization_error(ref, be, "int4", positions=128, greedy_tokens=8)
    from plt_deploy.backends.torch_backend import TorchBackend
    vs_rounded = quantization_error(TorchBackend(fake_quantized(ref.model, WeightSpec("int4", 16))), be, "int4",
                                    positions=128, greedy_tokens=8)
    assert vs_rounded["logit_rms_error"] * 3 < vs_float["logit_rms_error"]
    assert vs_rounded["top1_agreement"] >= vs_float["top1_agreement"]


def test_quantized_export_fits_max_batch_1_and_a_short_max_seq(tiny_exports, tmp_path, capsys):
    """Reported: int8/int4 with --max-batch 1 failed its own validation and `check` ('batch of 2 exceeds
    the export's --max-batch 1'); --max-seq 8 failed with 'chunk lengths ... must be in [1, 7]'. The
    greedy prompts and the stream now fit the export (check's float rule), with notes."""
    ck, _ = tiny_exports["vanilla"]
    for args, name in ((["--max-batch", "1"], "b1"), (["--max-batch", "1", "--max-seq", "8"], "s8")):
        code, _, err = run_cli(capsys, "export", "--model", str(ck), "--out", str(tmp_path / name), "--weights",
                               "int4", *args)
        assert code == 0 and "quantization error (int4, block 16): top-1 agreement" in err, err
    code, out, err = run_cli(capsys, "check", "--model", str(ck), "--onnx", str(tmp_path / "s8"), "--new-tokens", "4")
    assert code in (0, 1) and "Traceback" not in err and "quantization error, not parity" in out, err + out
    assert "note: positions 2000 -> 4 (the export's --max-batch and --max-seq)" in err, err
    assert "note: greedy tokens 4 -> 2 (the export's --max-seq 8)" in err, err


def test_options_an_export_folder_keeps_are_refused(quantized, tiny_exports, tmp_path, capsys):
    """Reported: --max-batch / --max-seq / --opset were silently ignored when quantizing an export folder;
    --out inside the source export was written there (then copied by triton-repo with it)."""
    _, ex = tiny_exports["plt"]
    for args in (["--max-batch", "2"], ["--max-seq", "64", "--opset", "25"]):
        code, _, err = run_cli(capsys, "export", "--model", str(ex), "--out", str(tmp_path / "q"), "--weights", "int4",
                               *args)
        assert_one_line_error(code, err, "not apply to an export folder")
        assert code == 2
    code, _, err = run_cli(capsys, "export", "--model", str(ex), "--out", str(ex / "q4"), "--weights", "int4")
    assert_one_line_error(code, err, "is inside the source export")
    assert not (ex / "q4").exists() and _nothing_written(tmp_path, "q")
    code, _, err = run_cli(capsys, "export", "--model", str(ex), "--out", str(tmp_path / "f"))
    assert_one_line_error(code, err, "is an export folder; export takes a checkpoint folder", "--weights int8|int4")
    code, _, err = run_cli(capsys, "bench", "--model", str(quantized["plt", "int4"][1]))
    assert_one_line_error(code, err, "is an export folder; bench builds", "scripts/quant-bench.py")
