"""`plt-deploy bench` on the tiny preset: it runs and writes well-formed JSON with every field.

A benchmark, not a timed test: nothing here asserts a speed. The invariants checked are exact
ones (KV bytes allocated == formula, plt/vanilla KV ratio == 1 + (L-1)*w/T, step counts).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

from plt_deploy.cli.bench_cmd import command as bench_command
from plt_deploy.config import PLTConfig

PROMPT, NEW, REPEATS = 16, 8, 1
ROW_FIELDS = {
    "variant": str, "mode": str, "loops": int, "window": int, "backend": str, "batch": int, "prompt_len": int,
    "new_tokens": int, "ctx": int, "max_seq": int, "prefill_ms": float, "prefill_ms_p90": float,
    "decode_ms_median": float, "decode_ms_p90": float, "decode_ms_mean": float, "decode_steps": int,
    "tokens_per_s": float, "latency_vs_vanilla": float, "kv_bytes_allocated": int, "kv_bytes_formula": int,
    "kv_ratio_vs_vanilla": float, "kv_ratio_expected": float, "params": int, "weight_bytes": int,
}
TARGET_IDS = ["plt2_latency_vs_vanilla", "looped2_vs_plt2", "plt2_below_looped2", "plt3_vs_plt2", "plt_kv_bytes",
              "plt2_vs_hf_peer", "context_scaling", "decode_floor"]
HAVE_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def run_cli(tmp_path, *extra):
    out = tmp_path / "bench.json"
    args = ["--preset", "tiny", "--prompt-len", str(PROMPT), "--new-tokens", str(NEW), "--batch", "1",
            "--repeats", str(REPEATS), "--warmup-tokens", "1", "--contexts", "16,48", "--ctx-steps", "2",
            "--bandwidth-mib", "16", "--threads", "1", "--no-progress", "--json", str(out), *extra]
    res = CliRunner().invoke(bench_command, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "targets" in res.output and "plt-2" in res.output
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # atomic write: no temp file left
    return json.loads(out.read_text())


def check_rows(data, backend, expect_peer, variants=("plt-2", "plt-3", "looped-2", "vanilla")):
    cfg = PLTConfig.from_name("tiny")
    T = PROMPT + NEW
    rows = {r["variant"]: r for r in data["rows"]}
    expected = set(variants) | ({"hf-llama"} if expect_peer else set())
    assert set(rows) == expected
    for name, r in rows.items():
        assert r["error"] is None, r["error"]
        for field, typ in ROW_FIELDS.items():
            assert isinstance(r[field], typ) and not isinstance(r[field], bool), (name, field, r[field])
        assert r["backend"] == (backend if name != "hf-llama" else "transformers")
        assert r["decode_steps"] == NEW * REPEATS and r["max_seq"] == T and r["ctx"] == T
        assert 0 < r["decode_ms_median"] <= r["decode_ms_p90"] and r["prefill_ms"] > 0 and r["tokens_per_s"] > 0
        assert r["kv_bytes_allocated"] == r["kv_bytes_formula"] > 0, name
        assert r["kv_ratio_vs_vanilla"] == pytest.approx(r["kv_ratio_expected"], rel=1e-12)
    for L in (2, 3):  # the formula, computed here independently: 1 + (L-1) * w / T
        if f"plt-{L}" in rows:
            assert rows[f"plt-{L}"]["kv_ratio_vs_vanilla"] == pytest.approx(1 + (L - 1) * cfg.window / T, rel=1e-12)
    if "looped-2" in rows:
        assert rows["looped-2"]["kv_ratio_vs_vanilla"] == pytest.approx(2.0)
    assert rows["vanilla"]["latency_vs_vanilla"] == 1.0
    assert rows["plt-2"]["params"] == rows["vanilla"]["params"] + cfg.n_layers * cfg.n_heads * (cfg.head_dim + 1)


def check_sections(data):
    assert data["schema"] == "plt-deploy.bench/1"
    assert data["settings"]["prompt_len"] == PROMPT and data["settings"]["batches"] == [1]
    assert data["config"]["d_model"] == PLTConfig.from_name("tiny").d_model
    assert data["bandwidth"]["best_gbps"] > 0 and data["bandwidth"]["array_bytes"] == 16 << 20
    assert data["floor"] is None
    ids = [t["id"] for t in data["targets"]]
    assert ids == TARGET_IDS
    for t in data["targets"]:
        assert set(t) == {"id", "target", "measured", "threshold", "passed", "note", "noisy"}
        assert t["passed"] in (True, False, None)
    by_id = {t["id"]: t for t in data["targets"]}
    assert by_id["plt_kv_bytes"]["passed"] is True
    assert isinstance(by_id["plt2_latency_vs_vanilla"]["measured"], float)
    assert data["targets_settings"]["this_run_matches"] is False


def test_bench_torch_tiny(tmp_path):
    data = run_cli(tmp_path)
    check_rows(data, "torch", expect_peer=HAVE_TRANSFORMERS)
    check_sections(data)
    assert data["peer"]["available"] is HAVE_TRANSFORMERS
    ctx = data["context_scaling"]
    assert ctx["contexts"] == [16, 48] and len(ctx["points"]) == 4
    for p in ctx["points"]:
        assert p["max_seq"] == p["ctx"] + 2 and p["decode_steps"] == 2 * REPEATS and p["decode_ms_median"] > 0
    assert isinstance(ctx["ratio"], float) and ctx["ratio"] > 0


def test_bench_from_checkpoint_without_peer(tmp_path):
    from plt_deploy.bench import run_bench
    from plt_deploy.checkpoint import init_checkpoint

    ckpt = init_checkpoint("tiny", tmp_path / "ckpt", mode="vanilla")
    data = run_bench(model=ckpt, prompt_len=8, new_tokens=3, repeats=1, warmup_tokens=1, contexts=None,
                     peer=False, bandwidth_bytes=1 << 20, threads=1)
    assert {r["variant"] for r in data["rows"]} == {"plt-2", "plt-3", "looped-2", "vanilla"}
    assert all(r["error"] is None and r["decode_steps"] == 3 for r in data["rows"])
    assert data["peer"]["available"] is False and data["context_scaling"] is None
    assert {t["id"]: t["passed"] for t in data["targets"]}["plt2_vs_hf_peer"] is None


def test_bench_rejects_bad_requests(tmp_path):
    res = CliRunner().invoke(bench_command, ["--no-progress"])
    assert res.exit_code == 2 and "exactly one of --model or --preset" in res.output
    from plt_deploy.bench import run_bench
    from plt_deploy.errors import InputError

    with pytest.raises(InputError, match="ctx-steps"):
        run_bench(preset="tiny", ctx_steps=255)


def test_defaults_are_clipped_to_the_models_context_with_a_note():
    from plt_deploy.bench.suite import fit_to_model

    assert fit_to_model(2304, 512, 128, (128, 2048), 32) == (512, 128, (128, 2048), [])
    prompt, new, ctx, notes = fit_to_model(256, 512, 128, (128, 2048), 32, 8)
    assert prompt + new + 1 <= 256 and new == 64 and ctx == (14, 224) and len(notes) == 2
    assert "max_seq_len 256" in notes[0] and "contexts clipped to 14,224" in notes[1]


def test_bench_tiny_with_default_options_runs(tmp_path):
    """Issue 9: `plt-deploy bench --preset tiny` with default options (only output flags added)."""
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(bench_command, ["--preset", "tiny", "--no-progress", "--json", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "note: prompt and new tokens clipped" in res.output and "note: contexts clipped" in res.output
    data = json.loads(out.read_text())
    assert all(r["error"] is None for r in data["rows"]) and data["context_scaling"]["contexts"] == [14, 224]


@pytest.mark.slow  # ONNX exports of the variants take a minute or more on a 2-core machine
def test_bench_onnxruntime_tiny(tmp_path):
    pytest.importorskip("onnxruntime")
    if importlib.util.find_spec("plt_deploy.backends.ort_backend") is None:
        pytest.skip("the ONNX Runtime backend is not in this checkout")
    data = run_cli(tmp_path, "--backend", "onnxruntime", "--no-peer", "--no-validate-exports",
                   "--variants", "plt-2,vanilla", "--workdir", str(tmp_path.parent / "bench-ort-work"))
    check_rows(data, "onnxruntime", expect_peer=False, variants=("plt-2", "vanilla"))
    check_sections(data)


def test_bench_tensorrt_fails_fast_without_tensorrt(tmp_path, capsys):
    from plt_deploy.build.availability import unavailable_reason
    from plt_deploy.cli import main

    reason = unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present")
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--preset", "tiny", "--backend", "tensorrt", "--no-progress", "--workdir", str(tmp_path)])
    assert exc.value.code == 1 and capsys.readouterr().err.strip() == f"error: {reason}"
    assert not any(tmp_path.iterdir())  # nothing exported before the refusal


def test_quant_bench_labels_one_copy_per_block_size():
    """scripts/quant-bench.py --block-size 32,128: each int format quantized once per size, and every
    label maps back to its own format and size (ratios and accuracy rows are keyed by label)."""
    from plt_deploy.bench.quant import labels, ratios, spec_of

    assert labels(("fp32", "int8", "int4"), 32) == ["fp32", "int8", "int4"]
    many = labels(("fp32", "int8", "int4"), (32, 128))
    assert many == ["fp32", "int8-b32", "int8-b128", "int4-b32", "int4-b128"]
    assert [(spec_of(w, (32, 128)).format, spec_of(w, (32, 128)).block_size) for w in many[1:]] == [
        ("int8", 32), ("int8", 128), ("int4", 32), ("int4", 128)]
    assert spec_of("int4", 64).block_size == 64
    rows = [{"variant": v, "weights": w, "batch": 1, "decode_ms_median": ms}
            for v, w, ms in (("vanilla", "fp32", 8.0), ("vanilla", "int4-b128", 2.0), ("plt-2", "fp32", 9.0),
                             ("plt-2", "int4-b128", 3.0))]
    got = {r["ratio"]: r["value"] for r in ratios(rows)}
    assert got["vanilla int4-b128 speed-up over fp32 (fp32 ms / int4-b128 ms)"] == 4.0
    assert got["plt-2 / vanilla at int4-b128 (ms per step)"] == 1.5


def test_micro_no_local_ablation_runs_on_exports(tiny_exports, capsys):
    """bench.micro no-local: the ablated PLT decode graph loses exactly the local attention (one
    `Attention` of the G-SWA body), still runs, and differs from the export (its gate is open)."""
    import onnx
    import onnxruntime as ort

    from plt_deploy.bench import micro
    from plt_deploy.export.manifest import read_manifest

    plt_export, vanilla_export = tiny_exports["plt"][1], tiny_exports["vanilla"][1]
    m = read_manifest(plt_export, verify_hashes=False)
    model = onnx.load(str(m.graph_path("decode")))
    before = [n.op_type for f in model.functions for n in f.node].count("Attention")
    ablated = micro.without_local_part(model)
    assert [n.op_type for f in ablated.functions for n in f.node].count("Attention") == before - 1 == 1
    outs = {}
    for name, proto in (("export", onnx.load(str(m.graph_path("decode")))), ("ablated", ablated)):
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        binding = micro._decode_binding(sess, m.graphs["decode"], 1, 64, 40)
        sess.run_with_iobinding(binding)
        outs[name] = binding.copy_outputs_to_cpu()[0]
    assert np.isfinite(outs["ablated"]).all() and not np.allclose(outs["ablated"], outs["export"])
    micro.no_local(str(plt_export), str(vanilla_export), context=40, steps=2)
    table = capsys.readouterr().out
    assert "| plt, local part removed |" in table and "| vanilla | " in table
