"""A Polygraphy runner over any plt_deploy Backend (the PyTorch reference, ONNX Runtime, ...).

Polygraphy runners are stateless per `infer`; decoding is not. `BackendRunner` keeps one decoder
session per activation and reads the phase from the feed: a feed with `lengths` is a prefill
(input_ids [B, S]), a feed without is one decode step (input_ids [B]). Feeding the same list of
feeds to every runner through `Comparator.run` therefore replays the same prefill + decode steps
on each backend.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from ..backends.base import Backend


class BackendRunner(BaseRunner):
    def __init__(self, backend: Backend, batch: int, max_seq: int, name: str | None = None):
        super().__init__(name=name or backend.name, prefix="plt-backend")
        self.backend, self.batch, self.max_seq = backend, batch, max_seq
        self.session = None

    def activate_impl(self):
        self.session = self.backend.start(self.batch, self.max_seq)

    def get_input_metadata_impl(self, use_numpy_dtypes=None):
        return TensorMetadata()  # the feeds differ by phase; checked in infer_impl

    def infer_impl(self, feed_dict):
        tokens = torch.from_numpy(np.ascontiguousarray(feed_dict["input_ids"])).to(torch.int64)
        if "lengths" in feed_dict:
            lengths = torch.from_numpy(np.ascontiguousarray(feed_dict["lengths"])).to(torch.int64)
            logits = self.session.prefill(tokens, lengths)
            name = "prefill_logits"
        else:
            logits = self.session.decode(tokens)
            name = "decode_logits"
        return OrderedDict([(name, logits.float().numpy().copy())])

    def deactivate_impl(self):
        self.session = None
