"""A bounded load test of a running server: C concurrent streaming clients (at most one per
request), a fixed number of requests with mixed prompt and output lengths, stops by itself.

Reports requests/s, generated tokens/s (completion tokens from each stream's usage chunk over the
wall time), the tokens/s while every client is busy (tokens received between the moment all C
streams have their first chunk and the moment the first client finds no request left, over that
window; a chunk may complete several tokens when text was held back, so each one's count comes from
its usage, `stream_options.continuous_usage_stats`), time to first chunk and time between chunks
(p50/p99, client side), errors, and the server's RSS before and after
(`process_resident_memory_bytes` from /metrics). A server that cannot be reached is one PLTError
before anything is sent.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import PLTError


@dataclass
class LoadSpec:
    url: str = "http://127.0.0.1:8000"
    requests: int = 32
    concurrency: int = 8
    prompt_lens: tuple[int, ...] = (16, 64, 128)  # characters (= tokens with the byte tokenizer, + <bos>)
    output_lens: tuple[int, ...] = (32, 64, 128)  # max_tokens, generated in full (ignore_eos)
    seed: int = 0
    api_key: str | None = None
    request_timeout: float = 300.0  # seconds per request
    max_seconds: float = 1800.0  # no new request starts after this
    endpoint: str = "/v1/completions"


@dataclass
class Result:
    ok: bool
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)  # arrival time of every chunk with text
    counts: list[int] = field(default_factory=list)  # tokens each of those chunks completed
    tokens: int = 0
    error: str | None = None


def make_bodies(spec: LoadSpec) -> list[dict]:
    """The request bodies: lengths cycle through every (prompt, output) pair, shuffled by seed."""
    rng = random.Random(spec.seed)
    pairs = [(p, o) for p in spec.prompt_lens for o in spec.output_lens]
    bodies = []
    for i in range(spec.requests):
        p, o = pairs[i % len(pairs)]
        text = "".join(rng.choice("abcdefghij ") for _ in range(p))
        bodies.append({"prompt": text, "max_tokens": o, "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True, "continuous_usage_stats": True}})
    rng.shuffle(bodies)
    return bodies


async def _one(client, url: str, body: dict, headers: dict) -> Result:
    t0 = time.perf_counter()
    last, res = None, Result(ok=False)
    try:
        async with client.stream("POST", url, json=body, headers=headers) as r:
            if r.status_code != 200:
                return Result(ok=False, error=f"HTTP {r.status_code}: {error_message(await r.aread())}")
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    res.ok = res.error is None
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    res.error = chunk["error"]["message"]
                    continue
                done_before = res.tokens
                if chunk.get("usage"):
                    res.tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices"):
                    now = time.perf_counter()
                    res.stamps.append(now)
                    res.counts.append(res.tokens - done_before if chunk.get("usage") else 1)
                    if res.ttft is None:
                        res.ttft = now - t0
                    else:
                        res.gaps.append(now - last)
                    last = now
    except Exception as exc:  # noqa: BLE001  (any transport failure counts as an error)
        res.ok, res.error = False, f"{type(exc).__name__}: {exc}"
    if not res.ok and res.error is None:
        res.error = "stream ended without [DONE]"
    return res


def error_message(body: bytes) -> str:
    """The message of an OpenAI error body ({"error": {"message": ...}}), else the body as text."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace").strip() or "(empty body)"


async def _check_reachable(client, base: str) -> None:
    """PLTError in one line if nothing answers at `base` (any HTTP answer will do)."""
    import httpx

    try:
        await client.get(base + "/health", timeout=10)
    except httpx.TransportError as exc:
        raise PLTError(f"cannot connect to {base} ({type(exc).__name__}: {exc}); is `plt-deploy serve` "
                       "running there? (--url)") from None


async def _server_rss(client, base: str) -> float | None:
    try:
        text = (await client.get(base + "/metrics")).text
    except Exception:  # noqa: BLE001
        return None
    vals = [float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith("process_resident_memory_bytes")]
    return vals[0] / 2**20 if vals else None


def _pct(a: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(a), q)) if a else None


async def run_load_async(spec: LoadSpec) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    bodies = make_bodies(spec)
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    results: list[Result] = []
    clients = min(spec.concurrency, spec.requests)
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=spec.request_timeout, limits=limits) as client:
        await _check_reachable(client, spec.url)
        rss_before = await _server_rss(client, spec.url)
        t_start = time.perf_counter()
        deadline = t_start + spec.max_seconds

        idle: list[float] = []  # when each client found the queue empty

        async def worker():
            while not queue.empty() and time.perf_counter() < deadline:
                results.append(await _one(client, spec.url + spec.endpoint, queue.get_nowait(), headers))
            idle.append(time.perf_counter())

        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t_start
        rss_after = await _server_rss(client, spec.url)
    ok = [r for r in results if r.ok]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    gaps = [g for r in ok for g in r.gaps]
    tokens = sum(r.tokens for r in ok)
    firsts = sorted(r.stamps[0] for r in results if r.stamps)
    busy = None
    if len(firsts) >= clients and idle:
        t0, t1 = firsts[clients - 1], min(idle)
        if t1 > t0:
            busy = sum(n for r in results for t, n in zip(r.stamps, r.counts) if t0 <= t < t1) / (t1 - t0)
    ms = lambda v: None if v is None else 1e3 * v  # noqa: E731
    return {
        "spec": asdict(spec) | {"api_key": None}, "clients": clients,
        "requests_sent": len(results), "requests_ok": len(ok), "errors": len(results) - len(ok),
        "not_sent": len(bodies) - len(results), "error_examples": [r.error for r in results if not r.ok][:5],
        "wall_s": wall, "requests_per_s": len(ok) / wall if wall else None,
        "generated_tokens": tokens, "tokens_per_s": tokens / wall if wall else None,
        "busy_tokens_per_s": busy,
        "ttft_ms_p50": ms(_pct(ttft, 50)), "ttft_ms_p99": ms(_pct(ttft, 99)),
        "tbt_ms_p50": ms(_pct(gaps, 50)), "tbt_ms_p99": ms(_pct(gaps, 99)),
        "rss_mib_before": rss_before, "rss_mib_after": rss_after,
    }


def run_load(spec: LoadSpec) -> dict:
    return asyncio.run(run_load_async(spec))


def format_report(r: dict) -> str:
    f = lambda v, d=1: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    s = r["spec"]
    return "\n".join([
        f"load test: {r['requests_ok']}/{r['requests_sent']} ok, {r['errors']} errors, {r['not_sent']} not sent "
        f"({r['clients']} clients, prompts {s['prompt_lens']} chars, outputs {s['output_lens']} tokens)",
        f"  wall {f(r['wall_s'], 2)} s   requests/s {f(r['requests_per_s'], 2)}   "
        f"generated tokens/s {f(r['tokens_per_s'])}   ({r['generated_tokens']} tokens)   "
        f"while all {r['clients']} clients busy {f(r['busy_tokens_per_s'])}",
        f"  time to first chunk p50 {f(r['ttft_ms_p50'])} ms  p99 {f(r['ttft_ms_p99'])} ms",
        f"  time between chunks p50 {f(r['tbt_ms_p50'])} ms  p99 {f(r['tbt_ms_p99'])} ms",
        f"  server RSS {f(r['rss_mib_before'])} MiB before, {f(r['rss_mib_after'])} MiB after",
        *(f"  error: {e}" for e in r["error_examples"]),
    ])
