"""Weights streamed from a Hugging Face checkpoint's shards into a quantized export, one tensor at a time.

`export --model HF_FOLDER --weights int8|int4` must work for a 40B checkpoint (80 GB of bf16) on a
machine that cannot hold it in fp32, so the float model is never built:

    placeholder_model(cfg)      PLT whose large weights are stride-0 views of one zero (no memory)
    -> torch.onnx.export         traced without the optimizer, then optimize_ir told never to fold a
                                 node that reads a weight (the weights' values are not there)
    -> weight_references(...)    each weight initializer becomes an external-data reference that
                                 names it (no bytes): the ModelProto is the graph alone
    -> quantize_graph(read=...,  each linear weight read from its shard (pread), rounded, its int4/int8
         store=DataFile...)      blocks and scales written to `<graph>.onnx.data` at once (DataFile)
    -> fill_references(...)      the float weights that stay (norms, embeddings) read into that file
    -> save_onnx                 the graph alone (weights are references into the data file)

Peak memory: the graph without its weights plus one weight in fp32 and its temporaries (measured:
docs/bench.md). The plain path,
`exporter._trace` on the loaded model, is the reference: tests/test_stream_export.py checks both give
the same logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import PLTConfig
from ..errors import ArtifactError

REFERENCE = "plt-deploy:weight"  # the external-data location of a weight not read in yet


SMALL = 1 << 16  # weights up to this many elements are traced with their values (norms, gates): the
# optimizer then folds and deduplicates them exactly as on the plain path (it only touches small ones)


def placeholder_model(cfg: PLTConfig, reader: "ShardReader"):
    """A PLT of `cfg` for tracing: weights of more than SMALL elements are zero-stride views of one
    zero (the right shape and dtype, no memory), the small ones read in. Returns (model, names of
    the placeholders as the traced graph's initializers)."""
    from ..model import PLT, rope_tables

    with torch.device("meta"):
        model = PLT(cfg)
    dtype = getattr(torch, cfg.dtype)
    placeholders = set()
    for name, p in list(model.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        if p.numel() > SMALL:
            value = torch.zeros((), dtype=dtype).expand(p.shape)
            placeholders.add(reader.prefix + name)
        else:
            value = reader.tensor(reader.prefix + name)
        setattr(mod, leaf, torch.nn.Parameter(value, requires_grad=False))
    if cfg.tie_embeddings:  # one tensor; the traced graph may name it either way
        model.lm_head.weight = model.embed.weight
        if reader.prefix + "embed.weight" in placeholders:
            placeholders.add(reader.prefix + "lm_head.weight")
    model.rope_cos, model.rope_sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
    return model.eval(), placeholders


def weight_references(ir_model, weight_names: set[str]):
    """The traced ir.Model -> ModelProto whose weight initializers are references without bytes.

    Constant folding runs as the exporter's optimizer would, except on nodes that read a weight
    (folding a Transpose of a placeholder would bake zeros in)."""
    import onnx_ir as ir
    from onnxscript.optimizer import optimize_ir

    def should_fold(node):
        return False if any(v is not None and v.name in weight_names for v in node.inputs) else None

    optimize_ir(ir_model, should_fold=should_fold)
    for name, value in ir_model.graph.initializers.items():
        if name in weight_names:
            cv = value.const_value
            value.const_value = ir.ExternalTensor(REFERENCE, offset=0, length=cv.nbytes, dtype=cv.dtype,
                                                  shape=cv.shape, name=name, base_dir="")
    return ir.serde.serialize_model(ir_model)


def is_reference(init) -> bool:
    from onnx import TensorProto

    return init.data_location == TensorProto.EXTERNAL and \
        any(e.key == "location" and e.value == REFERENCE for e in init.external_data)


class ShardReader:
    """Initializer name (the traced wrapper's `model.<our name>`) -> the weight, read from its shard
    in the export's dtype each time it is asked for (hf.weight_readers, not memory-mapped)."""

    def __init__(self, model_dir: Path, cfg: PLTConfig, prefix: str = "model."):
        from ..hf import weight_readers

        self.readers = weight_readers(model_dir, cfg, mapped=False)
        if cfg.tie_embeddings:
            self.readers.setdefault("lm_head.weight", self.readers["embed.weight"])
        self.prefix = prefix

    def tensor(self, init_name: str) -> torch.Tensor:
        return self.readers[init_name.removeprefix(self.prefix)]()

    def float32(self, init) -> np.ndarray:
        """quantize_graph's `read`: the weight as the float export would hold it, in fp32."""
        if not is_reference(init):
            from .quantize import _to_float32

            return _to_float32(init)
        return self.tensor(init.name).float().numpy()


class DataFile:
    """A graph's external-data file (`<graph>.onnx.data`), written as the tensors are made: a tensor's
    bytes go to the file and the graph keeps only its reference, so the graph in memory never holds
    the weights (the whole quantized model would otherwise sit in memory until the save)."""

    ALIGN = 64  # every tensor starts at a multiple of this in the file
    INLINE = 1024  # tensors below this many bytes stay in the graph (as onnx.save_model's size_threshold)

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "wb")

    def write(self, tensor, data: bytes) -> None:
        """Point `tensor` at `data`, appended to the file."""
        from onnx import TensorProto

        self._f.write(b"\0" * (-self._f.tell() % self.ALIGN))
        offset = self._f.tell()
        self._f.write(data)
        del tensor.external_data[:]
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(len(data)))):
            tensor.external_data.add(key=key, value=value)
        tensor.data_location = TensorProto.EXTERNAL

    def store_into(self, graph):
        """quantize_graph's `store`: new initializers (bytes in raw_data) -> the file; graph keeps the rest."""
        def store(tensors):
            for t in tensors:
                if len(t.raw_data) >= self.INLINE:
                    self.write(t, t.raw_data)
                    t.ClearField("raw_data")
            graph.initializer.extend(tensors)
        return store

    def close(self) -> None:
        self._f.close()


def fill_references(model_proto, reader: ShardReader, data: DataFile) -> int:
    """Every weight still referenced (the float ones quantize_graph left: norms, embeddings) read from
    its shard into `data` (the small ones into the graph). Returns bytes read."""
    total = 0
    for init in model_proto.graph.initializer:
        if not is_reference(init):
            continue
        t = reader.tensor(init.name).contiguous()
        if list(t.shape) != list(init.dims):
            raise ArtifactError(f"weight {init.name}: shard holds {list(t.shape)}, the graph wants {list(init.dims)}")
        raw = t.view(torch.uint8).numpy().tobytes()
        if len(raw) >= data.INLINE:
            data.write(init, raw)
        else:
            from onnx import TensorProto

            del init.external_data[:]
            init.data_location = TensorProto.DEFAULT
            init.raw_data = raw
        total += len(raw)
    return total
