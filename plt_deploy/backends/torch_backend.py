"""The PyTorch reference runtime: the model's own extend / decode_step over a PLTCache."""

from __future__ import annotations

import torch

from ..cache import PLTCache
from ..model import PLT
from . import state as state_lib
from .base import Backend, DecoderSession, SessionLimits


class TorchSession(DecoderSession):
    def __init__(self, model: PLT, batch: int, max_seq: int):
        self.model, self.batch, self.max_seq = model, batch, max_seq
        dtype = next(model.parameters()).dtype
        self.cache = PLTCache.allocate(model.cfg, batch, max_seq, dtype, next(model.parameters()).device)

    def state(self):
        """The PLTCache's buffers by name and role (the names of io_spec's cache tensors, unprefixed)."""
        c = self.cache
        bufs, roles = {}, {}
        for role, tensors in (("key", c.k), ("value", c.v), ("local_key", c.local_k), ("local_value", c.local_v)):
            for i, t in enumerate(tensors):
                bufs[f"{role}.{i}"], roles[f"{role}.{i}"] = t, role
        if c.carry.shape[1]:
            bufs["carry"], roles["carry"] = c.carry, "carry"
        return bufs, roles

    @torch.no_grad()
    def _extend(self, rows, tokens, lengths, start_pos):
        """The model's extend on a cache of the listed rows, cut to the slots the chunk reaches (views of the
        session's cache for consecutive rows, written in place; copies written back otherwise)."""
        span = int((start_pos + tokens.shape[1]).max())
        bufs, roles = self.state()
        part = state_lib.rows_of(bufs, roles, rows, span, contiguous=False)  # views for consecutive rows
        cfg = self.model.cfg
        scratch = PLTCache(
            k=[part[f"key.{i}"] for i in range(cfg.n_cache_layers)],
            v=[part[f"value.{i}"] for i in range(cfg.n_cache_layers)],
            local_k=[part[f"local_key.{n}"] for n in range(cfg.n_local_layers)],
            local_v=[part[f"local_value.{n}"] for n in range(cfg.n_local_layers)],
            carry=part.get("carry", self.cache.carry[rows]), lengths=start_pos.clone())
        logits = self.model.extend(tokens, lengths, start_pos, scratch)  # [k, V]
        state_lib.write_rows(bufs, roles, rows, part, int(start_pos.min()))
        return logits.float()

    def _decode(self, tokens):
        """One step on the cache's K/V cut to the slots the rows reach (views, written in place): the
        attention then reads what the rows hold, not the session's max_seq slots."""
        span = int(self.cache.lengths.max()) + 1
        c = self.cache
        cut = PLTCache(k=[t[:, :, :span] for t in c.k], v=[t[:, :, :span] for t in c.v], local_k=c.local_k,
                       local_v=c.local_v, carry=c.carry, lengths=c.lengths)
        return self.model.decode_step(tokens, cut).float()

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
