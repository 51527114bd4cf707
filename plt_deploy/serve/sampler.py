"""Batched sampling: logits [k, V] of k requests -> their next tokens [k], where the logits are.

One pass for every row: greedy rows (temperature 0) take the argmax; the others are shifted,
divided by their temperature, cut by their top-k and top-p, and drawn from. Only the [k] ids
cross to the host. `generate.sample` (one SamplingParams for a [B, V] batch) is the plain
reference: a row here gives the token `sample(logits[i:i+1], params[i], generators[i])` gives,
seeded draws included (tests/test_sampler.py checks both).

Seeded rows draw with their request's own torch.Generator, one multinomial per row, so a
request's tokens do not depend on who shares its batch; a generator lives on the CPU, so a
seeded row on another device is drawn from its CPU copy (one row, [V]).
"""

from __future__ import annotations

import torch

from ..generate import SamplingParams


def sample_rows(logits: torch.Tensor, params: list[SamplingParams],
                generators: list[torch.Generator | None]) -> torch.Tensor:
    """logits [k, V] (fp32, finite) -> next tokens [k] int64 on logits' device."""
    k, V = logits.shape
    out = logits.argmax(dim=-1)  # [k]; the greedy rows' answer, overwritten for the others
    drawn = [i for i, p in enumerate(params) if not p.greedy_for(logits.dtype)]
    if not drawn:
        return out
    dev = logits.device
    rows = torch.tensor(drawn, device=dev)
    x = logits.index_select(0, rows)  # [m, V]
    ps = [params[i] for i in drawn]
    temp = torch.tensor([p.temperature for p in ps], dtype=x.dtype, device=dev)[:, None]  # [m, 1]
    x = (x - x.max(dim=-1, keepdim=True).values) / temp  # as sample(): the best token gets 0
    top_k = [min(p.top_k, V) for p in ps]
    if any(top_k):
        kmax = max(top_k)
        vals = torch.topk(x, kmax, dim=-1).values  # [m, kmax], descending
        at = torch.tensor([max(t, 1) - 1 for t in top_k], device=dev)[:, None]  # [m, 1]
        kth = vals.gather(-1, at)  # [m, 1]
        off = torch.tensor([t == 0 for t in top_k], device=dev)[:, None]  # [m, 1]: rows without top-k
        x = x.masked_fill((x < kth) & ~off, float("-inf"))
    top_p = [p.top_p for p in ps]
    if any(t < 1.0 for t in top_p):
        sorted_x, order = x.sort(dim=-1, descending=True)  # [m, V]
        probs_sorted = sorted_x.softmax(-1)
        tp = torch.tensor(top_p, dtype=x.dtype, device=dev)[:, None]  # [m, 1]
        drop_sorted = probs_sorted.cumsum(-1) - probs_sorted >= tp  # keep the token that crosses top_p
        drop_sorted[:, 0] = False  # and always the best one
        drop_sorted &= torch.tensor([t < 1.0 for t in top_p], device=dev)[:, None]  # rows with top-p only
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    probs = x.softmax(dim=-1)  # [m, V]
    free = [j for j, i in enumerate(drawn) if generators[i] is None]
    if free:  # unseeded rows: one draw from the default generator
        idx = torch.tensor(free, device=dev)
        out[rows[idx]] = torch.multinomial(probs.index_select(0, idx), 1)[:, 0]
    for j, i in enumerate(drawn):
        g = generators[i]
        if g is not None:  # seeded rows: their own generator, as sample() draws
            row = probs[j:j + 1] if g.device == dev else probs[j:j + 1].to(g.device)
            out[i] = torch.multinomial(row, 1, generator=g)[0, 0].to(dev)
    return out
