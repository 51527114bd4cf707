"""The graph-level reference of a bfloat16 export: the same ONNX graph computed in float32 on ONNX Runtime.

Two things stop a bf16 graph at Polygraphy's graph level (check/trt.py):
  - Polygraphy's input check and TrtRunner's output views reject numpy `ml_dtypes.bfloat16` arrays;
    they accept torch tensors, so bf16 feeds are torch.bfloat16 tensors (TrtRunner then returns torch
    tensors, which check.compare reads);
  - ONNX Runtime's CPU provider has no bf16 kernels (not even Add), so OnnxrtRunner cannot run the graph.

So the reference runs a float32 copy of the graph: every bf16 tensor type, initializer, constant and
Cast target (graph, subgraphs and model-local functions such as G-SWA's) becomes float32. Inputs are
bf16 values, exact in float32; the copy skips the graph's intermediate bf16 roundings, which is what a
reference should do (TensorRT is then judged with the bf16 tolerance). `Bf16ReferenceRunner` takes the
torch.bfloat16 feeds the engines get and hands ONNX Runtime float32 arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
from polygraphy.datatype import DataType

BF16, F32 = TensorProto.BFLOAT16, TensorProto.FLOAT


def _tensor(t: TensorProto) -> TensorProto:
    """A bf16 TensorProto as float32 (values exact), others unchanged."""
    if t.data_type != BF16:
        return t
    out = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)
    out.doc_string = t.doc_string
    return out


def _value_infos(values) -> None:
    for v in values:
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type == BF16:
            v.type.tensor_type.elem_type = F32


def _nodes(nodes) -> None:
    for n in nodes:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == BF16:
                a.i = F32
            elif a.type == onnx.AttributeProto.TENSOR:
                a.t.CopyFrom(_tensor(a.t))
            elif a.type == onnx.AttributeProto.GRAPH:
                _graph(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    _graph(g)


def _graph(g: onnx.GraphProto) -> None:
    converted = [_tensor(t) for t in g.initializer]
    del g.initializer[:]
    g.initializer.extend(converted)
    _value_infos([*g.input, *g.output, *g.value_info])
    _nodes(g.node)


def upcast_bf16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 copy of `model` (external data must be loaded): no BFLOAT16 anywhere."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _graph(out.graph)
    for f in out.functions:
        _nodes(f.node)
        _value_infos(f.value_info)
    return out


def bf16_inputs(model: onnx.ModelProto) -> set[str]:
    return {v.name for v in model.graph.input if v.type.tensor_type.elem_type == BF16}


class Bf16ReferenceRunner(OnnxrtRunner):
    """OnnxrtRunner on the float32 copy of a bf16 graph; takes the engines' feeds (torch.bfloat16 for
    bf16 inputs), reports those inputs as BFLOAT16, returns float32 numpy outputs."""

    def __init__(self, path: str | Path, name: str | None = None):
        model = onnx.load(str(path))  # with its external data, if any
        self._bf16 = bf16_inputs(model)
        super().__init__(SessionFromOnnx(upcast_bf16(model).SerializeToString(), providers=["CPUExecutionProvider"]),
                         name=name)

    def get_input_metadata_impl(self):
        meta = super().get_input_metadata_impl()
        for name in self._bf16:
            meta[name].dtype = DataType.BFLOAT16
        return meta

    def infer_impl(self, feed_dict):
        return super().infer_impl({k: _numpy(v) for k, v in feed_dict.items()})  # numpy in -> numpy out


def _numpy(x) -> np.ndarray:
    """torch.bfloat16 -> float32 numpy (exact); other torch tensors and arrays -> numpy as they are."""
    if hasattr(x, "detach"):
        import torch

        return (x.float() if x.dtype == torch.bfloat16 else x).detach().cpu().numpy()
    return np.asarray(x)
