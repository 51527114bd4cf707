"""Chunked prefill and the prefix cache in the serve engine, measured side by side (docs/serving.md).

    python scripts/prefill-bench.py [--work runs/work-prefill] [--rounds 3] [--threads 2]
                                    [--budgets 64,128,256] [--prompt 2000] [--system 1000]

One random `small` plt-2 model (init + export for ONNX Runtime, max batch 8, made once in WORK),
then the engine in this process (no HTTP: what is measured is the scheduler), ONNX Runtime CPU:

A. chunked prefill. 8 slots; 7 streams decode (prompt 16, long outputs); after a calm stretch a
   PROMPT-token request arrives. Per configuration: the 7 streams' p99 time between tokens while
   that prompt is prefilled (its arrival to its first token) against their p99 in the calm
   stretch before it, and the arrival's time to first token. "whole" = the prompt prefilled in
   one step (a budget larger than the prompt: what the engine did before chunking); then each
   --budgets value (tokens per step, decodes included). Configurations alternate within a round.
B. prefix cache. One conversation of 10 turns over a SYSTEM-token system prompt (each turn adds
   24 user tokens; the 16 generated tokens stay in the history), 1 slot, prefix cache off and on
   in alternation per round: time to first token of turns 2..10, and their ratio on/off.

Prints a table per part and writes WORK/prefill-bench.json. Tokens are random ids (timing only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import torch


def make_export(work: Path) -> Path:
    from plt_deploy.checkpoint import init_checkpoint
    from plt_deploy.export.exporter import export_model

    ex = work / "small-plt2"
    if not (ex / "manifest.json").is_file():
        ck = init_checkpoint("small", work / "small-plt2-ck", mode="plt", loops=2, seed=0, force=True)
        export_model(ck, ex, max_batch=8, progress=False, validate=False, force=True)
    return ex


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))] if xs else float("nan")


def stamps_of(handle, out: list[float]) -> None:
    for ev in handle:
        if ev.token_id is not None:
            out.append(time.monotonic())


def chunked_case(backend, budget: int, prompt: int, g: torch.Generator) -> dict:
    """7 decoding streams, then one long prompt arrives; per-stream token times around it."""
    from plt_deploy.generate import SamplingParams
    from plt_deploy.serve.engine import Engine
    from plt_deploy.tokenizer import ByteTokenizer

    vocab = backend.config.vocab_size
    engine = Engine(backend, ByteTokenizer(), slots=8, max_context=prompt + 48, max_step_tokens=budget,
                    prefix_cache_mb=0).start()
    engine.wait_ready(300)
    stamps: list[list[float]] = [[] for _ in range(7)]
    threads = []
    for i in range(7):
        ids = torch.randint(3, vocab, (16,), generator=g).tolist()
        h = engine.submit(ids, SamplingParams(max_new_tokens=prompt + 30, stop_tokens=()))
        threads.append(threading.Thread(target=stamps_of, args=(h, stamps[i]), daemon=True))
        threads[-1].start()
    while min(len(s) for s in stamps) < 40:  # a calm stretch: every stream well into decoding
        time.sleep(0.01)
    calm_from = max(s[9] for s in stamps)
    t_arrive = time.monotonic()
    long = engine.submit(torch.randint(3, vocab, (prompt,), generator=g).tolist(),
                         SamplingParams(max_new_tokens=1, stop_tokens=()))
    first = next(iter(long))
    t_first = time.monotonic()
    time.sleep(0.05)
    engine.stop(cancel_running=True, timeout=60)
    gaps = lambda lo, hi: [b - a for s in stamps for a, b in zip(s, s[1:]) if lo <= a and b <= hi]  # noqa: E731
    during = [b - a for s in stamps for a, b in zip(s, s[1:]) if b > t_arrive and a < t_first]
    assert first.token_id is not None
    return {"ttft_s": t_first - t_arrive, "p99_calm_s": p99(gaps(calm_from, t_arrive)), "p99_during_s": p99(during),
            "steps": engine.steps}


def chat_case(backend, cache_mb: float, system: int, g: torch.Generator) -> list[float]:
    """10 turns of one conversation; time to first token of each."""
    from plt_deploy.generate import SamplingParams
    from plt_deploy.serve.engine import Engine
    from plt_deploy.tokenizer import ByteTokenizer

    vocab = backend.config.vocab_size
    engine = Engine(backend, ByteTokenizer(), slots=1, max_context=system + 10 * 40 + 8, max_step_tokens=4096,
                    prefix_cache_mb=cache_mb).start()
    engine.wait_ready(300)
    history = torch.randint(3, vocab, (system,), generator=g).tolist()
    ttft = []
    for _ in range(10):
        history += torch.randint(3, vocab, (24,), generator=g).tolist()
        t0 = time.monotonic()
        events = iter(engine.submit(list(history), SamplingParams(max_new_tokens=16, stop_tokens=())))
        ev = next(events)
        ttft.append(time.monotonic() - t0)
        history += [ev.token_id] + [e.token_id for e in events if e.token_id is not None]
    engine.stop(timeout=60)
    return ttft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/work-prefill")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budgets", default="64,128,256")
    ap.add_argument("--prompt", type=int, default=2000)
    ap.add_argument("--system", type=int, default=1000)
    ap.add_argument("--skip", choices=["chunked", "prefix"], action="append", default=[])
    args = ap.parse_args()
    from plt_deploy.backends.ort_backend import OrtBackend

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    backend = OrtBackend(make_export(work), threads=args.threads, spinning=False)
    g = torch.Generator().manual_seed(0)
    configs = {"whole": args.prompt + 64, **{str(b): int(b) for b in args.budgets.split(",")}}
    chunked: dict[str, list[dict]] = {k: [] for k in configs}
    chat: dict[str, list[list[float]]] = {"off": [], "on": []}
    for r in range(args.rounds):
        if "chunked" not in args.skip:
            for name, budget in (configs.items() if r % 2 == 0 else reversed(configs.items())):
                chunked[name].append(chunked_case(backend, budget, args.prompt, g))
                print(f"round {r} budget {name}: {chunked[name][-1]}", flush=True)
        if "prefix" not in args.skip:
            for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
                chat[name].append(chat_case(backend, 0 if name == "off" else 512, args.system, g))
                print(f"round {r} prefix cache {name}: ttft {[round(t, 3) for t in chat[name][-1]]}", flush=True)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    result = {"threads": args.threads, "rounds": args.rounds, "prompt": args.prompt, "system": args.system}
    if "chunked" not in args.skip:
        whole_ttft = med([c["ttft_s"] for c in chunked["whole"]])
        print(f"\nA. chunked prefill: 7 streams decoding on 8 slots, a {args.prompt}-token prompt arrives "
              f"(ONNX Runtime CPU, {args.threads} threads, medians of {args.rounds} rounds)")
        print(f"{'budget':>8} {'p99 calm ms':>12} {'p99 during ms':>14} {'during/calm':>12} {'TTFT s':>8} "
              f"{'TTFT/whole':>11}")
        rows = {}
        for name, cs in chunked.items():
            calm, during = med([c["p99_calm_s"] for c in cs]), med([c["p99_during_s"] for c in cs])
            ratio = med([c["p99_during_s"] / c["p99_calm_s"] for c in cs])
            ttft = med([c["ttft_s"] for c in cs])
            rows[name] = {"p99_calm_ms": 1e3 * calm, "p99_during_ms": 1e3 * during, "p99_ratio": ratio,
                          "ttft_s": ttft, "ttft_vs_whole": ttft / whole_ttft}
            print(f"{name:>8} {1e3 * calm:12.1f} {1e3 * during:14.1f} {ratio:12.2f} {ttft:8.2f} {ttft / whole_ttft:11.2f}")
        result["chunked"] = rows
    if "prefix" not in args.skip:
        per_round = [med([on / off for on, off in zip(a[1:], b[1:])]) for a, b in zip(chat["on"], chat["off"])]
        off = med([t for run in chat["off"] for t in run[1:]])
        on = med([t for run in chat["on"] for t in run[1:]])
        print(f"\nB. prefix cache: 10-turn chat over a {args.system}-token system prompt, 1 slot")
        print(f"turns 2..10 TTFT median: off {1e3 * off:.1f} ms, on {1e3 * on:.1f} ms; on/off per round "
              f"{[round(x, 3) for x in per_round]} (median {med(per_round):.3f})")
        result["prefix"] = {"ttft_off_ms": 1e3 * off, "ttft_on_ms": 1e3 * on, "ratio_per_round": per_round,
                            "ratio": med(per_round), "turn1_off_ms": 1e3 * med([r[0] for r in chat["off"]]),
                            "turn1_on_ms": 1e3 * med([r[0] for r in chat["on"]])}
    (work / "prefill-bench.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
