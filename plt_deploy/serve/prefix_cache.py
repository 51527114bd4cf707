"""Prefix cache: decoder states of prompt prefixes that earlier requests prefilled, reused by later ones.

A prompt is cut into blocks of `block` tokens; the key of block i is a hash chain over blocks
0..i (vLLM's scheme), so a key names a whole prefix. An entry is a slot's state saved at a block
boundary P (DecoderSession.save_slot: shared K/V of positions 0..P-1, and the rings and carry as of
P - 1, without which a PLT or LoopCoder model could not continue from P). A new request takes the
longest stored prefix of its prompt that leaves at least one token to prefill (the first token's
logits come from that token), loads it into its slot and prefills only the rest. The token ids are
stored with each entry and compared on a hit, so a hash collision can never serve wrong state.

Prompts that share a prefix but go on differently (one system prompt, different questions) meet at
no stored boundary: the first entry is saved at the end of the first prompt. So a prompt is also
saved where it leaves the blocks of an earlier entry (`shared`: the last block boundary its chain
has in common with a stored one) or of another prompt in flight (running or waiting: questions
that arrive together); the next such prompt hits that entry.

Bounded by bytes (`capacity_bytes`), least recently used first out. Counters follow vLLM's
metrics: queries and hits are counted in prompt tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_BLOCK = 16


@dataclass
class Entry:
    tokens: tuple[int, ...]  # the prefix itself (checked on every hit)
    state: object  # backends.state.SlotState


class PrefixCache:
    def __init__(self, capacity_bytes: int, block: int = DEFAULT_BLOCK):
        if capacity_bytes < 0 or block < 1:
            raise ValueError(f"need capacity >= 0 and block >= 1, got {capacity_bytes}, {block}")
        self.capacity, self.block = capacity_bytes, block
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # chain key -> entry, least recent first
        self._chains: dict[int, int] = {}  # chain key of every block prefix of a stored entry -> entries using it
        self.bytes = 0
        self.queries = self.hits = 0  # prompt tokens looked up / found
        self.evictions = 0

    def _keys(self, tokens: list[int], upto: int) -> list[tuple[int, int]]:
        """(prefix length, chain key) at every block boundary <= upto."""
        out, key = [], 0
        for end in range(self.block, upto + 1, self.block):
            key = hash((key, tuple(tokens[end - self.block:end])))
            out.append((end, key))
        return out

    def boundary(self, n_prompt: int) -> int:
        """Where a prompt of n_prompt tokens is saved: the last block boundary that leaves a token to prefill."""
        return (n_prompt - 1) // self.block * self.block

    def lookup(self, tokens: list[int]):
        """The longest stored prefix of `tokens` leaving one token to prefill -> (length, state) or None."""
        self.queries += len(tokens)
        for end, key in reversed(self._keys(tokens, self.boundary(len(tokens)))):
            e = self._entries.get(key)
            if e is not None and e.tokens == tuple(tokens[:end]):
                self._entries.move_to_end(key)
                self.hits += end
                return end, e.state
        return None

    def shared(self, tokens: list[int], others: list[list[int]] = ()) -> int:
        """The last block boundary (leaving a token to prefill) where `tokens` still follows a stored
        entry's blocks, or one of `others` (prompts in flight, whose states are not stored yet), 0 if
        none: a prompt saved there serves later prompts with that prefix."""
        limit = self.boundary(len(tokens))
        best = 0
        for other in others:
            best = self._common(tokens, other, limit, best)
        for end, key in reversed(self._keys(tokens, limit)):
            if end <= best:
                break
            if key in self._chains:
                return end
        return best

    def _common(self, a: list[int], b: list[int], limit: int, at_least: int = 0) -> int:
        """The longest whole-block prefix a and b share, at most `limit` tokens, or `at_least` if that
        is longer: a binary search over block counts with list comparisons (C speed: the engine
        thread runs this per admission), after one comparison that rules out a b not beating at_least."""
        lo, hi = at_least // self.block, min(limit, len(b)) // self.block
        if lo >= hi or a[:(lo + 1) * self.block] != b[:(lo + 1) * self.block]:
            return at_least
        while lo < hi:
            mid = (lo + hi + 1) // 2
            n = mid * self.block
            if a[:n] == b[:n]:
                lo = mid
            else:
                hi = mid - 1
        return lo * self.block

    def wants(self, tokens: list[int], length: int) -> bool:
        """Whether saving `tokens[:length]` would add an entry (a boundary, not stored yet, fits at all)."""
        if length < self.block or length % self.block or self.capacity == 0:
            return False
        return self._keys(tokens, length)[-1][1] not in self._entries

    def store(self, tokens: list[int], length: int, state) -> bool:
        """Keep the state of tokens[:length] (a block boundary); evicts least recently used entries to fit."""
        if not self.wants(tokens, length) or state.nbytes > self.capacity:
            return False
        while self.bytes + state.nbytes > self.capacity:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.state.nbytes
            self.evictions += 1
            for _, key in self._keys(list(old.tokens), len(old.tokens)):
                self._chains[key] -= 1
                if not self._chains[key]:
                    del self._chains[key]
        keys = self._keys(tokens, length)
        self._entries[keys[-1][1]] = Entry(tuple(tokens[:length]), state)
        for _, key in keys:
            self._chains[key] = self._chains.get(key, 0) + 1
        self.bytes += state.nbytes
        return True

    @property
    def usage(self) -> float:
        """Fraction of the capacity in use (0..1)."""
        return self.bytes / self.capacity if self.capacity else 0.0

    def __len__(self) -> int:
        return len(self._entries)
