"""Decoder state: preallocated, position-indexed KV caches (gpt-fast style) and the PLT carry.

Layout (one tensor per layer, so that exported graphs can bind each buffer in place):
  k[i], v[i]      [B, Hkv, T, D]     slot j holds position j. i < n_cache_layers:
                                     plt/vanilla: loop 1's keys (the shared cache), one per layer;
                                     looped: every loop's own cache, i = loop * N + layer.
  local_k[n], local_v[n]  [B, L-1, Hkv, Wc, D]   plt only: ring buffer of each loop >= 2's own
                                     keys, slot = position % Wc, Wc = window.
  carry           [B, L-1, d]        plt only: h_l(t-1) for loops l = 1..L-1.
  lengths         [B] int64          tokens cached per sequence (= next position).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import PLTConfig


def ring_slots(config: PLTConfig, max_seq: int | None = None) -> int:
    """Slots in a loop's local ring buffer: always the window w.

    Not capped by a session's max_seq: prefill builds the rings before it knows the session, and
    w slots keep the KV bytes exactly vanilla x (1 + (L-1) * w / T). Unused slots read as empty.
    """
    return config.window


def ring_positions(pos: torch.Tensor, n_slots: int) -> torch.Tensor:
    """Positions held by a ring buffer of n_slots after writing position t = pos[b].

    Slot i holds the largest p <= t with p % n_slots == i, or -1 if that p is negative.
    pos [B] int64 -> [B, n_slots] int64.
    """
    t = pos[:, None]  # [B, 1]
    slots = torch.arange(n_slots, dtype=torch.int64, device=pos.device)[None, :]  # [1, Wc]
    p = t - torch.remainder(t - slots, n_slots)
    return torch.where(p >= 0, p, torch.full_like(p, -1))


def write_at(buf: torch.Tensor, slot: torch.Tensor, value: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Write value[b] into buf[b, ..., slot[b], :] along dim -2.

    buf [B, *M, T, D], slot [B] int64, value [B, *M, D]. In place for runtimes (no copy of the
    cache); out of place when tracing for export (the graph then returns the updated buffer,
    which the runtime binds to the same memory as the input).
    """
    index = slot.view(-1, *([1] * (buf.dim() - 1))).expand(*value.shape[:-1], 1, value.shape[-1])
    src = value.unsqueeze(-2)
    return buf.scatter_(-2, index, src) if inplace else buf.scatter(-2, index, src)


@dataclass
class PLTCache:
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    local_k: list[torch.Tensor]
    local_v: list[torch.Tensor]
    carry: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def allocate(cls, config: PLTConfig, batch: int, max_seq: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> "PLTCache":
        Hkv, D = config.n_kv_heads, config.head_dim
        rows = config.loops - 1 if config.uses_gswa else 0
        wc = ring_slots(config, max_seq)
        full = lambda: torch.zeros(batch, Hkv, max_seq, D, dtype=dtype, device=device)  # noqa: E731
        ring = lambda: torch.zeros(batch, rows, Hkv, wc, D, dtype=dtype, device=device)  # noqa: E731
        n_local = config.n_layers if rows else 0
        return cls(
            k=[full() for _ in range(config.n_cache_layers)],
            v=[full() for _ in range(config.n_cache_layers)],
            local_k=[ring() for _ in range(n_local)],
            local_v=[ring() for _ in range(n_local)],
            carry=torch.zeros(batch, rows, config.d_model, dtype=dtype, device=device),
            lengths=torch.zeros(batch, dtype=torch.int64, device=device),
        )

    @property
    def max_seq(self) -> int:
        return self.k[0].shape[2]

    def kv_bytes(self) -> int:
        """Bytes of the attention caches actually allocated (shared/full plus local rings)."""
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v, *self.local_k, *self.local_v))

    def state_bytes(self) -> int:
        """Everything kept per step: KV caches plus the carried hidden vectors."""
        return self.kv_bytes() + self.carry.numel() * self.carry.element_size()


def kv_bytes_formula(config: PLTConfig, batch: int, max_seq: int, bytes_per_elem: int) -> int:
    """Expected KV bytes: vanilla x (1 + (L-1) * w / T) for plt, vanilla x L for looped."""
    per_layer = 2 * batch * config.n_kv_heads * max_seq * config.head_dim * bytes_per_elem
    local = 0
    if config.uses_gswa:
        local = 2 * batch * (config.loops - 1) * config.n_kv_heads * ring_slots(config, max_seq) * config.head_dim
        local *= bytes_per_elem * config.n_layers
    return per_layer * config.n_cache_layers + local
