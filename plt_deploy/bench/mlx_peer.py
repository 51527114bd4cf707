"""Side by side on this CPU: our ONNX Runtime and torch decode of a LoopCoder vs mlx-lm's own.

    python -m plt_deploy.bench.mlx_peer WORKDIR [--prompt 512] [--steps 64] [--threads 1] [--weights int4]

One random LoopCoder of the `small` preset's shape (fp32, Hugging Face layout) in WORKDIR/hf,
exported to WORKDIR/onnx (reused when present); batch 1, greedy. mlx-lm runs its model with its
own caches (model.make_cache(), as generate_step does), every step evaluated (mx.eval). Prints JSON:
prefill seconds and decode tokens/s per runtime and our ratios against mlx-lm. Needs the `parity`
extra (mlx[cpu], mlx-lm).

`--weights int4`: both sides at 4 bits, from the same fp32 folder: mlx-lm's model quantized by its
own API (`mlx_lm.utils.quantize_model`, affine, group 64) against our int4 export (the fp32 export
quantized by `export.quantize_export`, block 64, symmetric RTN); torch (no int4 path) is left out.

`--accuracy`: not speed but issue 19's accuracy numbers, each side's 4-/8-bit model against its own
fp32 model on the same token streams (bench/mlx_accuracy.py); prints a markdown table, `--json` keeps it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def make_folder(folder: Path, seed: int = 0) -> Path:
    import torch

    from .. import hf
    from ..config import PLTConfig
    from ..model import PLT

    if (folder / hf.CONFIG_FILE).is_file():
        return folder
    cfg = PLTConfig.from_name("small", mode="loopcoder", loops=2, tie_embeddings=False,
                             extra={"hf": {"bos_token_id": 256, "eos_token_id": [257]}})
    model = PLT(cfg).init_weights(seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:  # open gates, as a trained model's
            layer.attn.gate_weight.copy_(0.1 * torch.randn(layer.attn.gate_weight.shape, generator=g))
    return hf.save_hf_checkpoint(model, folder)


def _time_session(backend, prompt, steps: int) -> dict:
    import torch

    session = backend.start(1, prompt.shape[1] + steps + 1)
    t0 = time.perf_counter()
    logits = session.prefill(prompt, torch.tensor([prompt.shape[1]]))
    prefill = time.perf_counter() - t0
    ids = []
    t0 = time.perf_counter()
    for _ in range(steps):
        nxt = logits.argmax(-1)
        ids.append(int(nxt[0]))
        logits = session.decode(nxt)
    decode = time.perf_counter() - t0
    return {"prefill_s": prefill, "decode_tokens_per_s": steps / decode, "greedy": ids}


def _time_mlx(folder: Path, prompt, steps: int, bits: int | None = None) -> dict:
    import mlx.core as mx
    from mlx_lm.utils import load_model, quantize_model

    mx.set_default_device(mx.cpu)
    model, config = load_model(folder)
    if bits:
        model, _ = quantize_model(model, config, group_size=MLX_GROUP, bits=bits)
    cache = model.make_cache()
    t0 = time.perf_counter()
    logits = model(mx.array(prompt.numpy()), cache=cache)[:, -1]
    mx.eval(logits)
    prefill = time.perf_counter() - t0
    ids = []
    t0 = time.perf_counter()
    for _ in range(steps):
        nxt = mx.argmax(logits, axis=-1)
        mx.eval(nxt)
        ids.append(int(nxt[0]))
        logits = model(nxt[:, None], cache=cache)[:, -1]
        mx.eval(logits)
    decode = time.perf_counter() - t0
    return {"prefill_s": prefill, "decode_tokens_per_s": steps / decode, "greedy": ids}


MLX_GROUP = 64  # mlx-lm's default group size; our block size matches it


def run(workdir: Path, prompt_len: int = 512, steps: int = 64, threads: int = 1, weights: str = "fp32") -> dict:
    import torch

    from ..backends.ort_backend import OrtBackend
    from ..backends.torch_backend import TorchBackend
    from ..checkpoint import load_checkpoint
    from ..export.exporter import export_model
    from ..export.quantize import WeightSpec
    from ..export.quantize_export import quantize_export

    torch.set_num_threads(threads)
    folder = make_folder(workdir / "hf")
    onnx_dir = workdir / "onnx"
    if not (onnx_dir / "manifest.json").is_file():
        export_model(folder, onnx_dir, max_batch=1, max_seq=prompt_len + steps + 8, progress=False, force=True)
    prompt = torch.randint(0, 256, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    out = {"shape": "small preset, loopcoder L=2, fp32 checkpoint", "weights": weights, "prompt": prompt_len,
           "steps": steps, "threads": threads, "load_before": os.getloadavg()}
    if weights == "int4":
        onnx_dir = quantize_export(onnx_dir, workdir / f"onnx-int4-b{MLX_GROUP}", WeightSpec("int4", MLX_GROUP),
                                   force=True)
        out["mlx_lm_quantization"] = {"api": "mlx_lm.utils.quantize_model", "bits": 4, "group_size": MLX_GROUP}
    out["mlx_lm"] = _time_mlx(folder, prompt, steps, bits=4 if weights == "int4" else None)
    ours = ("onnxruntime",) if weights == "int4" else ("torch", "onnxruntime")
    if "torch" in ours:
        out["torch"] = _time_session(TorchBackend(load_checkpoint(folder), threads=threads), prompt, steps)
    with OrtBackend(onnx_dir, threads=threads) as ort:
        out["onnxruntime"] = _time_session(ort, prompt, steps)
    mlx = out["mlx_lm"]
    for name in ours:
        r = out[name]
        r["decode_speedup_vs_mlx"] = r["decode_tokens_per_s"] / mlx["decode_tokens_per_s"]
        r["prefill_speedup_vs_mlx"] = mlx["prefill_s"] / r["prefill_s"]
        r["greedy_equals_mlx"] = r["greedy"] == mlx["greedy"]
    for r in (out["mlx_lm"], *(out[name] for name in ours)):
        r.pop("greedy")
    out["load_after"] = os.getloadavg()
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m plt_deploy.bench.mlx_peer", description=__doc__.splitlines()[0])
    p.add_argument("workdir", type=Path)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights", choices=("fp32", "int4"), default="fp32")
    p.add_argument("--accuracy", action="store_true", help="issue 19's accuracy numbers, not speed")
    p.add_argument("--positions", type=int, default=2000, help="teacher-forced positions (--accuracy)")
    p.add_argument("--json", type=Path, help="also write the --accuracy result here")
    args = p.parse_args(argv)
    if args.accuracy:
        from . import mlx_accuracy

        r = mlx_accuracy.run(args.workdir, args.positions, args.threads,
                             tick=lambda s: print(s, file=sys.stderr, flush=True))
        if args.json:
            args.json.write_text(json.dumps(r, indent=2) + "\n")
        print(f"load average {r['load_before'][0]:.2f} before, {r['load_after'][0]:.2f} after; "
              f"{args.threads} thread(s)\n")
        print(mlx_accuracy.table(r))
        return
    print(json.dumps(run(args.workdir, args.prompt, args.steps, args.threads, args.weights), indent=2))


if __name__ == "__main__":
    main()
