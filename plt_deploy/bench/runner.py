"""Timing: warm-up, then interleaved repetitions so that machine drift hits every variant alike.

A runner has `run(tokens, new_tokens) -> Sample`: one prefill of `tokens` [B, S] followed by
`new_tokens` decode steps, each timed on its own. Our backends and the Hugging Face peer both
implement it, so `interleave` mixes them in one loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch


@dataclass
class Sample:
    prefill_ms: float
    decode_ms: list[float]  # one entry per decode step
    kv_bytes: int  # KV-cache bytes the session holds (allocated buffers)
    max_seq: int  # tokens the session's caches were sized for


class Runner(Protocol):
    def run(self, tokens: torch.Tensor, new_tokens: int) -> Sample: ...


class BackendRunner:
    """Runs a plt_deploy Backend: a fresh session per run, greedy next token after every step."""

    def __init__(self, backend):
        self.backend = backend

    def run(self, tokens: torch.Tensor, new_tokens: int) -> Sample:
        B, S = tokens.shape
        session = self.backend.start(B, S + new_tokens)
        lengths = torch.full((B,), S, dtype=torch.int64)
        t0 = time.perf_counter()
        logits = session.prefill(tokens, lengths)
        prefill_ms = 1e3 * (time.perf_counter() - t0)
        steps = []
        for _ in range(new_tokens):
            nxt = logits.argmax(-1)
            t0 = time.perf_counter()
            logits = session.decode(nxt)
            steps.append(1e3 * (time.perf_counter() - t0))
        return Sample(prefill_ms, steps, int(session.kv_bytes()), int(session.max_seq))


@dataclass
class Collected:
    prefill_ms: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    kv_bytes: int = 0
    max_seq: int = 0


def interleave(jobs: dict[str, Callable[[int], Sample]], new_tokens: int, repeats: int, warmup_tokens: int,
               tick: Callable[[str], None] | None = None) -> dict[str, Collected]:
    """Warm every job up, then `repeats` rounds; each round runs every job once (prefill plus
    `new_tokens` decode steps), in an order rotated by one each round. jobs: name -> run(n_steps)."""
    names = list(jobs)
    if not names:
        return {}
    for name in names:  # warm-up: first-run allocations, thread pools, graph optimisation
        jobs[name](max(1, warmup_tokens))
        if tick:
            tick(f"warm-up {name}")
    out = {name: Collected() for name in names}
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            sample = jobs[name](new_tokens)
            got = out[name]
            got.prefill_ms.append(sample.prefill_ms)
            got.decode_ms.extend(sample.decode_ms)
            got.kv_bytes, got.max_seq = sample.kv_bytes, sample.max_seq
            if tick:
                tick(f"round {rep + 1}/{repeats} {name}")
    return out


def summary(ms: list[float]) -> dict:
    """median, p90, mean and count of a list of milliseconds (None when empty)."""
    if not ms:
        return {"median": None, "p90": None, "mean": None, "n": 0}
    a = np.asarray(ms, dtype=np.float64)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean()),
            "n": int(a.size)}


def prompt_tokens(batch: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Random prompt [batch, length] (the same for every variant of a run)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=g, dtype=torch.int64)
