#!/usr/bin/env python3
"""Two exports' decode steps, interleaved in one process: A against B at each context length.

    python3 scripts/decode-ab.py EXPORT_A EXPORT_B [--contexts 128,1920] [--steps 150] [--threads 1]

Both exports must be of one model (same weights, e.g. the same checkpoint exported by two
checkouts); each context prefills the same random prompt into both, then alternates their decode
steps (A B, B A, ...) and checks both greedy streams stay equal. Prints the median step ms per
export and context and the long/short ratio: a change to a graph measured on a noisy machine with
both sides sharing its noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from plt_deploy.backends.ort_backend import OrtBackend

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--contexts", default="128,1920")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    backends = {"A": OrtBackend(args.a, threads=args.threads), "B": OrtBackend(args.b, threads=args.threads)}
    contexts = [int(c) for c in args.contexts.split(",")]
    ms = {}
    for ctx in contexts:
        prompt = torch.randint(3, min(be.config.vocab_size for be in backends.values()), (1, ctx),
                               generator=torch.Generator().manual_seed(ctx))
        sessions, tokens, times = {}, {}, {k: [] for k in backends}
        for k, be in backends.items():
            sessions[k] = be.start(1, min(ctx + args.steps + 1, be.max_seq))
            sessions[k].prefill(prompt, torch.tensor([ctx]))
            tokens[k] = torch.tensor([5])
        for i in range(min(args.steps, min(be.max_seq for be in backends.values()) - ctx - 1)):
            for k in ("A", "B") if i % 2 else ("B", "A"):
                t0 = time.perf_counter()
                logits = sessions[k].decode(tokens[k])
                times[k].append((time.perf_counter() - t0) * 1e3)
                tokens[k] = logits.argmax(-1)
            if not torch.equal(tokens["A"], tokens["B"]):
                sys.exit(f"context {ctx}, step {i}: the two exports' greedy tokens differ (not one model?)")
        for k in backends:
            ms[k, ctx] = statistics.median(times[k])
    print("| export | " + " | ".join(f"decode ms at ctx {c}" for c in contexts) + f" | {contexts[-1]} / {contexts[0]} |")
    print("|---|" + "---:|" * (len(contexts) + 1))
    for k, path in (("A", args.a), ("B", args.b)):
        cells = " | ".join(f"{ms[k, c]:.2f}" for c in contexts)
        print(f"| {k}: {path} | {cells} | {ms[k, contexts[-1]] / ms[k, contexts[0]]:.3f} |")
    print("B / A: " + ", ".join(f"ctx {c} {ms['B', c] / ms['A', c]:.3f}" for c in contexts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
