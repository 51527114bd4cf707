"""Slots and admission: which waiting requests join the running batch before the next step.

A slot is one row of the engine's decoder session (llama.cpp's word; TensorRT-LLM's
SequenceSlotManager): a fixed pool of ids, lowest free id first. Admission is first come, first
served under a per-step prefill token budget, so a burst of long prompts cannot stall the running
streams for more than one budget's worth of prefill per step.
"""

from __future__ import annotations

from collections import deque
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


def admit(waiting: deque, free_slots: int, budget: int, cost: Callable[[T], int]) -> list[T]:
    """Pop the requests that join this step, oldest first.

    Stops at the first request that does not fit (no overtaking, so no request waits forever): it
    fits if a slot is free and its prompt keeps this step's prefill within `budget` tokens. A
    prompt longer than the whole budget is admitted alone, in a step with no other prefill.
    """
    out: list[T] = []
    used = 0
    while waiting and len(out) < free_slots:
        c = cost(waiting[0])
        if out and used + c > budget:
            break
        out.append(waiting.popleft())
        used += c
        if used >= budget:
            break
    return out
