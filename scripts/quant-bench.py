"""int8 / int4 weight-only exports against fp32, side by side in one run (docs/bench.md).

    python scripts/quant-bench.py [--preset small] [--batch 1,8] [--threads 1] [--block-size 32[,128]]
        [--trained runs/demo] [--work runs/quant-bench] [--json runs/quant-bench.json]

Speed: vanilla, plt-2 and looped-2 of one random preset (same weights), each exported in fp32 and
quantized to int8 and int4 from that export; ONNX Runtime CPU decode ms per step, every export
timed in interleaved rounds per batch size (bench's runner). Accuracy: top-1 agreement, logit RMS
error and greedy agreement of each int export against the float torch model (random weights), and,
with --trained CHECKPOINT (e.g. scripts/demo.sh's runs/demo), held-out exact match of the trained
model's fp32 / int8 / int4 exports. See plt_deploy/bench/quant.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plt_deploy.bench.quant import run  # noqa: E402


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=ints, default=(1, 8))
    p.add_argument("--variants", default="vanilla,plt-2,looped-2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--block-size", type=ints, default=(32,),
                   help="int8/int4 block size; several (32,128) quantize and time one copy per size, side by side")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--positions", type=int, default=2000)
    p.add_argument("--trained", help="A trained checkpoint (plt-deploy train) for the exact-match comparison.")
    p.add_argument("--trained-block-size", type=int, default=16, help="tiny's mlp_hidden 176 needs 16")
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--parts", default="speed,random,trained", help="any of speed, random, trained")
    p.add_argument("--work", default="runs/quant-bench")
    p.add_argument("--json", default="runs/quant-bench.json")
    a = p.parse_args()
    r = run(a.preset, tuple(a.variants.split(",")), block_size=a.block_size[0] if len(a.block_size) == 1 else a.block_size,
            batches=a.batch,
            prompt_len=a.prompt_len, new_tokens=a.new_tokens, repeats=a.repeats, threads=a.threads,
            positions=a.positions, trained=a.trained, trained_block=a.trained_block_size, examples=a.examples,
            workdir=a.work, tick=lambda s: print(s, file=sys.stderr, flush=True),
            parts=tuple(a.parts.split(",")))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(r, indent=2) + "\n")
    print(f"{a.preset}, ONNX Runtime CPU, {a.threads} thread(s), block {','.join(map(str, a.block_size))}, prompt {a.prompt_len}, "
          f"{a.new_tokens} steps x {a.repeats} rounds; load average {r['load_before'][0]:.1f} before, "
          f"{r['load_after'][0]:.1f} after ({r['cpus']} CPUs)")
    if "speed" in r:
        print_speed(r)
    if "accuracy_random" in r:
        print_random(r)
    if "accuracy_trained" in r:
        t = r["accuracy_trained"]
        print(f"\nheld-out exact match, {t['task']}, {t['examples']} examples ({t['checkpoint']}, block {t['block_size']}):")
        for k, v in t["exact_match"].items():
            print(f"  {k}: {v:.4f}")
        print(f"  bound {t['bound']}: {'met' if t['passed'] else 'NOT met'}")
    print(f"\nwrote {a.json}")


def print_speed(r: dict) -> None:
    print("\n| variant | weights | batch | decode ms/step (median) | tokens/s | decode.onnx MB |")
    print("|---|---|---|---|---|---|")
    for row in r["speed"]:
        mb = r["sizes_bytes"][f"{row['variant']}/{row['weights']}"] / 1e6
        print(f"| {row['variant']} | {row['weights']} | {row['batch']} | {row['decode_ms_median']:.2f} | "
              f"{row['tokens_per_s']:.1f} | {mb:.1f} |")
    print("\n| ratio | batch | value |\n|---|---|---|")
    for x in r["ratios"]:
        print(f"| {x['ratio']} | {x['batch']} | {x['value']:.3f} |")


def print_random(r: dict) -> None:
    print("\n| variant | weights | positions | top-1 agreement | bound | logit RMS error (relative) | greedy agreement "
          "| vs torch with the rounded weights: top-1, relative RMS |")
    print("|---|---|---|---|---|---|---|---|")
    for x in r["accuracy_random"]:
        print(f"| {x['variant']} | {x['weights']} | {x['positions']} | {x['top1_agreement']:.4f} | {x['bound']} | "
              f"{x['logit_rms_error']:.3g} ({x['logit_rms_error_relative']:.2%}) | "
              f"{x['greedy_agreement_lengths']} of {x['greedy_new_tokens']} | "
              f"{x['vs_rounded_torch']['top1_agreement']:.4f} over {x['vs_rounded_torch']['positions']}, "
              f"{x['vs_rounded_torch']['logit_rms_error_relative']:.2%} |")


if __name__ == "__main__":
    main()
