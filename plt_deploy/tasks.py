"""Synthetic tasks that make themselves: training data for CPU demos and parity tests.

Each example is (prompt, answer) text for the byte tokenizer. Train and held-out examples come
from disjoint parts of the input space (split by a hash of the operands), so held-out accuracy
measures generalisation, not memorisation.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    digits: int  # operand size (addition) or string length (reverse)

    def example(self, rng: random.Random) -> tuple[str, str, bool]:
        """(prompt, answer, is_held_out)."""
        if self.name == "addition":
            a, b = rng.randrange(10 ** self.digits), rng.randrange(10 ** self.digits)
            key = f"{a},{b}"
            # The sum is written least-significant digit first: a causal model can then produce
            # each digit from the operands and the carry it has already written.
            prompt, answer = f"{a:0{self.digits}d}+{b:0{self.digits}d}=", str(a + b)[::-1]
        elif self.name == "reverse":
            s = "".join(rng.choice("abcdefghij") for _ in range(self.digits))
            key, prompt, answer = s, f"{s}>", s[::-1]
        else:
            raise ValueError(f"unknown task {self.name!r}; choose one of {', '.join(TASKS)}")
        return prompt, answer, zlib.crc32(key.encode()) % 10 == 0  # 10% of the space is held out

    def sample(self, rng: random.Random, held_out: bool) -> tuple[str, str]:
        while True:
            prompt, answer, h = self.example(rng)
            if h == held_out:
                return prompt, answer

    @property
    def max_len(self) -> int:
        """Tokens of <bos> + prompt + answer + <eos>."""
        return 1 + (2 * self.digits + 2 + self.digits + 1 if self.name == "addition" else 2 * self.digits + 1) + 1


TASKS = {"addition": Task("addition", 3), "reverse": Task("reverse", 8)}
