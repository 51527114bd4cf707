"""A Polygraphy runner over any plt_deploy Backend (the PyTorch reference, ONNX Runtime, ...).

Polygraphy runners are stateless per `infer`; decoding is not. `BackendRunner` keeps one decoder
session per activation and reads the phase from the feed: every feed has `input_ids` [B, S],
`lengths` [B] and `phase` [1]; phase 0 is a prefill of right-padded prompts, phase 1 one decode
step (S = 1, `lengths` unused). Feeding the same list of
feeds to every runner through `Comparator.run` therefore replays the same prefill + decode steps
on each backend.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from ..backends.base import Backend

# This runner's own feed names (it drives a Backend, which reads the export's tensor names from the
# manifest): not ONNX tensors.
FEED_NAMES = ("input_ids", "lengths", "phase")
PREFILL, DECODE = 0, 1


class BackendRunner(BaseRunner):
    def __init__(self, backend: Backend, batch: int, max_seq: int, name: str | None = None):
        super().__init__(name=name or backend.name, prefix="plt-backend")
        self.backend, self.batch, self.max_seq = backend, batch, max_seq
        self.session = None

    def activate_impl(self):
        self.session = self.backend.start(self.batch, self.max_seq)

    def get_input_metadata_impl(self, use_numpy_dtypes=None):
        meta = TensorMetadata()
        for name, shape in zip(FEED_NAMES, (("batch", "seq"), ("batch",), (1,))):
            meta.add(name, np.int64, shape)
        return meta

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        tokens = torch.from_numpy(np.ascontiguousarray(feed_dict["input_ids"])).to(torch.int64)
        if int(np.asarray(feed_dict["phase"]).reshape(-1)[0]) == PREFILL:
            lengths = torch.from_numpy(np.ascontiguousarray(feed_dict["lengths"])).to(torch.int64)
            logits = self.session.prefill(tokens, lengths)
            name = "prefill_logits"
        else:
            logits = self.session.decode(tokens.reshape(-1))
            name = "decode_logits"
        out = OrderedDict([(name, logits.float().numpy().copy())])
        self.inference_time = time.perf_counter() - start
        return out

    def deactivate_impl(self):
        self.session = None
