"""Where a random model's quantization error comes from (docs/bench.md, "Accuracy: what was tried").

    python scripts/quant-rounding.py [--preset small] [--variants plt-2,vanilla] [--blocks 16,32,128]
        [--ort-levels default,1,4] [--json runs/quant-rounding.json]

1. Rounding alone, in torch (no runtime): top-1 agreement and relative logit RMS error of the random
   preset with its linear weights rounded by symmetric RTN (what the export stores: TensorRT's
   IDequantizeLayer takes no zero point), symmetric RTN with a per-block MSE scale search (clip
   0.5..1.0 x max|w|), and asymmetric min/max RTN with a zero point (ONNX Runtime-only), per block
   size. Teacher-forced full forward over 8 x 250 tokens.
2. The runtime: the int8/int4 exports (block 32) on ONNX Runtime with MatMulNBits' accuracy level
   (session option `session.qdq_matmulnbits_accuracy_level`, which the DequantizeLinear -> MatMul
   fusion copies into the fused node; `default` = the option absent, as OrtBackend runs exports,
   0 = unset/fp32, 1 = fp32 activations, 4 = int8 activation blocks) against the float torch model
   (check.quant_error), with the decode ms per step of the same runs (batch 8 teacher-forced
   stream, 1 thread).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plt_deploy.bench.variants import BY_NAME, build_models  # noqa: E402
from plt_deploy.config import PLTConfig  # noqa: E402
from plt_deploy.export.quantize import dequantize, rtn  # noqa: E402


def rtn_export(w: torch.Tensor, block: int, qmax: int) -> torch.Tensor:
    """w [K, N] -> dequantized w, exactly as the export rounds it (export.quantize.rtn)."""
    return torch.from_numpy(dequantize(*rtn(w.numpy(), block, qmax), block))


def rtn_mse(w: torch.Tensor, block: int, qmax: int) -> torch.Tensor:
    """w [K, N] -> dequantized w, symmetric per block of K, the scale (0.5..1.0 x max|w| / qmax) minimising the MSE."""
    K, N = w.shape
    b = w.reshape(K // block, block, N)
    amax = b.abs().amax(1, keepdim=True)  # [K/block, 1, N]
    best = err = None
    for f in np.linspace(0.5, 1.0, 21):
        s = (amax * f / qmax).clamp_min(1e-12)
        d = (b / s).round().clamp(-qmax, qmax) * s
        e = ((d - b) ** 2).sum(1, keepdim=True)
        if best is None:
            best, err = d, e
        else:
            better = e < err
            best, err = torch.where(better, d, best), torch.where(better, e, err)
    return best.reshape(K, N)


def rtn_asym(w: torch.Tensor, block: int, bits: int) -> torch.Tensor:
    """w [K, N] -> dequantized w, min/max per block with a zero point (2^bits levels)."""
    K, N = w.shape
    b = w.reshape(K // block, block, N)
    lo, hi = b.amin(1, keepdim=True), b.amax(1, keepdim=True)
    s = ((hi - lo) / (2 ** bits - 1)).clamp_min(1e-12)
    z = (-lo / s).round()
    return (((b / s).round() + z).clamp(0, 2 ** bits - 1) - z).mul(s).reshape(K, N)


def rounded(model, fn):
    out = copy.deepcopy(model)
    with torch.no_grad():
        for mod in out.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(fn(mod.weight.T.float()).T)  # the graph's MatMul reads W^T [K, N]
    return out


def rounding_table(models, blocks, tick) -> list[dict]:
    toks = torch.from_numpy(np.random.default_rng(0).integers(3, next(iter(models.values())).cfg.vocab_size,
                                                              size=(8, 250)))
    rows = []
    for v, m in models.items():
        with torch.no_grad():
            ref = m(toks).float()
            ref_rms = ref.pow(2).mean().sqrt()
            for bits, qmax in ((8, 127), (4, 7)):
                for block in blocks:
                    methods = {"symmetric rtn": lambda w: rtn_export(w, block, qmax),
                               "symmetric rtn + mse scale": lambda w: rtn_mse(w, block, qmax),
                               "asymmetric rtn (zero point)": lambda w: rtn_asym(w, block, bits)}
                    for name, fn in methods.items():
                        out = rounded(m, fn)(toks).float()
                        rows.append({"variant": v, "weights": f"int{bits}", "block": block, "method": name,
                                     "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
                                     "logit_rms_error_relative": float((out - ref).pow(2).mean().sqrt() / ref_rms)})
                        tick(rows[-1])
    return rows


def level_table(models, levels, workdir: Path, positions: int, tick) -> list[dict]:
    import onnxruntime as ort

    from plt_deploy.backends.ort_backend import OrtBackend
    from plt_deploy.backends.torch_backend import TorchBackend
    from plt_deploy.bench.quant import make_exports
    from plt_deploy.check import quant_error

    _, exports = make_exports("small", list(models), ("fp32", "int8", "int4"), 32, workdir, 8, tick=lambda s: None)
    level = {"value": "default"}
    plain = ort.SessionOptions

    class Options(plain):  # OrtBackend builds its own SessionOptions: add the level to them
        def __init__(self):
            super().__init__()
            if level["value"] != "default":
                self.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(level["value"]))

    ort.SessionOptions = Options
    rows = []
    try:
        for v, m in models.items():
            ref = TorchBackend(m, threads=1)
            for w in ("int8", "int4"):
                for lv in levels:
                    level["value"] = lv
                    with OrtBackend(exports[v, w], threads=1) as be:
                        batch, length, _ = quant_error.fit_stream(positions, 8, be.max_seq)
                        stream = quant_error.token_stream(m.cfg.vocab_size, batch, length)
                        quant_error.stream_logits(be, stream[:, :24])  # warm-up
                        t = time.perf_counter()
                        out = quant_error.stream_logits(be, stream)
                        ms = (time.perf_counter() - t) * 1e3 / (length - quant_error.PROMPT + 1)
                    r = quant_error.stream_logits(ref, stream)
                    rows.append({"variant": v, "weights": w, "accuracy_level": lv,  # "default": option absent
                                 "top1_agreement": float((r.argmax(-1) == out.argmax(-1)).mean()),
                                 "logit_rms_error_relative": float(np.sqrt(np.mean((out - r) ** 2)) /
                                                                   np.sqrt(np.mean(r ** 2))),
                                 "ms_per_step_batch8": ms})
                    tick(rows[-1])
    finally:
        ort.SessionOptions = plain
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--variants", default="plt-2,vanilla")
    p.add_argument("--blocks", default="16,32,128")
    p.add_argument("--ort-levels", default="default,1,4", help="MatMulNBits accuracy levels; default = option absent")
    p.add_argument("--positions", type=int, default=2000)
    p.add_argument("--work", default="runs/quant-rounding")
    p.add_argument("--json", default="runs/quant-rounding.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    models = build_models(PLTConfig.from_name(a.preset), [BY_NAME[v] for v in a.variants.split(",")], seed=0)
    tick = lambda row: print(json.dumps(row), file=sys.stderr, flush=True)  # noqa: E731
    result = {"preset": a.preset, "load_before": os.getloadavg(),
              "rounding": rounding_table(models, [int(b) for b in a.blocks.split(",")], tick)}
    if a.ort_levels:
        result["onnxruntime_accuracy_level"] = level_table(models, a.ort_levels.split(","),
                                                           Path(a.work), a.positions, tick)
    result["load_after"] = os.getloadavg()
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print("| variant | weights | block | method | top-1 agreement | relative logit RMS error |\n|---|---|---:|---|---:|---:|")
    for r in result["rounding"]:
        print(f"| {r['variant']} | {r['weights']} | {r['block']} | {r['method']} | {r['top1_agreement']:.4f} | "
              f"{r['logit_rms_error_relative']:.2%} |")
    if "onnxruntime_accuracy_level" in result:
        print("\n| variant | weights | accuracy level | top-1 agreement | relative logit RMS error | ms/step (batch 8) |")
        print("|---|---|---:|---:|---:|---:|")
        for r in result["onnxruntime_accuracy_level"]:
            print(f"| {r['variant']} | {r['weights']} | {r['accuracy_level']} | {r['top1_agreement']:.4f} | "
                  f"{r['logit_rms_error_relative']:.2%} | {r['ms_per_step_batch8']:.1f} |")
    print(f"load average {result['load_before'][0]:.1f} before, {result['load_after'][0]:.1f} after; wrote {a.json}")


if __name__ == "__main__":
    main()
