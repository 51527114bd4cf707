"""Serving throughput against raw decode, interleaved in one run on one export (docs/serving.md).

    python scripts/serve-bench.py [--work runs/work-serve] [--rounds 10] [--new 128] [--threads N]

1. `plt-deploy bench --preset small --backend onnxruntime --batch 1,8 --prompt-len 32
   --new-tokens NEW --variants plt-2,vanilla --workdir WORK` (its table, and the plt-2 export);
2. two `plt-deploy serve` processes on that export, 8 slots and 1 slot (loopback, free ports);
3. ROUNDS short rounds, each: bench's own runner (`BackendRunner`; tokens/s = batch / median
   step, the number `bench` prints) at batch 8; the load test against the 8-slot server (8
   streaming clients, 8 requests, so all 8 slots are busy); the load test against the 1-slot
   server (2 clients, 2 requests: its slot busy throughout); the runner at batch 8 again. The
   8-slot requests have the runner's shape (32 prompt tokens, NEW new tokens), or with --mixed
   prompts of 8..31 characters and outputs of 3/4..1 x NEW (shorter real contexts than the
   runner's, in caches of the same size). One thing runs at a time; the machine is shared and its load
   drifts within seconds, so each round compares neighbours: server(8) against the mean of the
   runner before and after it, server(8) against server(1) right after it;
4. the per-round ratios, their medians, and the 8-slot server's RSS after every round.

The servers run ONNX Runtime without thread spinning (serve's default, --no-ort-spinning); bench
runs it with ONNX Runtime's default (spinning). Each round also times the runner without
spinning, so the serving overhead at equal runtime settings is printed too.

`--threads N` gives ONNX Runtime N intra-op threads everywhere (bench, both runners, both
servers); without it each uses ONNX Runtime's default (one per core).

Caches have the same length everywhere: runner sessions hold prompt 32 + NEW tokens, the
servers' --max-context is 32 + NEW (prompts of up to 31 characters + <bos>, outputs up to NEW).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-c", "from plt_deploy.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export: Path, slots: int, log: Path, max_context: int, threads: list[str]):
    import httpx

    port = free_port()
    proc = subprocess.Popen([*CLI, "serve", "--model", str(export), "--backend", "onnxruntime", "--slots",
                             str(slots), "--max-context", str(max_context), "--port", str(port), *threads],
                            stderr=log.open("w"), stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server ({slots} slots) exited: {log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server ({slots} slots) not healthy after 300 s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="runs/work-serve")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--new", type=int, default=128, help="Runner decode steps; the longest server output.")
    ap.add_argument("--mixed", action="store_true", help="Mixed prompt and output lengths for the 8-slot load.")
    ap.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads for bench, runners and servers.")
    ap.add_argument("--skip-bench-cli", action="store_true", help="Reuse the export; do not rerun the bench table.")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    threads = ["--threads", str(args.threads)] if args.threads else []
    if not args.skip_bench_cli:
        subprocess.run([*CLI, "bench", "--preset", "small", "--backend", "onnxruntime", "--batch", "1,8",
                        "--prompt-len", "32", "--new-tokens", str(args.new), "--variants", "plt-2,vanilla", "--no-peer",
                        "--no-contexts", "--repeats", "2", "--no-progress", "--workdir", str(work), *threads,
                        "--json", str(work / "bench.json")], check=True)
    export = work / "onnx-plt-2"

    from plt_deploy.backends import load_backend
    from plt_deploy.bench.runner import BackendRunner, prompt_tokens, summary
    from plt_deploy.serve.loadtest import LoadSpec, run_load

    runner = BackendRunner(load_backend("onnxruntime", str(export), threads=args.threads))  # as bench runs it
    runner_quiet = BackendRunner(load_backend("onnxruntime", str(export), threads=args.threads,
                                              spinning=False))  # as serve runs it
    vocab = runner.backend.config.vocab_size
    new = args.new
    if args.mixed:  # prompts of 8..31 characters, outputs of 3/4..1 x NEW: shorter real contexts
        load8 = dict(requests=8, concurrency=8, prompt_lens=(8, 16, 31), output_lens=(new * 3 // 4, new * 7 // 8, new))
    else:  # the runner's shape: 31 characters + <bos> = 32 prompt tokens, NEW new tokens
        load8 = dict(requests=8, concurrency=8, prompt_lens=(31,), output_lens=(new,))
    load1 = dict(requests=2, concurrency=2, prompt_lens=(16,), output_lens=(new,))

    def bench_tokens_per_s(batch: int, r=runner) -> float:
        sample = r.run(prompt_tokens(batch, 32, vocab), new)
        return batch * 1e3 / summary(sample.decode_ms)["median"]

    servers = {n: start_server(export, n, work / f"serve-{n}.log", 32 + new, threads) for n in (8, 1)}
    rounds = []
    try:
        runner.run(prompt_tokens(8, 32, vocab), 8)  # warm-up
        runner_quiet.run(prompt_tokens(8, 32, vocab), 8)
        for n, (_, url) in servers.items():  # warm-up loads
            run_load(LoadSpec(url=url, requests=8, concurrency=8, prompt_lens=(8, 31), output_lens=(16,)))
        rss0 = run_load(LoadSpec(url=servers[8][1], requests=1, concurrency=1, output_lens=(1,)))["rss_mib_after"]
        for r in range(args.rounds):
            before, q_before = bench_tokens_per_s(8), bench_tokens_per_s(8, runner_quiet)
            l8 = run_load(LoadSpec(url=servers[8][1], seed=r, **load8))
            l1 = run_load(LoadSpec(url=servers[1][1], seed=r, **load1))
            q_after, after = bench_tokens_per_s(8, runner_quiet), bench_tokens_per_s(8)
            x = {"bench_b8_before": before, "bench_b8_after": after, "load_8": l8, "load_1": l1,
                 "quiet_b8_before": q_before, "quiet_b8_after": q_after,
                 "ratio": l8["busy_tokens_per_s"] / ((before + after) / 2),
                 "ratio_quiet": l8["busy_tokens_per_s"] / ((q_before + q_after) / 2),
                 "gain": l8["busy_tokens_per_s"] / l1["tokens_per_s"]}
            rounds.append(x)
            print(f"round {r + 1}: runner b8 {before:.1f} / {after:.1f} tok/s (no spinning {q_before:.1f} / "
                  f"{q_after:.1f}); server 8 slots "
                  f"{l8['busy_tokens_per_s']:.1f} (TBT p50 {l8['tbt_ms_p50']:.1f} ms, errors {l8['errors']}); "
                  f"server 1 slot {l1['tokens_per_s']:.1f}; ratio {x['ratio']:.3f} (vs no spinning "
                  f"{x['ratio_quiet']:.3f}), 8 vs 1 slot {x['gain']:.2f}x",
                  flush=True)
        b1 = bench_tokens_per_s(1)
        b8 = bench_tokens_per_s(8)
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        codes = {n: proc.wait(60) for n, (proc, _) in servers.items()}
    med = statistics.median
    ratio, gain = [x["ratio"] for x in rounds], [x["gain"] for x in rounds]
    ratio_q = [x["ratio_quiet"] for x in rounds]
    errors = sum(x["load_8"]["errors"] + x["load_1"]["errors"] for x in rounds)
    rss = [rss0] + [x["load_8"]["rss_mib_after"] for x in rounds]
    print(f"\nmedian over {len(rounds)} rounds: server(8 slots, all busy) / runner(batch 8) = {med(ratio):.3f} "
          f"(min {min(ratio):.3f}, max {max(ratio):.3f}; target >= 0.9); against the runner with the server's "
          f"ONNX Runtime setting (no spinning): {med(ratio_q):.3f} (min {min(ratio_q):.3f}, max {max(ratio_q):.3f})")
    print(f"median server 8 slots / server 1 slot = {med(gain):.2f}x (min {min(gain):.2f}, max {max(gain):.2f}; "
          f"target >= 2); raw runner batch 8 / batch 1 at the end: {b8:.1f} / {b1:.1f} = {b8 / b1:.2f}x")
    print(f"errors {errors}; 8-slot server RSS MiB after warm-up, then after each round of 8 requests: "
          + ", ".join(f"{v:.1f}" for v in rss))
    print(f"server exit codes after SIGTERM: {codes}")
    (work / "serve-bench.json").write_text(json.dumps({"threads": args.threads, "rounds": rounds, "rss_mib": rss,
                                                       "exit_codes": codes},
                                                      indent=2))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
