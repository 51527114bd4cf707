"""Serve a trained checkpoint and check its answers through the HTTP API (docs/serving.md).

    python scripts/serve-trained-check.py CHECKPOINT [--task addition] [--n 64] [--slots 4] [--concurrency 8]

Sends N held-out problems of the task the checkpoint was trained on (`plt-deploy train`) as
concurrent /v1/completions requests to a server on a free loopback port (continuous batching over
--slots slots, stopping at the model's own <eos>), and compares each answer with the right one and
with `generate` run on that prompt alone.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import sys
import threading
import time
from collections import Counter


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--task", default="addition")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    import httpx
    import uvicorn

    from plt_deploy.generate import SamplingParams, generate
    from plt_deploy.serve import load_engine
    from plt_deploy.serve.app import ServerSettings, build_app
    from plt_deploy.serve.metrics import Metrics
    from plt_deploy.tasks import TASKS

    task = TASKS[args.task]
    rng = random.Random(args.seed)
    problems = [task.sample(rng, held_out=True) for _ in range(args.n)]
    engine = load_engine(args.checkpoint, "torch", slots=args.slots, max_context=64, model_name="trained")
    engine.metrics = Metrics("trained")
    tok = engine.tokenizer
    params = SamplingParams(max_new_tokens=task.max_len, stop_tokens=(tok.eos_id,))
    alone = [tok.decode(generate(engine.backend, [tok.encode(p)], params)[0]) for p, _ in problems]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(engine, ServerSettings()), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)

    async def ask_all():
        sem = asyncio.Semaphore(args.concurrency)
        async with httpx.AsyncClient(timeout=60) as client:
            async def ask(prompt):
                async with sem:
                    r = await client.post(url + "/v1/completions",
                                          json={"prompt": prompt, "max_tokens": task.max_len, "temperature": 0})
                    r.raise_for_status()
                    return r.json()["choices"][0]
            return await asyncio.gather(*(ask(p) for p, _ in problems))

    t0 = time.perf_counter()
    served = asyncio.run(ask_all())
    wall = time.perf_counter() - t0
    server.should_exit = True
    thread.join(30)
    right = sum(c["text"] == ans for c, (_, ans) in zip(served, problems))
    right_alone = sum(a == ans for a, (_, ans) in zip(alone, problems))
    same = sum(c["text"] == a for c, a in zip(served, alone))
    reasons = Counter(c["finish_reason"] for c in served)
    print(f"{args.n} held-out {args.task} problems, {args.slots} slots, {args.concurrency} concurrent clients, "
          f"{wall:.2f} s")
    print(f"served exact match {right}/{args.n}; generate alone {right_alone}/{args.n}; "
          f"served == alone {same}/{args.n}; finish reasons {dict(reasons)}; engine steps {engine.steps}")
    return 0 if same == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
