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

import json

import onnx
from onnx import FunctionProto, TensorProto, helper

from ..ops import contract, kv_update

MIN_OPSET = 23  # ONNX's standard Attention (grouped-query heads, boolean mask)
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
    """custom_translation_table for torch.onnx.export: each torch op -> one node.

    plt::gated_sliding_window_attention -> one plt node (its function attached afterwards);
    plt::causal_attention -> one standard `Attention` (opset 23), the same node for vanilla's,
    looped's and PLT loop 1's causal attention so that their costs compare fairly;
    plt::kv_cache_update -> one standard `TensorScatter` (opset 24, linear, axis -2): every cache write.
    """
    import torch
    from onnxscript import opset23, values

    from ..ops import gswa  # noqa: F401  (registers the torch ops)

    register_schema()
    plt_opset = values.Opset(contract.OP_DOMAIN, contract.OP_VERSION)

    def gswa_onnx(query, key_global, value_global, key_local, value_local, query_pos, local_pos,
                  gate_weight, gate_bias, window: int, scale: float, global_rows: int):
        hq, hkv = query.shape[2], key_global.shape[1]
        if not (isinstance(hq, int) and isinstance(hkv, int)):
            raise RuntimeError("G-SWA export needs static head counts (dims 2 of query and 1 of key_global)")
        return getattr(plt_opset, contract.OP_NAME)(
            query, key_global, value_global, key_local, value_local, query_pos, local_pos, gate_weight,
            gate_bias, window=int(window), scale=float(scale), num_heads=int(hq), num_kv_heads=int(hkv),
            global_rows=int(global_rows))

    def attention_onnx(query, key, value, mask, scale: float):
        return opset23.Attention(query, key, value, mask, scale=float(scale))[0]  # extra outputs trimmed later

    kv_opset = values.Opset("", kv_update.ONNX_OPSET)  # onnxscript 0.7 has no opset24 module; the schema is onnx's

    def kv_update_onnx(cache, update, write_indices):
        return getattr(kv_opset, kv_update.ONNX_OP)(cache, update, write_indices, axis=kv_update.AXIS,
                                                   mode=kv_update.MODE)

    return {torch.ops.plt.gated_sliding_window_attention.default: gswa_onnx,
            torch.ops.plt.causal_attention.default: attention_onnx,
            torch.ops.plt.kv_cache_update.default: kv_update_onnx}


def trim_attention_outputs(model: onnx.ModelProto) -> int:
    """Drop the unused optional outputs (present_key, present_value, qk) of every Attention node.

    The exporter declares all four; an unused present_key would still be computed (a copy of the
    cache) by some runtimes. Returns how many nodes were trimmed.
    """
    used = {i for g in _graphs(model) for n in g.node for i in n.input} | {o.name for o in model.graph.output}
    count = 0
    for graph in _graphs(model):
        for node in graph.node:
            if node.op_type == "Attention" and node.domain in ("", "ai.onnx") and len(node.output) > 1:
                keep = len(node.output)
                while keep > 1 and node.output[keep - 1] not in used:
                    keep -= 1
                if keep < len(node.output):
                    del node.output[keep:]
                    count += 1
    return count


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


def attach_function(model: onnx.ModelProto, static: dict[str, int] | None = None) -> onnx.ModelProto:
    """Add (or replace) the model-local FunctionProto and the plt opset import.

    static: dims every call site of this model has fixed (see build_function), e.g. the decode
    graph's {"R": L, "S": 1, "D": head_dim, "W": ring_len}; they become constants in the body.
    """
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    keep = [f for f in model.functions if not (f.name == contract.OP_NAME and f.domain == contract.OP_DOMAIN)]
    del model.functions[:]
    model.functions.extend([*keep, build_function(opset, static)])
    if not any(o.domain == contract.OP_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(contract.OP_DOMAIN, contract.OP_VERSION))
    return model


def build_function(opset: int, static: dict[str, int] | None = None) -> FunctionProto:
    """The op's body in standard ONNX ops of `opset` (>= 23): two `Attention` nodes and the gate.

    Layout: the R rows are folded into the query axis, q [B, Hq, R*S, D] (row-major in r, s), so
    ONE Attention reads every shared K/V slot once for all rows and all query heads of its KV group
    (GQA by Attention's own head grouping). The local part is ONE Attention over the R-G rows' own
    keys laid side by side, k [B, Hkv, (R-G)*W, D], with a block-diagonal mask: query row r sees
    only block r - G, inside its window; rows r < G see no local key. Attention gives 0 for a query
    whose keys are all masked (the ONNX reference and ONNX Runtime do; test_onnx_function checks
    it), which is exactly the contract's "0 if no key is valid". The gate of rows r < G is closed
    by a -inf bias, so they come out as y_global.

    static: dims known for every call site ("R", "S", "D", "W", "Hkv", and "G", the global_rows of
    every node), used as constants instead of
    Shape nodes (ONNX Runtime folds neither Shape slices of partly dynamic tensors nor masks
    built from them). With S == 1 and opset >= 24 the global part needs no mask at all: query
    t sees slots 0..t, i.e. Attention's nonpad_kv_seqlen = t + 1 per sequence. Everything else
    that depends on positions only is then identical in every layer, and ONNX Runtime's common
    subexpression elimination computes it once per step.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"the G-SWA function body needs opset >= {MIN_OPSET} (ONNX Attention), got {opset}")
    static = dict(static or {})
    if "R" in static and "G" in static:
        static["RL"] = static["R"] - static["G"]
    b = _Body()
    (query, key_g, value_g, key_l, value_l, query_pos, local_pos, gate_w, gate_b) = (t.name for t in contract.INPUTS)
    out_name = contract.OUTPUTS[0].name
    F, I64 = TensorProto.FLOAT, TensorProto.INT64
    q, kg, vg, kl, vl, gw, gb = (b.node("Cast", [x], to=F) for x in (query, key_g, value_g, key_l, value_l,
                                                                      gate_w, gate_b))
    window = b.node("Constant", [], value_int=_ref("window", onnx.AttributeProto.INT))  # int64 scalar
    g_rows = b.node("Constant", [], value_int=_ref("global_rows", onnx.AttributeProto.INT))  # int64 scalar G
    zero_i, one_i = b.const(0, I64), b.const(1, I64)
    zero_f, neg_inf = b.const(0.0, F), b.const(float("-inf"), F)

    def dim(name: str, x: str, i: int) -> str:  # [1] int64
        return b.ints([static[name]]) if name in static else b.node("Shape", [x], start=i, end=i + 1)

    def scalar(x: str) -> str:
        return b.node("Squeeze", [x, b.ints([0])])

    R, S, D, W = dim("R", query, 1), dim("S", query, 3), dim("D", query, 4), dim("W", key_l, 3)
    RL = dim("RL", key_l, 1)  # R - G
    RS = b.node("Mul", [R, S])

    # Queries of all rows, folded into the query axis: [B, Hq, R*S, D]. With S == 1 a Squeeze and a
    # 4-D Transpose, which ONNX Runtime cancels against the model's own head transposes.
    one_query = static.get("S") == 1
    if one_query:
        qg = b.node("Transpose", [b.node("Squeeze", [q, b.ints([3])])], perm=[0, 2, 1, 3])
    else:
        qg = b.node("Reshape", [b.node("Transpose", [q], perm=[0, 2, 1, 3, 4]),
                                b.node("Concat", [b.ints([0, 0]), RS, D], axis=0)])

    # Position-only masks, the same in every layer.
    t = b.node("Unsqueeze", [query_pos, b.ints([2])])  # [B, S, 1]
    p = b.node("Unsqueeze", [local_pos, b.ints([1])])  # [B, 1, W]
    valid_l = b.node("And", [b.node("And", [b.node("GreaterOrEqual", [p, zero_i]), b.node("LessOrEqual", [p, t])]),
                             b.node("Greater", [p, b.node("Sub", [t, window])])])  # [B, S, W]
    block = b.node("Equal", [b.node("Unsqueeze", [b.node("Range", [zero_i, scalar(R), one_i]), b.ints([1])]),
                             b.node("Add", [b.node("Range", [zero_i, scalar(RL), one_i]), g_rows])])  # [R, R-G]
    mask_l = b.node("And", [b.node("Unsqueeze", [block, b.ints([0, 2, 4])]),  # [1, R, 1, R-G, 1]
                            b.node("Unsqueeze", [valid_l, b.ints([1, 3])])])  # [B, 1, S, 1, W]
    mask_l = b.node("Reshape", [mask_l, b.node("Concat", [b.ints([0, 1]), RS, b.node("Mul", [RL, W])], axis=0)])
    row = b.node("Div", [b.node("Range", [zero_i, scalar(RS), one_i]), scalar(S)])  # [R*S] row of each query
    row_bias = b.node("Unsqueeze", [b.node("Where", [b.node("Less", [row, g_rows]), neg_inf, zero_f]),
                                    b.ints([1])])  # [R*S, 1]: -inf closes the gate of rows < G

    # Global: one Attention over the shared cache for all rows -> [B, Hq, R*S, D].
    scale = _ref("scale", onnx.AttributeProto.FLOAT)
    if static.get("S") == 1 and opset >= 24:  # one query per sequence: keys 0..t, no mask
        seen = b.node("Add", [b.node("Squeeze", [query_pos, b.ints([1])]), one_i])  # [B] = t + 1
        # Every row sees the same keys, so the G = Hq/Hkv query heads of a KV head and the R rows go
        # into one query axis, [B, Hkv, G*R, D]: ONNX Runtime's kernel then reads each K/V slot once
        # per KV head for all of them (not once per query head: bench/micro.py attention, 0.86x time
        # at T 2080, 0.76x at T 160 for R = 2 on the CPU).
        grouped = b.node("Reshape", [qg, b.node("Concat", [b.ints([0]), dim("Hkv", key_g, 1), b.ints([-1]), D],
                                                 axis=0)])
        y_g = b.node("Reshape", [b.node("Attention", [grouped, kg, vg, "", "", "", seen], scale=scale),
                                 b.node("Concat", [b.ints([0, -1]), R, D], axis=0)])  # [B, Hq, R, D]
    else:
        slots = b.node("Range", [zero_i, scalar(b.node("Shape", [key_g], start=2, end=3)), one_i])  # [T]
        valid_g = b.node("Unsqueeze", [b.node("LessOrEqual", [slots, t]), b.ints([1])])  # [B, 1, S, T]
        mask_g = b.node("Tile", [valid_g, b.node("Concat", [b.ints([1, 1]), R, b.ints([1])], axis=0)])
        y_g = b.node("Attention", [qg, kg, vg, mask_g], scale=scale)  # mask [B, 1, R*S, T]
    # Local: the R-G rows' rings side by side, [B, Hkv, (R-G)*W, D], block-diagonal mask.
    if static.get("RL") == 1:  # one local row: its ring is already [B, Hkv, W, D]
        kls, vls = (b.node("Squeeze", [x, b.ints([1])]) for x in (kl, vl))
    else:
        side = b.node("Concat", [b.ints([0, 0, -1]), D], axis=0)
        kls, vls = (b.node("Reshape", [b.node("Transpose", [x], perm=[0, 2, 1, 3, 4]), side]) for x in (kl, vl))
    y_l = b.node("Attention", [qg, kls, vls, mask_l], scale=scale)

    # Gate: sigmoid(q . gate_weight[h] + gate_bias[h]) per head and query row; 0 for rows < G.
    gw3 = b.node("Unsqueeze", [gw, b.ints([-1])])  # [Hq, D, 1]
    gb3 = b.node("Add", [b.node("Unsqueeze", [gb, b.ints([1, 2])]), row_bias])  # [Hq, R*S, 1]
    g = b.node("Sigmoid", [b.node("Add", [b.node("MatMul", [qg, gw3]), gb3])])  # [B, Hq, R*S, 1]
    y = b.node("Add", [y_g, b.node("Mul", [g, b.node("Sub", [y_l, y_g])])])  # y_g + g (y_l - y_g)

    # Back to [B, R, Hq, S, D].
    if one_query:
        y5 = b.node("Unsqueeze", [b.node("Transpose", [y], perm=[0, 2, 1, 3]), b.ints([3])])
    else:
        y5 = b.node("Transpose", [b.node("Reshape", [y, b.node("Concat", [b.ints([0, 0]), R, S, D], axis=0)])],
                    perm=[0, 2, 1, 3, 4])  # [B, Hq, R, S, D] -> [B, R, Hq, S, D]
    b.node("CastLike", [y5, query], out=out_name)

    required = [a.name for a in contract.ATTRIBUTES if a.default is None]
    optional = [helper.make_attribute(a.name, a.default) for a in contract.ATTRIBUTES if a.default is not None]
    optional += [helper.make_attribute("plugin_namespace", contract.PLUGIN_NAMESPACE),
                 helper.make_attribute("plugin_version", PLUGIN_VERSION)]
    doc = "G-SWA v2 over a shared cache; see plt_deploy/ops/contract.py"
    if static:
        doc += f". Specialised to this model's static dims {json.dumps(static, sort_keys=True)}"
    fn = helper.make_function(contract.OP_DOMAIN, contract.OP_NAME, [t.name for t in contract.INPUTS], [out_name],
                              b.nodes, [helper.make_opsetid("", opset)], attributes=required,
                              attribute_protos=optional, doc_string=doc)
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
            ref = onnx.AttributeProto()
            ref.CopyFrom(v)
            ref.name = k  # the node's attribute name; ref_attr_name is the function attribute it reads
            node.attribute.append(ref)
        self.nodes.append(node)
        return out

    def const(self, value, dtype: int) -> str:
        return self.node("Constant", [], value=helper.make_tensor("v", dtype, [], [value]))

    def ints(self, values: list[int]) -> str:
        return self.node("Constant", [], value=helper.make_tensor("v", TensorProto.INT64, [len(values)], values))
