"""Weight-only quantization, measured (docs/bench.md): accuracy and ONNX Runtime decode speed of
fp32 / int8 / int4 exports, side by side in one run (`python scripts/quant-bench.py`).

Speed: every variant (vanilla, plt-2, looped-2 of one random preset, same weights) is exported once
in fp32 and quantized from that export (`quantize_export`, no second trace); all of them are timed
by bench's own runner, interleaved in rounds (`bench.runner.interleave`), per batch size. The
machine is shared: the ratios between neighbours in one run are the result, absolute times are not.
Accuracy: quantization error (check.quant_error) of each int export against the float torch model
on the random preset, and, given a trained addition checkpoint, held-out exact match of the fp32,
int8 and int4 exports on ONNX Runtime.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from ..config import PLTConfig
from ..export.quantize import WeightSpec
from .runner import BackendRunner, interleave, prompt_tokens, summary
from .variants import BY_NAME, _export, build_models

INT_WEIGHTS = ("int8", "int4")


def labels(weights, block_sizes) -> list[str]:
    """Export labels: fp32, then each int format per block size ("int4", or "int4-b128" when several)."""
    blocks = (block_sizes,) if isinstance(block_sizes, int) else tuple(block_sizes)
    out = [w for w in weights if w not in INT_WEIGHTS]
    for w in (w for w in weights if w in INT_WEIGHTS):
        out += [w] if len(blocks) == 1 else [f"{w}-b{b}" for b in blocks]
    return out


def spec_of(label: str, block_sizes) -> WeightSpec:
    """The WeightSpec behind an int label of `labels`."""
    fmt, _, block = label.partition("-b")
    return WeightSpec(fmt, int(block) if block else (block_sizes if isinstance(block_sizes, int) else block_sizes[0]))


def make_exports(preset: str, variants, weights, block_size, workdir: Path, max_batch: int, seed: int = 0,
                 tick=print):
    """(models, {(variant, label): export folder}): fp32 exports of the variants, then quantized copies
    (block_size: one size, or several: one copy per int format and size, labelled by `labels`)."""
    from ..export.quantize_export import quantize_export

    base = PLTConfig.from_name(preset)
    models = build_models(base, [BY_NAME[v] for v in variants], seed=seed)
    exports = {}
    for v, model in models.items():
        tick(f"export {v} fp32")
        exports[v, "fp32"] = _export(model, workdir, v, max_batch, validate=False)
        for w in labels(weights, block_size):
            if w != "fp32":
                spec = spec_of(w, block_size)
                tick(f"quantize {v} {spec.format} block {spec.block_size}")
                exports[v, w] = quantize_export(exports[v, "fp32"], workdir / f"onnx-{v}-{spec.format}-b{spec.block_size}",
                                                spec, force=True)
    return models, exports


def speed(exports: dict, batches, prompt_len: int, new_tokens: int, repeats: int, threads: int, warmup: int,
          vocab: int, seed: int = 0, tick=print) -> list[dict]:
    """Decode ms per step (median over rounds) for every export at every batch size, interleaved."""
    from ..backends.ort_backend import OrtBackend

    backends = {f"{v}/{w}": OrtBackend(path, threads=threads) for (v, w), path in exports.items()}
    rows = []
    for batch in batches:
        tokens = prompt_tokens(batch, prompt_len, vocab, seed)
        runners = {name: BackendRunner(be) for name, be in backends.items()}
        jobs = {name: (lambda n, r=r: r.run(tokens, n)) for name, r in runners.items()}
        got = interleave(jobs, new_tokens, repeats, warmup, tick=lambda s: tick(f"batch {batch}: {s}"))
        for name, c in got.items():
            s = summary(c.decode_ms)
            v, w = name.split("/")
            rows.append({"variant": v, "weights": w, "batch": batch, "decode_ms_median": s["median"],
                         "decode_ms_p90": s["p90"], "steps": s["n"],
                         "tokens_per_s": batch * 1e3 / s["median"] if s["median"] else None})
    for be in backends.values():
        be.close()
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """The comparisons the issue asks for, from one run's medians: speed-ups (fp32 ms / int ms),
    PLT-2 / vanilla and looped-2 / PLT-2 (ms per step: > 1 means slower)."""
    ms = {(r["variant"], r["weights"], r["batch"]): r["decode_ms_median"] for r in rows}
    ints = list(dict.fromkeys(r["weights"] for r in rows if r["weights"] != "fp32"))
    out = []

    def add(what, batch, a, b):
        if a in ms and b in ms and ms[a] and ms[b]:
            out.append({"ratio": what, "batch": batch, "value": ms[a] / ms[b]})
    for batch in sorted({r["batch"] for r in rows}):
        for v in ("vanilla", "plt-2", "looped-2"):
            for w in ints:
                add(f"{v} {w} speed-up over fp32 (fp32 ms / {w} ms)", batch, (v, "fp32", batch), (v, w, batch))
        for w in ("fp32", *ints):
            add(f"plt-2 / vanilla at {w} (ms per step)", batch, ("plt-2", w, batch), ("vanilla", w, batch))
            add(f"looped-2 / plt-2 at {w} (ms per step)", batch, ("looped-2", w, batch), ("plt-2", w, batch))
    return out


def accuracy_random(models: dict, exports: dict, variants, positions: int, threads: int, block_size,
                    tick=print) -> list[dict]:
    """Quantization error of each int export against its float torch model (random weights), and against
    torch with the same rounded weights (export.quantize.fake_quantized): what the runtime adds."""
    from ..backends.ort_backend import OrtBackend
    from ..backends.torch_backend import TorchBackend
    from ..check.quant_error import quantization_error
    from ..export.quantize import fake_quantized

    out = []
    for v in variants:
        ref = TorchBackend(models[v], threads=threads)
        for w in dict.fromkeys(w for (_, w) in exports if w != "fp32"):
            if (v, w) in exports:
                tick(f"accuracy {v} {w}")
                rounded = TorchBackend(fake_quantized(models[v], spec_of(w, block_size)), threads=threads)
                with OrtBackend(exports[v, w], threads=threads) as be:
                    fmt = spec_of(w, block_size).format
                    r = quantization_error(ref, be, fmt, positions=positions)
                    # the runtime's own share: ORT against torch computing with the same rounded weights
                    rt = quantization_error(rounded, be, fmt, positions=positions // 4, greedy_tokens=16)
                out.append({"variant": v, "weights": w, **{k: r[k] for k in (
                    "positions", "top1_agreement", "bound", "passed", "logit_rms_error", "logit_rms_error_relative",
                    "greedy_agreement_lengths", "greedy_new_tokens")},
                            "vs_rounded_torch": {k: rt[k] for k in ("positions", "top1_agreement",
                                                                     "logit_rms_error_relative")}})
    return out


def accuracy_trained(checkpoint: Path, workdir: Path, block_size: int, examples: int, threads: int,
                     tick=print) -> dict:
    """Held-out exact match of a trained checkpoint: torch, and its fp32 / int8 / int4 exports on ONNX Runtime."""
    from ..backends.ort_backend import OrtBackend
    from ..backends.torch_backend import load as load_torch
    from ..checkpoint import load_config
    from ..export.exporter import export_model
    from ..export.quantize_export import quantize_export
    from ..tasks import TASKS
    from ..training import exact_match

    cfg = load_config(checkpoint)
    task = TASKS[(cfg.extra or {}).get("task", "addition")]
    tick("export the trained checkpoint")
    fp32 = export_model(checkpoint, workdir / "trained-fp32", max_batch=8, force=True, progress=False, validate=False)
    result = {"checkpoint": str(checkpoint), "task": task.name, "examples": examples, "block_size": block_size,
              "exact_match": {"torch fp32": exact_match(load_torch(checkpoint, threads=threads), task, examples)}}
    for w in ("fp32", *INT_WEIGHTS):
        path = fp32 if w == "fp32" else quantize_export(fp32, workdir / f"trained-{w}", WeightSpec(w, block_size),
                                                        force=True)
        tick(f"exact match {w}")
        with OrtBackend(path, threads=threads) as be:
            result["exact_match"][f"onnxruntime {w}"] = exact_match(be, task, examples)
    base = result["exact_match"]["onnxruntime fp32"]
    result["bound"] = "int8 and int4 >= fp32 - 0.01"
    result["passed"] = all(result["exact_match"][f"onnxruntime {w}"] >= base - 0.01 for w in INT_WEIGHTS)
    return result


def run(preset: str = "small", variants=("vanilla", "plt-2", "looped-2"), weights=("fp32", "int8", "int4"),
        block_size: int | tuple[int, ...] = 32, batches=(1, 8), prompt_len: int = 32, new_tokens: int = 64, repeats: int = 3,
        warmup: int = 8, threads: int = 1, positions: int = 2000, trained: str | None = None, trained_block: int = 16,
        examples: int = 256, workdir: str | Path = "runs/quant-bench", seed: int = 0, tick=print,
        parts=("speed", "random", "trained")) -> dict:
    """parts: speed (interleaved decode timing), random (quantization error of the random preset),
    trained (exact match of `trained`'s exports; needs `trained`)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    result = {"preset": preset, "threads": threads, "block_size": block_size, "prompt_len": prompt_len,
              "new_tokens": new_tokens, "repeats": repeats, "load_before": os.getloadavg(), "cpus": os.cpu_count(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if "speed" in parts or "random" in parts:
        models, exports = make_exports(preset, variants, weights, block_size, workdir, max(batches), seed, tick)
        result["sizes_bytes"] = {f"{v}/{w}": sum(f.stat().st_size for f in p.glob("decode.onnx*"))
                                 for (v, w), p in exports.items()}
    if "speed" in parts:
        result["speed"] = speed(exports, batches, prompt_len, new_tokens, repeats, threads, warmup,
                                models[variants[0]].cfg.vocab_size, seed, tick)
        result["ratios"] = ratios(result["speed"])
    if "random" in parts:
        result["accuracy_random"] = accuracy_random(models, exports, [v for v in ("plt-2", "vanilla") if v in models],
                                                    positions, threads, block_size, tick)
    if trained and "trained" in parts:
        result["accuracy_trained"] = accuracy_trained(Path(trained), workdir, trained_block, examples, threads, tick)
    result["load_after"] = os.getloadavg()
    return result
