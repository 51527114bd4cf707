"""The backend interface every runtime implements (torch, ONNX Runtime, TensorRT).

A backend owns a loaded model; `start` gives a session holding the decoder state for one batch.
The generation loop (`plt_deploy.generate`) only talks to this interface, so sampling, stop
tokens and streaming behave the same on every runtime.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ..config import PLTConfig
from ..errors import InputError

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
MODEL_MAX_SEQ_SOURCE = "the model's max_seq_len"


@dataclass(frozen=True)
class SessionLimits:
    """What one decoder session of a model can hold: the one check behind generate, serve and triton-repo.

    Backends build theirs from what they loaded (`Backend.limits`); `plt-deploy triton-repo` builds
    the same from the files alone (triton.artifact.check_artifact: `SessionLimits.of_config`,
    ort_backend.export_limits, trt_backend.engine_limits), so both refuse the same values.
    """

    config: PLTConfig
    elem_bytes: int  # bytes of one cache element (the runtime's dtype)
    max_seq: int
    max_seq_source: str  # what sets max_seq, as a message names it
    max_batch: int | None = None  # None: no fixed batch limit (torch)
    max_batch_source: str = ""

    @classmethod
    def of_config(cls, config: PLTConfig, elem_bytes: int | None = None) -> "SessionLimits":
        """A checkpoint's limits (the torch runtime): its max_seq_len, no batch limit."""
        return cls(config, elem_bytes or DTYPE_BYTES[config.dtype], config.max_seq_len, MODEL_MAX_SEQ_SOURCE)

    def session_bytes(self, batch: int, max_seq: int) -> int:
        """Bytes a session allocates: the KV caches (cache.kv_bytes_formula), the carry (double-buffered
        by the ONNX Runtime backend) and one step's logits."""
        from ..cache import kv_bytes_formula

        cfg = self.config
        carry = 2 * batch * max(cfg.loops - 1, 0) * cfg.d_model * self.elem_bytes if cfg.has_carry else 0
        return kv_bytes_formula(cfg, batch, max_seq, self.elem_bytes) + carry + batch * cfg.vocab_size * 4

    def check(self, batch: int, max_seq: int, batch_flag: str | None = None, seq_flag: str | None = None,
              memory: bool = True) -> None:
        """InputError, before anything is allocated, if `batch` sequences of `max_seq` tokens do not fit.

        batch_flag / seq_flag name the caller's options in the message (serve: "--slots", "--max-context");
        without them it speaks of a batch of N and of N tokens (generate). memory=False checks the
        artifact's limits only (triton-repo: the server that will run it may be another machine).
        """
        from ..config import _size, check_fits

        b = f"{batch_flag} {batch}" if batch_flag else f"batch of {batch}"
        s = f"{seq_flag} {max_seq}" if seq_flag else f"{max_seq} tokens"
        if batch < 1:
            raise InputError(f"{b}: need at least one sequence")
        if self.max_batch is not None and batch > self.max_batch:
            raise InputError(f"{b} exceeds {self.max_batch_source} {self.max_batch}")
        if max_seq > self.max_seq:
            raise InputError(f"{s} exceed{'s' if seq_flag else ''} {self.max_seq_source} of {self.max_seq}")
        if not memory:
            return
        check_fits(self.session_bytes(batch, max_seq), f"{b} x {s}: the KV cache",
                   f"{_size(self.session_bytes(1, max_seq))} per sequence of {max_seq} tokens", error=InputError,
                   advice=f"; lower {' or '.join(f for f in (batch_flag, seq_flag) if f) or 'the batch or the length'}")


class DecoderSession(ABC):
    """Decoder state for a batch of sequences (rows, or slots when serving): preallocated, written in place.

    Every runtime implements three things: `_extend` (continue some rows by a chunk of tokens: the
    state primitive), `_decode` (one token for every row) and `state` (its buffers by name, with
    their roles: backends/state.py). Everything else lives here, once: prefill (= extend from
    position 0, every row or some slots), positions, freeing slots, holding rows still being
    prefilled out of a decode step, and saving / restoring a slot's prefix.
    """

    batch: int
    max_seq: int
    prefilled: bool = False

    @abstractmethod
    def _extend(self, rows: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                start_pos: torch.Tensor) -> torch.Tensor:
        """Rows `rows` [k] continue by tokens [k, S] (right-padded, lengths [k]) from positions
        start_pos [k], state written in place -> logits of each chunk's last real token [k, V] fp32.
        Called with checked arguments; does not touch `lengths`."""

    @abstractmethod
    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B] at each row's position `lengths` -> logits [B, V] fp32; writes every row's state.
        Does not touch `lengths`."""

    @abstractmethod
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(the live state buffers by name, name -> role): what backends/state.py works on."""

    @property
    @abstractmethod
    def lengths(self) -> torch.Tensor:
        """[B] int64 tokens cached per row (= each row's next position), on the host."""

    def kv_bytes(self) -> int:
        """Bytes of KV-cache buffers this session allocated."""
        return 0

    def _reserve(self, needed: int) -> None:
        """Make the state hold `needed` slots per row before a step reads or writes them (`needed` covers
        every row's length). Sessions whose buffers always hold max_seq slots do nothing."""

    # The primitive and what is built on it -----------------------------------------------------
    def extend(self, slots: list[int], tokens: torch.Tensor, lengths: torch.Tensor,
               start_pos: torch.Tensor) -> torch.Tensor:
        """Continue rows `slots` by tokens [k, S] (right-padded, lengths [k] >= 1) from start_pos [k],
        each 0 (a new sequence: whatever the row held is ignored) or the row's length (a chunk more
        of the same sequence) -> logits of each chunk's last real token [k, V] fp32. Other rows are
        untouched; afterwards each listed row's length is start_pos + lengths."""
        start_pos = torch.as_tensor(start_pos, dtype=torch.int64)
        lengths = torch.as_tensor(lengths, dtype=torch.int64)
        self.check_extend(slots, tokens, lengths, start_pos)
        if slots:
            self._reserve(max(int((start_pos + tokens.shape[1]).max()), int(self.lengths.max())))
        rows = torch.tensor(slots, dtype=torch.int64)
        logits = self._extend(rows, tokens, lengths, start_pos)
        self.lengths[rows] = start_pos + lengths
        self.prefilled = True
        return logits

    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens [B, S] int64 right-padded, lengths [B] -> logits of each last real token [B, V] fp32."""
        self.check_prefill(tokens)
        return self.extend(list(range(self.batch)), tokens, lengths, torch.zeros(self.batch, dtype=torch.int64))

    def prefill_slots(self, slots: list[int], tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """New prompts tokens [k, S], lengths [k] into rows `slots`, the other rows as they are -> [k, V]."""
        return self.extend(slots, tokens, lengths, torch.zeros(len(slots), dtype=torch.int64))

    def decode(self, tokens: torch.Tensor, hold: list[int] | None = None) -> torch.Tensor:
        """tokens [B] int64 at each row's next position -> logits [B, V] fp32; every row advances by one
        except rows `hold` (slots in the middle of a chunked prefill): the step writes their K/V and
        ring slot at their next position, which their next extend overwrites before reading, and their
        carry and length are put back as they were."""
        self.check_decode(self.prefilled)
        if tuple(tokens.shape) != (self.batch,):  # ONNX Runtime would broadcast one token to every row
            raise InputError(f"decode takes one token per row, [{self.batch}]; got shape {list(tokens.shape)}")
        self._reserve(int(self.lengths.max()) + 1)
        saved = self._hold(hold) if hold else None
        logits = self._decode(tokens)
        self.lengths.add_(1)
        if saved is not None:
            self._release(hold, saved)
        return logits

    def reset_slots(self, slots: list[int]) -> None:
        """Free rows `slots`: length 0, so they decode an empty sequence until a prefill reuses them."""
        if slots:
            self.lengths[torch.tensor(slots, dtype=torch.int64)] = 0

    def save_slot(self, slot: int, length: int):
        """A copy of row `slot`'s state as of position length - 1 (a prefix cache entry); length must be
        the row's current length (the rings and carry are as of that point only)."""
        from .state import read_slot

        if int(self.lengths[slot]) != length:
            raise InputError(f"slot {slot} holds {int(self.lengths[slot])} tokens, not {length}")
        return read_slot(*self.state(), slot, length)

    def load_slot(self, slot: int, saved) -> None:
        """Put a saved prefix (save_slot) into row `slot`: it continues by extend from saved.length."""
        from .state import write_slot

        if saved.length > self.max_seq:
            raise InputError(f"a saved prefix of {saved.length} tokens exceeds the session's {self.max_seq}")
        self._reserve(max(saved.length, int(self.lengths.max())))
        write_slot(*self.state(), slot, saved)
        self.lengths[slot] = saved.length
        self.prefilled = True

    def _hold(self, hold: list[int]):
        bufs, roles = self.state()
        rows = torch.tensor(hold, dtype=torch.int64)
        return self.lengths[rows].clone(), {n: b[rows].clone() for n, b in bufs.items() if roles[n] == "carry"}

    def _release(self, hold: list[int], saved) -> None:
        lengths, carry = saved
        rows = torch.tensor(hold, dtype=torch.int64)
        self.lengths[rows] = lengths
        bufs, _ = self.state()
        for n, c in carry.items():
            bufs[n][rows] = c

    # Request checks shared by every runtime --------------------------------------------------------
    def check_prefill(self, tokens: torch.Tensor) -> None:
        B, S = tokens.shape
        if B != self.batch:
            raise InputError(f"prefill got {B} prompts, the session was started for {self.batch}")
        if S > self.max_seq:
            raise InputError(f"prompt of {S} tokens exceeds the session's {self.max_seq}")

    def check_decode(self, prefilled: bool = True) -> None:
        if not prefilled:
            raise InputError("decode called before prefill")
        if int(self.lengths.max()) >= self.max_seq:
            raise InputError(f"sequence reached the session's maximum of {self.max_seq} tokens")

    def check_extend(self, slots: list[int], tokens: torch.Tensor, lengths: torch.Tensor,
                     start_pos: torch.Tensor) -> None:
        if tokens.dim() != 2:
            raise InputError(f"extend needs tokens [k, S], got shape {tuple(tokens.shape)}")
        k, S = tokens.shape
        if len(slots) != k or lengths.shape != (k,) or start_pos.shape != (k,):
            raise InputError(f"extend got {len(slots)} slots for {k} chunks, lengths {tuple(lengths.shape)} and "
                             f"start positions {tuple(start_pos.shape)}")
        if len(set(slots)) != k or any(not 0 <= s < self.batch for s in slots):
            raise InputError(f"slots {slots} must be distinct rows in [0, {self.batch})")
        if k and (int(lengths.min()) < 1 or int(lengths.max()) > S):
            raise InputError(f"chunk lengths {lengths.tolist()} must be in [1, {S}]")
        for s, p in zip(slots, start_pos.tolist()):
            if p != 0 and p != int(self.lengths[s]):
                raise InputError(f"slot {s} holds {int(self.lengths[s])} tokens: extend it from there (or from 0), "
                                 f"not from {p}")
            if p + S > self.max_seq:
                what = "prompt" if p == 0 else f"chunk from position {p}"
                raise InputError(f"{what} of {S} tokens exceeds the session's {self.max_seq}")


class Backend(ABC):
    name: str
    config: PLTConfig

    @abstractmethod
    def start(self, batch: int, max_seq: int) -> DecoderSession:
        """A new session for `batch` sequences of up to `max_seq` tokens (prompt + generated).

        Every implementation calls `self.limits.check(batch, max_seq)` first."""

    @property
    def limits(self) -> SessionLimits:
        """max_seq, max_batch and the KV-cache memory check of a session, with their sources: the one
        place a backend states them (the properties below read it)."""
        return SessionLimits.of_config(self.config)

    @property
    def max_batch(self) -> int | None:
        """The most sequences one session can hold (None: no fixed limit)."""
        return self.limits.max_batch

    @property
    def max_batch_source(self) -> str:
        """What sets `max_batch`, as an error message names it."""
        return self.limits.max_batch_source

    @property
    def max_seq(self) -> int:
        """The longest sequence (prompt + generated tokens) a session of this backend can hold."""
        return self.limits.max_seq

    @property
    def max_seq_source(self) -> str:
        """What sets `max_seq`, as an error message names it."""
        return self.limits.max_seq_source

    def close(self) -> None:
        """Release runtime resources (sessions, engines, device memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
