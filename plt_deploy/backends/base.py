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
    """Decoder state for a batch of sequences: preallocated caches, written in place."""

    batch: int
    max_seq: int

    @abstractmethod
    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens [B, S] int64 right-padded, lengths [B] -> logits of each last real token [B, V] fp32."""

    @abstractmethod
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B] int64 at each sequence's next position -> logits [B, V] fp32."""

    @property
    @abstractmethod
    def lengths(self) -> torch.Tensor:
        """[B] tokens cached per sequence."""

    def kv_bytes(self) -> int:
        """Bytes of KV-cache buffers this session allocated."""
        return 0

    # Request checks shared by every runtime (call them first in prefill / decode).
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

    # Slots (continuous batching, plt_deploy.serve): each row of one running session serves its
    # own request. A free row keeps decoding harmlessly at position 0 (static shapes: it is masked
    # by its length, not removed) until prefill_slots writes a new request into it.
    def prefill_slots(self, slots: list[int], tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Prefill right-padded prompts tokens [k, S], lengths [k] into rows `slots` of this session,
        leaving every other row as it is -> last-token logits [k, V] fp32."""
        from ..errors import BackendUnavailable

        raise BackendUnavailable(f"the {type(self).__name__} runtime cannot prefill into slots of a running session")

    def reset_slots(self, slots: list[int]) -> None:
        """Free rows `slots`: length 0, so they decode an empty sequence until a prefill reuses them."""
        if slots:
            self.lengths[torch.tensor(slots, dtype=torch.int64)] = 0

    def check_slots(self, slots: list[int], tokens: torch.Tensor, lengths: torch.Tensor) -> None:
        k, S = tokens.shape
        if len(slots) != k or lengths.shape != (k,):
            raise InputError(f"prefill_slots got {len(slots)} slots for {k} prompts and {tuple(lengths.shape)} lengths")
        if len(set(slots)) != k or any(not 0 <= s < self.batch for s in slots):
            raise InputError(f"slots {slots} must be distinct rows in [0, {self.batch})")
        if S > self.max_seq:
            raise InputError(f"prompt of {S} tokens exceeds the session's {self.max_seq}")


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
