"""The backend interface every runtime implements (torch, ONNX Runtime, TensorRT).

A backend owns a loaded model; `start` gives a session holding the decoder state for one batch.
The generation loop (`plt_deploy.generate`) only talks to this interface, so sampling, stop
tokens and streaming behave the same on every runtime.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..config import PLTConfig


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


class Backend(ABC):
    name: str
    config: PLTConfig

    @abstractmethod
    def start(self, batch: int, max_seq: int) -> DecoderSession:
        """A new session for `batch` sequences of up to `max_seq` tokens (prompt + generated)."""

    def close(self) -> None:
        """Release runtime resources (sessions, engines, device memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
