"""The PyTorch reference runtime: the model's own prefill / decode_step over a PLTCache."""

from __future__ import annotations

import torch

from ..cache import PLTCache
from ..model import PLT
from .base import Backend, DecoderSession, SessionLimits


class TorchSession(DecoderSession):
    def __init__(self, model: PLT, batch: int, max_seq: int):
        self.model, self.batch, self.max_seq = model, batch, max_seq
        dtype = next(model.parameters()).dtype
        self.cache = PLTCache.allocate(model.cfg, batch, max_seq, dtype, next(model.parameters()).device)

    def prefill(self, tokens, lengths):
        self.check_prefill(tokens)
        self.cache.reset()
        logits = self.model.prefill(tokens, lengths, self.cache)
        self.cache.advance(lengths)
        return logits.float()

    @torch.no_grad()
    def prefill_slots(self, slots, tokens, lengths):
        """The model's own prefill into a scratch cache of k rows, copied into rows `slots`."""
        self.check_slots(slots, tokens, lengths)
        k, S = tokens.shape
        c = self.cache
        scratch = PLTCache.allocate(self.model.cfg, k, S, c.carry.dtype, c.carry.device)
        logits = self.model.prefill(tokens, lengths, scratch).float()  # [k, V]
        rows = torch.tensor(slots, dtype=torch.int64, device=c.lengths.device)
        for dst, src in zip((*c.k, *c.v), (*scratch.k, *scratch.v)):  # [B, Hkv, T, D] <- [k, Hkv, S, D]
            dst[rows] = 0
            dst[rows, :, :S] = src
        for dst, src in zip((*c.local_k, *c.local_v, c.carry), (*scratch.local_k, *scratch.local_v, scratch.carry)):
            dst[rows] = src
        c.lengths[rows] = lengths.to(c.lengths)
        return logits

    def decode(self, tokens):
        self.check_decode()
        logits = self.model.decode_step(tokens, self.cache)
        self.cache.advance()
        return logits.float()

    @property
    def lengths(self):
        return self.cache.lengths

    def kv_bytes(self) -> int:
        return self.cache.kv_bytes()


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: PLT, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()
        self.config = model.cfg

    @property
    def limits(self) -> SessionLimits:
        return SessionLimits.of_config(self.config, next(self.model.parameters()).element_size())  # --dtype

    def start(self, batch: int, max_seq: int) -> TorchSession:
        self.limits.check(batch, max_seq)
        return TorchSession(self.model, batch, max_seq)


def load(path, dtype: str | None = None, threads: int | None = None, **_ignored) -> TorchBackend:
    """A checkpoint folder on the torch backend."""
    from ..checkpoint import load_checkpoint

    return TorchBackend(load_checkpoint(path, dtype=dtype), threads=threads)
