"""Peak RSS of loading a Hugging Face LoopCoder folder (`load_checkpoint`), against its bytes.

    python -m plt_deploy.bench.load_memory make FOLDER [--layers 20]   # random bf16 LoopCoder, ~1.0B params
    python -m plt_deploy.bench.load_memory measure FOLDER              # JSON: bytes, baseline, peak, ratio
    python -m plt_deploy.bench.load_memory quantize FOLDER --out EXPORT [--weights int4] [--plain]
        # peak RSS of `export --weights int4` (streamed from the shards; --plain: load + trace + quantize)

`make` writes the weights one tensor at a time into 4 shards (never the whole model in memory).
`measure` runs the load in a fresh interpreter: baseline = RSS after importing torch and
plt_deploy, peak = ru_maxrss after load_checkpoint returned (every weight page was read: the load
checks each tensor for NaN/Inf) and one forward pass over 8 tokens.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SHAPE_1B = dict(vocab_size=32000, d_model=2048, n_layers=20, n_heads=16, n_kv_heads=4, head_dim=128,
                mlp_hidden=5632, max_seq_len=4096, loops=2, window=64, tie_embeddings=False)


def make(folder: Path, layers: int, shards: int = 4, seed: int = 0) -> dict:
    """A random bf16 LoopCoder in the published layout, written shard by shard."""
    import torch
    from safetensors.torch import save_file

    from .. import hf
    from ..checkpoint import weight_layout
    from ..config import PLTConfig

    cfg = PLTConfig(**{**SHAPE_1B, "n_layers": layers}, mode="loopcoder", dtype="bfloat16",
                    extra={"hf": {"bos_token_id": 1, "eos_token_id": [2]}})
    folder.mkdir(parents=True, exist_ok=True)
    layout = weight_layout(cfg)
    g = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {}
        for ours, shape, _ in layout[s::shards]:
            theirs = hf.hf_name(ours)[0]
            t = torch.randn(shape, generator=g).mul_(0.02).to(torch.bfloat16) if len(shape) == 2 else \
                torch.ones(shape, dtype=torch.bfloat16)
            part[theirs] = t
            weight_map[theirs] = name
            total += t.numel() * 2
        save_file(part, str(folder / name), metadata={"format": "pt"})
        del part
    (folder / hf.INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (folder / hf.CONFIG_FILE).write_text(json.dumps(hf.config_to_hf(cfg), indent=2))
    return {"folder": str(folder), "parameters": cfg.parameter_count(), "bytes": total}


_CHILD = """
import json, resource, sys, torch
import plt_deploy.checkpoint as ck, plt_deploy.hf, plt_deploy.model
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
base = rss()
model = ck.load_checkpoint(sys.argv[1])
dtypes = sorted({str(p.dtype) for p in model.parameters()})
with torch.no_grad():
    model(torch.arange(8)[None])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"baseline_rss": base, "peak_rss": peak, "param_dtypes": dtypes}))
"""


def measure(folder: Path) -> dict:
    from .. import hf

    nbytes = sum(p.stat().st_size for p in hf.weight_files(folder))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(folder)], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    got.update(checkpoint_bytes=nbytes, ratio_over_baseline=(got["peak_rss"] - got["baseline_rss"]) / nbytes)
    return got


_EXPORT_CHILD = """
import json, resource, sys
from plt_deploy.export.exporter import export_model
from plt_deploy.export.quantize import WeightSpec
folder, out, fmt, plain = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "plain"
export_model(folder, out, dtype="float32", max_batch=1, max_seq=256, weights=WeightSpec(fmt, 32), progress=False,
             validate=False, streamed=not plain, force=True)
print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def quantize(folder: Path, out: Path, fmt: str, plain: bool) -> dict:
    """Peak RSS (ru_maxrss of a fresh interpreter) of the fp32-activation int8/int4 export of `folder`."""
    import time

    from .. import hf

    nbytes = sum(p.stat().st_size for p in hf.weight_files(folder))
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _EXPORT_CHILD, str(folder), str(out), fmt,
                          "plain" if plain else "streamed"], capture_output=True, text=True)
    if run.returncode:
        return {"path": "plain" if plain else "streamed", "failed": (run.stderr.strip().splitlines() or ["?"])[-1],
                "returncode": run.returncode, "checkpoint_bytes": nbytes}
    got = json.loads(run.stdout.strip().splitlines()[-1])
    artifact = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return {"path": "plain" if plain else "streamed", "weights": fmt, "checkpoint_bytes": nbytes,
            "artifact_bytes": artifact, "peak_rss": got["peak_rss"], "peak_over_checkpoint": got["peak_rss"] / nbytes,
            "peak_over_artifact": got["peak_rss"] / artifact, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m plt_deploy.bench.load_memory", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("make", "measure", "quantize"))
    p.add_argument("folder", type=Path)
    p.add_argument("--layers", type=int, default=SHAPE_1B["n_layers"])
    p.add_argument("--out", type=Path, help="quantize: the export folder to write (replaced)")
    p.add_argument("--weights", choices=("int8", "int4"), default="int4")
    p.add_argument("--plain", action="store_true", help="quantize: the plain path (load fp32, trace, quantize)")
    args = p.parse_args(argv)
    if args.what == "quantize" and args.out is None:
        p.error("quantize needs --out")
    result = make(args.folder, args.layers) if args.what == "make" else measure(args.folder) \
        if args.what == "measure" else quantize(args.folder, args.out, args.weights, args.plain)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
