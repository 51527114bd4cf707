"""Decoder state: preallocated, position-indexed KV caches (gpt-fast style) and the PLT carry.

Layout (one tensor per layer, so that exported graphs can bind each buffer in place):
  k[i], v[i]      [B, Hkv, T, D]     slot j holds position j. i < n_cache_layers:
                                     plt/vanilla: loop 1's keys (the shared cache), one per layer;
                                     looped: every loop's own cache, i = loop * N + layer.
  local_k[n], local_v[n]  [B, rows*Hkv, ring_len, D]   G-SWA models: ring buffer of loops 2..L's own
                                     keys (row r, head h at r*Hkv + h: 4-D like k/v, the layout TensorRT's
                                     KV-cache update takes), slot = position % ring_len, ring_len = window.
                                     plt: one per layer, rows = L-1 (loops 2..L);
                                     loopcoder: rows = 1, n = (loop - 2) * N + layer (config.n_local_layers).
  carry           [B, L-1, d]        plt only: h_l(t-1) for loops l = 1..L-1 ([B, 0, d] otherwise).
  lengths         [B] int64          tokens cached per sequence (= next position).

The model writes keys through `update` / `update_local` / `set_local` / `set_carry` and never touches
`lengths`: whoever drives the decode loop calls `advance` after a step or sets the lengths after an
extend (a runtime session: backends/base.py). A cache made with `in_place=False` writes out of place through the `plt::kv_cache_update` op (the
buffers in its lists are replaced by updated copies): that is how export traces the decode graph,
where every write becomes one ONNX TensorScatter whose present_* output the runtime binds to the
past_* memory (ops/kv_update.py). Every cache write, of every model mode, goes through `write_at`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import PLTConfig
from .ops import kv_update


def ring_len(config: PLTConfig) -> int:
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
    slots = torch.arange(n_slots, dtype=torch.int64, device=pos.device)[None, :]  # [1, n_slots]
    p = t - torch.remainder(t - slots, n_slots)
    return torch.where(p >= 0, p, torch.full_like(p, -1))


def write_at(buf: torch.Tensor, slot: torch.Tensor, value: torch.Tensor, in_place: bool) -> torch.Tensor:
    """Write value[b] into buf[b, :, slot[b], :]: the one place a cache is written.

    buf [B, H, T, D], slot [B] int64, value [B, H, 1, D]. In place for runtimes (no copy of the
    cache); out of place when tracing for export: `plt::kv_cache_update`, exported as one
    TensorScatter (linear, axis -2) whose output the runtime binds to the input's memory.
    """
    if in_place:
        return kv_update.write_in_place(buf, value, slot)
    return torch.ops.plt.kv_cache_update(buf, value, slot)


@dataclass
class PLTCache:
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    local_k: list[torch.Tensor]
    local_v: list[torch.Tensor]
    carry: torch.Tensor
    lengths: torch.Tensor
    in_place: bool = True  # False: functional writes (export tracing)

    @classmethod
    def allocate(cls, config: PLTConfig, batch: int, max_seq: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> "PLTCache":
        Hkv, D = config.n_kv_heads, config.head_dim
        rows = config.local_rows
        full = lambda: torch.zeros(batch, Hkv, max_seq, D, dtype=dtype, device=device)  # noqa: E731
        ring = lambda: torch.zeros(batch, rows * Hkv, ring_len(config), D, dtype=dtype, device=device)  # noqa: E731
        n_local = config.n_local_layers
        carry_rows = config.loops - 1 if config.has_carry else 0
        return cls(
            k=[full() for _ in range(config.n_cache_layers)],
            v=[full() for _ in range(config.n_cache_layers)],
            local_k=[ring() for _ in range(n_local)],
            local_v=[ring() for _ in range(n_local)],
            carry=torch.zeros(batch, carry_rows, config.d_model, dtype=dtype, device=device),
            lengths=torch.zeros(batch, dtype=torch.int64, device=device),
        )

    @property
    def max_seq(self) -> int:
        return self.k[0].shape[2]

    @property
    def ring_len(self) -> int:
        """Slots of each local ring (0 without G-SWA)."""
        return self.local_k[0].shape[2] if self.local_k else 0

    # Writes (the model calls these) ----------------------------------------------------------
    def update(self, i: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, Hkv, 1, D] at slot pos[b] of cache i; returns the (updated) buffers [B, Hkv, T, D]."""
        self.k[i] = write_at(self.k[i], pos, k, self.in_place)
        self.v[i] = write_at(self.v[i], pos, v, self.in_place)
        return self.k[i], self.v[i]

    def update_local(self, n: int, slot: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, rows, Hkv, 1, D] at ring slot[b] (= pos % ring_len) of local ring n (plt: loops
        2..L of layer n; loopcoder: one loop's keys of one layer, see config.n_local_layers); returns
        the ring as [B, rows, Hkv, ring_len, D] views of its 4-D buffer."""
        rows = k.shape[1]
        self.local_k[n] = write_at(self.local_k[n], slot, k.flatten(1, 2), self.in_place)  # [B, rows*Hkv, W, D]
        self.local_v[n] = write_at(self.local_v[n], slot, v.flatten(1, 2), self.in_place)
        return self.local_k[n].unflatten(1, (rows, -1)), self.local_v[n].unflatten(1, (rows, -1))

    def local_row(self, n: int, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row `row` of local ring n as [B, Hkv, ring_len, D] views (extend reads one loop's ring)."""
        Hkv = self.k[0].shape[1]
        return (self.local_k[n][:, row * Hkv:(row + 1) * Hkv], self.local_v[n][:, row * Hkv:(row + 1) * Hkv])

    def set_local(self, n: int, rows: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Replace local ring n whole: rows[r] = (k, v) [B, Hkv, ring_len, D] for each of its rows
        (extend rewrites a ring from its old content and the chunk: at most w slots, never the caches)."""
        k = torch.cat([r[0] for r in rows], dim=1)  # [B, rows*Hkv, W, D]
        v = torch.cat([r[1] for r in rows], dim=1)
        if self.in_place:
            self.local_k[n].copy_(k)
            self.local_v[n].copy_(v)
        else:
            self.local_k[n], self.local_v[n] = k, v

    def set_carry(self, carry: torch.Tensor) -> None:
        """carry [B, L-1, d]: loops 1..L-1's hidden state at the position just decoded."""
        if self.in_place:
            self.carry.copy_(carry)
        else:
            self.carry = carry

    # Position bookkeeping (the decode loop calls these) --------------------------------------
    def advance(self, n: int | torch.Tensor = 1) -> None:
        """n more tokens cached per sequence (an int, or [B] after a prefill of ragged prompts)."""
        self.lengths += n

    def reset(self) -> None:
        """Forget every sequence (buffers are not cleared: positions mask stale slots)."""
        self.lengths.zero_()
        self.carry.zero_()

    # Sizes -----------------------------------------------------------------------------------
    def kv_bytes(self) -> int:
        """Bytes of the attention caches actually allocated (shared/full plus local rings)."""
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v, *self.local_k, *self.local_v))

    def state_bytes(self) -> int:
        """Everything kept per step: KV caches plus the carried hidden vectors."""
        return self.kv_bytes() + self.carry.numel() * self.carry.element_size()


def kv_bytes_formula(config: PLTConfig, batch: int, max_seq: int, bytes_per_elem: int) -> int:
    """Expected KV bytes: vanilla x (1 + (L-1) * w / T) for plt and loopcoder, vanilla x L for looped."""
    per_layer = 2 * batch * config.n_kv_heads * max_seq * config.head_dim * bytes_per_elem
    local = 0
    if config.uses_gswa:
        local = 2 * batch * config.local_rows * config.n_kv_heads * ring_len(config) * config.head_dim
        local *= bytes_per_elem * config.n_local_layers
    return per_layer * config.n_cache_layers + local
