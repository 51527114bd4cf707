"""The G-SWA custom op in ONNX: schema, exporter translation, FunctionProto body, plugin attributes.

Names, domain, version, inputs, outputs and attributes all come from `plt_deploy.ops.contract`.

* `register_schema()` registers an ONNX schema for plt::GatedSlidingWindowAttention so the dynamo
  exporter can emit the bare node (it refuses unknown ops otherwise).
* `translation_table()` maps torch.ops.plt.gated_sliding_window_attention to that one node.
* `build_function(opset)` builds the model-local FunctionProto whose body computes the op in
  standard ONNX ops of `opset` (>= 18), mirroring `gswa_reference` line by line: fp32 math,
  masks, zero output for rows without a valid key, the per-head sigmoid gate. ONNX Runtime (and
  `onnx.reference`) inline it; TensorRT >= 10.7 uses the registered plugin instead because every
  node carries `plugin_namespace` / `plugin_version` (see `add_plugin_attributes`).
"""

from __future__ import annotations

import onnx
from onnx import FunctionProto, TensorProto, helper

from ..ops import contract

MIN_OPSET = 18  # ReduceMax/ReduceSum with axes as an input
PLUGIN_VERSION = str(contract.OP_VERSION)
_ATTR_TYPES = {"INT": onnx.defs.OpSchema.AttrType.INT, "FLOAT": onnx.defs.OpSchema.AttrType.FLOAT}
_FLOAT_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]


def register_schema() -> None:
    """Register the op's ONNX schema once per process (the exporter and checker need it)."""
    if onnx.defs.has(contract.OP_NAME, contract.OP_DOMAIN):
        return
    S = onnx.defs.OpSchema
    type_str = lambda t: "T" if t.dtype == "T" else f"tensor({t.dtype})"  # noqa: E731
    attrs = [S.Attribute(a.name, _ATTR_TYPES[a.type], a.doc, required=a.default is None) for a in contract.ATTRIBUTES]
    attrs += [S.Attribute("plugin_namespace", S.AttrType.STRING, "TensorRT plugin namespace", required=False),
              S.Attribute("plugin_version", S.AttrType.STRING, "TensorRT plugin version", required=False)]
    schema = S(contract.OP_NAME, contract.OP_DOMAIN, contract.OP_VERSION, doc=contract.__doc__ or "",
               inputs=[S.FormalParameter(t.name, type_str(t), t.doc) for t in contract.INPUTS],
               outputs=[S.FormalParameter(t.name, type_str(t), t.doc) for t in contract.OUTPUTS],
               type_constraints=[("T", _FLOAT_TYPES, "float type of all float inputs and the output")],
               attributes=attrs)
    onnx.defs.register_schema(schema)


def translation_table() -> dict:
    """custom_translation_table for torch.onnx.export: the torch op -> one plt node."""
    import torch
    from onnxscript import values

    from ..ops import gswa  # noqa: F401  (registers the torch op)

    register_schema()
    plt_opset = values.Opset(contract.OP_DOMAIN, contract.OP_VERSION)
    num_heads_of = {}

    def gswa_onnx(query, key_global, value_global, key_local, value_local, query_pos, local_pos,
                  gate_weight, gate_bias, window: int, scale: float):
        hq, hkv = query.shape[2], key_global.shape[1]
        if not (isinstance(hq, int) and isinstance(hkv, int)):
            raise RuntimeError("G-SWA export needs static head counts (dims 2 of query and 1 of key_global)")
        num_heads_of["last"] = hq
        return getattr(plt_opset, contract.OP_NAME)(
            query, key_global, value_global, key_local, value_local, query_pos, local_pos, gate_weight,
            gate_bias, window=int(window), scale=float(scale), num_heads=int(hq), num_kv_heads=int(hkv))

    return {torch.ops.plt.gated_sliding_window_attention.default: gswa_onnx}


def add_plugin_attributes(model: onnx.ModelProto) -> int:
    """Give every plt::GatedSlidingWindowAttention node plugin_namespace/plugin_version. Returns the count."""
    count = 0
    for graph in _graphs(model):
        for node in graph.node:
            if node.op_type == contract.OP_NAME and node.domain == contract.OP_DOMAIN:
                keep = [a for a in node.attribute if a.name not in ("plugin_namespace", "plugin_version")]
                del node.attribute[:]
                node.attribute.extend(keep)
                node.attribute.extend([helper.make_attribute("plugin_namespace", contract.PLUGIN_NAMESPACE),
                                       helper.make_attribute("plugin_version", PLUGIN_VERSION)])
                count += 1
    return count


def _graphs(model: onnx.ModelProto):
    yield model.graph
    for f in model.functions:
        yield f


def attach_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add (or replace) the model-local FunctionProto and the plt opset import."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    keep = [f for f in model.functions if not (f.name == contract.OP_NAME and f.domain == contract.OP_DOMAIN)]
    del model.functions[:]
    model.functions.extend([*keep, build_function(opset)])
    if not any(o.domain == contract.OP_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(contract.OP_DOMAIN, contract.OP_VERSION))
    return model


def build_function(opset: int) -> FunctionProto:
    """The op's body in standard ONNX ops of `opset`; mirrors gswa_reference step by step."""
    if opset < MIN_OPSET:
        raise ValueError(f"the G-SWA function body needs opset >= {MIN_OPSET}, got {opset}")
    b = _Body()
    (query, key_g, value_g, key_l, value_l, query_pos, local_pos, gate_w, gate_b) = (t.name for t in contract.INPUTS)
    out_name = contract.OUTPUTS[0].name
    F = TensorProto.FLOAT
    q, kg, vg, kl, vl, gw, gb = (b.node("Cast", [x], to=F) for x in (query, key_g, value_g, key_l, value_l,
                                                                      gate_w, gate_b))
    window = b.node("Constant", [], value_int=_ref("window", onnx.AttributeProto.INT))  # int64 scalar
    scale = b.node("Constant", [], value_float=_ref("scale", onnx.AttributeProto.FLOAT))  # float scalar
    zero_f, one_f = b.const(0.0, F), b.const(1.0, F)
    neg_inf = b.const(float("-inf"), F)
    zero_i, one_i, minus1 = b.const(0, TensorProto.INT64), b.const(1, TensorProto.INT64), b.ints([-1])

    # Grouped-query heads without copying K/V: view q as [B, R, Hkv, n_rep, S, D] and broadcast K/V.
    q_shape = b.node("Shape", [query])  # [B, R, Hq, S, D]
    hkv = b.node("Shape", [key_global_name := key_g], start=1, end=2)  # [Hkv]
    q6_shape = b.node("Concat", [b.node("Shape", [query], start=0, end=2), hkv, minus1,
                                 b.node("Shape", [query], start=3, end=5)], axis=0)
    q6 = b.node("Reshape", [q, q6_shape])  # [B, R, Hkv, n_rep, S, D]
    q6s = b.node("Mul", [q6, scale])  # scaled once for both score matmuls
    perm = [0, 1, 2, 3, 5, 4]

    def masked_softmax_attention(scores, valid, values):
        """softmax over the valid keys; rows without one are 0 (as ops/gswa.py).

        The bias and the any-valid flag depend on positions only, so ONNX Runtime's common
        subexpression elimination shares them between layers; per layer this is 4 nodes. A row
        without a valid key is all -inf, which Softmax turns into NaN: the Where replaces it by 0.
        """
        bias = b.node("Where", [valid, zero_f, neg_inf])
        any_valid = b.node("Greater", [b.node("ReduceMax", [b.node("Cast", [valid], to=F), minus1], keepdims=1),
                                       zero_f])
        p = b.node("Softmax", [b.node("Add", [scores, bias])], axis=-1)
        return b.node("Where", [any_valid, b.node("MatMul", [p, values]), zero_f])

    # Global part: causal over the shared cache, slot j = position j.
    kg6 = b.node("Unsqueeze", [kg, b.ints([1, 3])])  # [B, 1, Hkv, 1, T, D]
    vg6 = b.node("Unsqueeze", [vg, b.ints([1, 3])])
    scores_g = b.node("MatMul", [q6s, b.node("Transpose", [kg6], perm=perm)])  # [B, R, Hkv, n_rep, S, T]
    t_len = b.node("Squeeze", [b.node("Shape", [key_global_name], start=2, end=3), b.ints([0])])
    slots = b.node("Range", [zero_i, t_len, one_i])  # [T]
    qpos6 = b.node("Unsqueeze", [query_pos, b.ints([1, 2, 3, 5])])  # [B, 1, 1, 1, S, 1]
    valid_g = b.node("LessOrEqual", [slots, qpos6])  # [B, 1, 1, 1, S, T]
    y_global = masked_softmax_attention(scores_g, valid_g, vg6)  # [B, R, Hkv, n_rep, S, D]

    # Local part: own keys inside the window (t - w, t], empty slots hold -1.
    kl6 = b.node("Unsqueeze", [kl, b.ints([3])])  # [B, R, Hkv, 1, W, D]
    vl6 = b.node("Unsqueeze", [vl, b.ints([3])])
    scores_l = b.node("MatMul", [q6s, b.node("Transpose", [kl6], perm=perm)])  # [B, R, Hkv, n_rep, S, W]
    lpos6 = b.node("Unsqueeze", [local_pos, b.ints([1, 2, 3, 4])])  # [B, 1, 1, 1, 1, W]
    valid_l = b.node("And", [b.node("And", [b.node("GreaterOrEqual", [lpos6, zero_i]),
                                             b.node("LessOrEqual", [lpos6, qpos6])]),
                             b.node("Greater", [lpos6, b.node("Sub", [qpos6, window])])])  # [B, 1, 1, 1, S, W]
    y_local = masked_softmax_attention(scores_l, valid_l, vl6)

    # Gate: sigmoid(q . gate_weight[h] + gate_bias[h]) per head and token.
    gw4 = b.node("Unsqueeze", [b.node("Reshape", [gw, b.node("Concat", [hkv, minus1, b.node("Shape", [gate_w],
                                                                                            start=1, end=2)],
                                                             axis=0)]), minus1])  # [Hkv, n_rep, D, 1]
    gb4 = b.node("Reshape", [gb, b.node("Concat", [hkv, b.ints([-1, 1, 1])], axis=0)])  # [Hkv, n_rep, 1, 1]
    g = b.node("Sigmoid", [b.node("Add", [b.node("MatMul", [q6, gw4]), gb4])])  # [B, R, Hkv, n_rep, S, 1]
    y = b.node("Add", [b.node("Mul", [g, y_local]), b.node("Mul", [b.node("Sub", [one_f, g]), y_global])])
    y5 = b.node("Reshape", [y, q_shape])  # [B, R, Hq, S, D]
    b.node("CastLike", [y5, query], out=out_name)

    required = [a.name for a in contract.ATTRIBUTES if a.default is None]
    optional = [helper.make_attribute(a.name, a.default) for a in contract.ATTRIBUTES if a.default is not None]
    optional += [helper.make_attribute("plugin_namespace", contract.PLUGIN_NAMESPACE),
                 helper.make_attribute("plugin_version", PLUGIN_VERSION)]
    fn = helper.make_function(contract.OP_DOMAIN, contract.OP_NAME, [t.name for t in contract.INPUTS], [out_name],
                              b.nodes, [helper.make_opsetid("", opset)], attributes=required,
                              attribute_protos=optional,
                              doc_string="G-SWA over a shared cache; see plt_deploy/ops/contract.py")
    return fn


def _ref(name: str, attr_type: int) -> onnx.AttributeProto:
    a = onnx.AttributeProto()
    a.name = "value_int" if attr_type == onnx.AttributeProto.INT else "value_float"
    a.ref_attr_name = name
    a.type = attr_type
    return a


class _Body:
    """Tiny node builder: every node gets a fresh output name."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self._n = 0

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        self._n += 1
        out = out or f"_{op.lower()}_{self._n}"
        refs = {k: v for k, v in attrs.items() if isinstance(v, onnx.AttributeProto)}
        plain = {k: v for k, v in attrs.items() if k not in refs}
        node = helper.make_node(op, inputs, [out], name=f"{op}_{self._n}", **plain)
        for k, v in refs.items():
            node.attribute.append(v)
        self.nodes.append(node)
        return out

    def const(self, value, dtype: int) -> str:
        return self.node("Constant", [], value=helper.make_tensor("v", dtype, [], [value]))

    def ints(self, values: list[int]) -> str:
        return self.node("Constant", [], value=helper.make_tensor("v", TensorProto.INT64, [len(values)], values))
