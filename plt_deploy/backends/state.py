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
