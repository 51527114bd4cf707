"""Compare backends: Polygraphy's Comparator over prefill + decode steps, then greedy generations.

`compare_backends(reference, test, ...)` returns a JSON-able report with, per output and per
iteration, max absolute / relative error and pass/fail against (atol, rtol); `compare_greedy`
compares greedy generations token by token.
"""

from __future__ import annotations

import numpy as np

from ..backends.base import Backend
from ..config import MIN_EXPORT_SEQ
from ..errors import InputError
from ..generate import SamplingParams, generate
from .runners import DECODE, PREFILL, BackendRunner
from .compare import RULE, compare_run, quiet_polygraphy, summarize
from .tolerances import tolerance


PROMPT_LENGTHS = (9, 5)  # the replay's and the greedy comparison's prompts, one per batch row


def fit_workload(max_batch: int, max_seq: int, batch: int = 2, steps: int = 32, new_tokens: int = 64,
                 prompt_lengths: tuple[int, ...] = PROMPT_LENGTHS) -> tuple[int, list[int], int, int, list[str]]:
    """Batch, prompt lengths, decode steps and greedy tokens shrunk to fit an export's --max-batch and
    --max-seq (a replay session holds the longest prompt + steps + 1), with a note per change.
    The one rule for `check` and the exporter's own validation."""
    if max_seq < MIN_EXPORT_SEQ:
        raise InputError(f"the export's --max-seq {max_seq} leaves no room for a prompt and a decode step; "
                         f"re-export with --max-seq {MIN_EXPORT_SEQ} or more")
    notes = []
    if batch > max_batch:
        notes.append(f"batch {batch} -> {max_batch} (the export's --max-batch)")
        batch = max_batch
    prompts = [prompt_lengths[b % len(prompt_lengths)] for b in range(batch)]
    if max(prompts) > max_seq - 2:
        notes.append(f"prompts of {max(prompts)} tokens -> {max_seq - 2} (the export's --max-seq {max_seq})")
        prompts = [min(n, max_seq - 2) for n in prompts]
    room = max_seq - max(prompts) - 1  # decode steps after the longest prompt
    if steps > room:
        notes.append(f"decode steps {steps} -> {room} (the export's --max-seq {max_seq})")
        steps = room
    if new_tokens > room + 1:
        notes.append(f"greedy tokens {new_tokens} -> {room + 1} (the export's --max-seq {max_seq})")
        new_tokens = room + 1
    return batch, prompts, steps, new_tokens, notes


def make_feeds(vocab: int, batch: int, prompt_lengths: list[int], steps: int, seed: int = 0) -> list[dict]:
    """One prefill feed (right-padded prompts of unequal length) then `steps` decode feeds."""
    g = np.random.default_rng(seed)
    S = max(prompt_lengths)
    ids = g.integers(3, vocab, size=(batch, S), dtype=np.int64)
    for b, n in enumerate(prompt_lengths):
        ids[b, n:] = 0
    lengths = np.array(prompt_lengths, dtype=np.int64)
    feeds = [{"input_ids": ids, "lengths": lengths, "phase": np.array([PREFILL], dtype=np.int64)}]
    feeds += [{"input_ids": g.integers(3, vocab, size=(batch, 1), dtype=np.int64), "lengths": lengths,
               "phase": np.array([DECODE], dtype=np.int64)} for _ in range(steps)]
    return feeds


def compare_backends(reference: Backend, test: Backend, steps: int = 32, batch: int = 2,
                     prompt_lengths: list[int] | None = None, dtype: str | None = None, seed: int = 0) -> dict:
    """Replay one prefill + `steps` decode steps on both backends through Polygraphy; per-output errors
    judged by the one rule of `check.compare`."""
    from polygraphy.comparator import Comparator

    dtype = dtype or getattr(test, "manifest", None) and test.manifest.dtype or reference.config.dtype
    atol, rtol = tolerance(test.name, dtype)
    prompt_lengths = prompt_lengths or [max(2, 9 - 4 * b) for b in range(batch)]
    max_seq = max(prompt_lengths) + steps + 1
    feeds = make_feeds(reference.config.vocab_size, batch, prompt_lengths, steps, seed)
    runners = [BackendRunner(reference, batch, max_seq, name=f"ref:{reference.name}"),
               BackendRunner(test, batch, max_seq, name=f"test:{test.name}")]
    quiet_polygraphy()
    results = compare_run(Comparator.run(runners, data_loader=feeds), atol, rtol)
    return {"reference": reference.name, "test": test.name, "dtype": dtype, "atol": atol, "rtol": rtol,
            "rule": RULE, "batch": batch, "prompt_lengths": prompt_lengths, "decode_steps": steps,
            "summary": summarize(results), "results": results,
            "passed": bool(results) and all(r["passed"] for r in results)}


def compare_greedy(reference: Backend, test: Backend, prompts: list[list[int]], new_tokens: int = 64) -> dict:
    """Greedy generations on both backends, compared token by token."""
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
    ref = generate(reference, prompts, params)
    out = generate(test, prompts, params)
    per_prompt = []
    for r, o in zip(ref, out):
        first = next((i for i, (a, b) in enumerate(zip(r, o)) if a != b), None)
        if first is None and len(r) != len(o):
            first = min(len(r), len(o))
        per_prompt.append({"tokens": len(r), "identical": first is None, "first_mismatch": first})
    return {"reference": reference.name, "test": test.name, "new_tokens": new_tokens,
            "prompts": per_prompt, "passed": all(p["identical"] for p in per_prompt),
            "reference_tokens": ref, "test_tokens": out}

