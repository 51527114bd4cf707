"""Stream speed of `plt-deploy serve` before and after a signal, with and without a busy core.

Starts `plt-deploy serve --model CKPT --slots 4`, sends 4 streaming completions (200 tokens each,
ignore_eos), optionally signals the server DELAY s later, and prints the milliseconds between
chunks after that moment (median over the streams). `--hog` keeps one core busy with another
process meanwhile (a shared machine); `--openmp-default` leaves libgomp's default wait policy
(serve sets OMP_WAIT_POLICY=PASSIVE unless the variable is set; an empty value is ignored by
libgomp). Rounds alternate the variants, so they see the same machine.

    python scripts/serve-signal-speed.py --model runs/add --rounds 3 --hog
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(model: str, sig: int | None, delay: float, openmp_default: bool) -> float:
    """Median ms between chunks after `delay` s (signal sent then if sig) over 4 streams."""
    port, env = free_port(), dict(os.environ)
    if openmp_default:
        env["OMP_WAIT_POLICY"] = ""
    cmd = [sys.executable, "-c", "from plt_deploy.cli import main; main()", "serve", "--model", model,
           "--slots", "4", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        stamps: dict[int, list[float]] = {}

        def stream(i):
            body = {"prompt": "abc", "max_tokens": 200, "temperature": 2, "seed": i, "stream": True,
                    "ignore_eos": True}
            got = stamps.setdefault(i, [])
            try:
                with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            got.append(time.monotonic())
            except httpx.TransportError:  # the signal came before the server had read this request
                pass
        threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(delay)
        t_mark = time.monotonic()
        if sig:
            proc.send_signal(sig)
        for t in threads:
            t.join(180)
        gaps = []
        for got in stamps.values():
            after = [t for t in got if t > t_mark]
            if len(after) > 1:
                gaps.append(1e3 * (after[-1] - after[0]) / (len(after) - 1))
        return statistics.median(gaps) if gaps else float("nan")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--delay", type=float, default=0.15)
    ap.add_argument("--hog", action="store_true", help="keep one core busy meanwhile")
    a = ap.parse_args()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if a.hog else None
    variants = [("no signal", None, True), ("SIGTERM", signal.SIGTERM, True),
                ("no signal, passive OpenMP", None, False), ("SIGTERM, passive OpenMP", signal.SIGTERM, False)]
    results = {name: [] for name, _, _ in variants}
    try:
        for _ in range(a.rounds):
            for name, sig, default in variants:
                results[name].append(one_run(a.model, sig, a.delay, default))
    finally:
        if hog:
            hog.kill()
    for name, vals in results.items():
        print(f"{name:28s} ms/chunk after {a.delay} s: " + " ".join(f"{v:.1f}" for v in vals))


if __name__ == "__main__":
    main()
