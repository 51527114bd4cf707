"""The backend interface every runtime implements (torch, ONNX Runtime, TensorRT).

A backend owns a loaded model; `start` gives a session holding the decoder state for one batch.
The generation loop (`plt_deploy.generate`) only talks to this interface, so sampling, stop
tokens and streaming behave the same on every runtime.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..config import PLTConfig
from ..errors import InputError


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
        """A new session for `batch` sequences of up to `max_seq` tokens (prompt + generated)."""

    @property
    def max_seq(self) -> int:
        """The longest sequence (prompt + generated tokens) a session of this backend can hold."""
        return self.config.max_seq_len

    @property
    def max_seq_source(self) -> str:
        """What sets `max_seq`, as an error message names it."""
        return "the model's max_seq_len"

    def close(self) -> None:
        """Release runtime resources (sessions, engines, device memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
