"""Slots and chunked prefill: which rows requests take, and how much of each prompt runs per step.

A slot is one row of the engine's decoder session (llama.cpp's word; TensorRT-LLM's
SequenceSlotManager): a fixed pool of ids, lowest free id first. Requests take free slots first
come, first served; their prompts are then prefilled in chunks under one token budget per step,
shared with the decoding rows (vLLM's chunked prefill), so a long prompt cannot stall the running
streams for more than one budget's worth of prefill per step.
"""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


class SlotPool:
    """Fixed pool of slot ids 0..n-1."""

    def __init__(self, n: int):
        self.n = n
        self._free = list(range(n))

    def take(self) -> int:
        self._free.sort()
        return self._free.pop(0)

    def release(self, slot: int) -> None:
        if slot in self._free or not 0 <= slot < self.n:
            raise ValueError(f"slot {slot} is not in use")
        self._free.append(slot)

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def in_use(self) -> int:
        return self.n - len(self._free)

    def free_ids(self) -> list[int]:
        return sorted(self._free)


def plan_chunks(prefilling: list[T], budget: int, progress: Callable[[T], tuple[int, int]],
                stop_at: Callable[[T], int | None] = lambda r: None) -> list[tuple[T, int, int]]:
    """This step's prompt chunks: (request, start, n) for the prompts still being prefilled, oldest
    first, within `budget` tokens (what is left of the step's budget after one token per decoding
    row). progress(r) = (tokens already in its slot, prompt length). A chunk that would cross
    stop_at(r) (a prefix-cache block boundary, or None) ends there, so the slot's state can be saved
    at that point. The oldest prompt gets at least one token, so prefill always progresses."""
    out: list[tuple[T, int, int]] = []
    left = max(budget, 1)
    for r in prefilling:
        if left <= 0:
            break
        start, total = progress(r)
        n = min(total - start, left)
        b = stop_at(r)
        if b is not None and start < b < start + n:
            n = b - start
        out.append((r, start, n))
        left -= n
    return out
