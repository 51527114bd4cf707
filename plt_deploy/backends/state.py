"""The decoder state of a session as named buffers by kind, and the rules every runtime shares.

A session's state is a dict of buffers, one per cache tensor, each with a role (export/io_spec.py):

  key / value              [B, Hkv, T, D]        slot j = position j (shared K/V, or every loop's own)
  local_key / local_value  [B, rows*Hkv, W, D]   G-SWA rings, slot = position % W
  carry                    [B, L-1, d]           PLT's h_l(t-1)

An extend runs on some rows only, and on the slots it can reach: `rows_of` hands it those rows
(views where possible, else copies; K/V cut to the first `span` slots, so the work grows with the
sequence, not with the session's T), `write_rows` puts what it wrote back (K/V slots from the chunk's first
position on, rings and carry whole). A prefix of a slot (`SlotState`) is the same cut at its
length: K/V slots 0..P-1 with the rings and carry as of P - 1, which is all an extend from P reads.
These three functions are the one place the kinds of state are told apart.

Runtimes that bind buffers by address (ONNX Runtime) cannot hand a kernel the first n slots of a
[B, Hkv, T, D] buffer without a copy, and ONNX Runtime's Attention reads all T slots whatever
nonpad_kv_seqlen says. `KVCapacity` keeps such a session's K/V at a capacity that follows the
sequences (256, 512, ... slots, up to max_seq) inside storage allocated once for max_seq, so a step
reads what the rows hold, not what the session could hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SEQ_ROLES = ("key", "value")  # cut along the slot axis (-2); every other role is kept whole per row


def rows_of(bufs: dict[str, torch.Tensor], roles: dict[str, str], rows: torch.Tensor, span: int,
            contiguous: bool = True, align: int = 1) -> dict[str, torch.Tensor]:
    """Rows `rows` [k] of every buffer, K/V cut to slots 0..span-1: views of the buffers where they can
    be (consecutive rows, and for contiguous=True, which runtimes binding memory by address need, K/V
    not cut, and the view's address a multiple of `align`: TensorRT wants 256), so the extend writes
    the session's memory itself; copies otherwise."""
    ids = rows.tolist()
    run = ids == list(range(ids[0], ids[0] + len(ids))) if ids else False
    out = {}
    for name, b in bufs.items():
        seq = roles[name] in SEQ_ROLES
        if run and not (contiguous and seq and span != b.shape[2]):
            view = b[ids[0]:ids[0] + len(ids), :, :span] if seq else b[ids[0]:ids[0] + len(ids)]
            if view.data_ptr() % align == 0:
                out[name] = view
                continue
        out[name] = (b[rows, :, :span] if seq else b[rows]).contiguous()
    return out


def write_rows(bufs: dict[str, torch.Tensor], roles: dict[str, str], rows: torch.Tensor,
               new: dict[str, torch.Tensor], first: int) -> None:
    """Write an extend's state `new` (rows_of's layout) back into rows `rows`: K/V slots first..span-1
    (`first` = the lowest start position of the chunk: earlier slots are unchanged), the rest whole."""
    for name, src in new.items():
        if src.untyped_storage().data_ptr() == bufs[name].untyped_storage().data_ptr():
            continue  # a view of the buffer (rows_of): already written in place
        if roles[name] in SEQ_ROLES:
            bufs[name][rows, :, first:src.shape[2]] = src[:, :, first:]
        else:
            bufs[name][rows] = src


CAPACITY_STEP = 256  # the smallest K/V capacity KVCapacity lays buffers out for


def capacity_for(needed: int, current: int, max_seq: int) -> int:
    """The capacity a session needing `needed` slots per row should have: 256 x a power of two, at most
    max_seq. Grown when `needed` exceeds `current`; shrunk only when 4x smaller fits (no back and forth)."""
    want = CAPACITY_STEP
    while want < needed:
        want *= 2
    want = min(want, max_seq)
    return want if want > current or want * 4 <= current else current


class KVCapacity:
    """A session's K/V buffers as [B, Hkv, cap, D] views of the front of storage sized for max_seq.

    `reserve(n)` re-lays every K/V buffer out at capacity_for(n) when that changes: each row keeps its
    first min(old, new) slots (the caller's n covers every row's length, so nothing live is dropped).
    The storage, and so the memory the session holds, never changes; `bufs` (the session's dict)
    gets the new views, which start at the storage's address."""

    def __init__(self, bufs: dict[str, torch.Tensor], roles: dict[str, str], max_seq: int, fixed: bool = False):
        self.bufs, self.max_seq, self.fixed = bufs, max_seq, fixed  # fixed: always max_seq (static shapes)
        self.storage = {name: b.view(-1) for name, b in bufs.items() if roles[name] in SEQ_ROLES}  # flat
        self.cap = max_seq
        if not fixed and CAPACITY_STEP < max_seq:
            self._relayout(CAPACITY_STEP)  # empty yet: start small

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.storage.values())

    def reserve(self, needed: int) -> None:
        new = self.cap if self.fixed else capacity_for(needed, self.cap, self.max_seq)
        if new != self.cap:
            self._relayout(new)

    def _relayout(self, new: int) -> None:
        """Row i of the B*H rows moves from offset i*old*D to i*new*D in its storage. Growing moves rows
        up, last first; shrinking moves them down, first first: no row lands on one not yet moved. A
        row's own old and new places may overlap, so each goes through a copy of one row (never of a
        whole buffer: the session's memory is all the move needs, plus one row)."""
        for name, flat in self.storage.items():
            B, H, old, D = self.bufs[name].shape
            keep, rows = min(old, new) * D, B * H
            for i in (range(rows - 1, 0, -1) if new > old else range(1, rows)):  # row 0 stays at offset 0
                flat[i * new * D: i * new * D + keep] = flat[i * old * D: i * old * D + keep].clone()
            self.bufs[name] = flat[: rows * new * D].view(B, H, new, D)
        self.cap = new


@dataclass
class SlotState:
    """One sequence's state as of position length - 1: enough to continue it by extend from `length`."""

    length: int
    tensors: dict[str, torch.Tensor]  # name -> [1, ...] (K/V: [1, Hkv, length, D])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def read_slot(bufs: dict[str, torch.Tensor], roles: dict[str, str], slot: int, length: int) -> SlotState:
    """A copy of slot `slot`'s state as of position length - 1 (its K/V slots 0..length-1, rings, carry)."""
    part = rows_of(bufs, roles, torch.tensor([slot]), length, contiguous=False)
    return SlotState(length, {name: t.clone() for name, t in part.items()})  # a copy: the slot goes on


def write_slot(bufs: dict[str, torch.Tensor], roles: dict[str, str], slot: int, state: SlotState) -> None:
    """Put a saved state into slot `slot` (its K/V slots 0..length-1, rings, carry); later slots are stale."""
    write_rows(bufs, roles, torch.tensor([slot]), state.tensors, 0)
