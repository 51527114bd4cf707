"""Weight-only quantization of an exported graph: linear weights stored as int8/int4 with per-block scales.

A pass over the traced ONNX graph (before it is saved): every MatMul whose right operand is a
constant 2-D weight [K, N] (attention q/k/v/o, MLP, and the lm_head Gemm, rewritten as a MatMul)
gets that operand from

    DequantizeLinear(q [K, N] int8|int4, scale [K/block, N], axis=0, block_size=block) -> MatMul

with symmetric round-to-nearest scales (no zero point: TensorRT's IDequantizeLayer only takes zero
zero-points). ONNX Runtime's CPU provider fuses that pair into its MatMulNBits kernel (checked by
tests/test_quantize.py on the optimized graph); TensorRT imports it as weight-only block
quantization. Everything else stays in the float type: norms, the G-SWA gate, RoPE tables, the
G-SWA node's inputs, activations, caches; the embedding table too unless `embeddings` is set
(then its Gather reads DequantizeLinear(axis=1) of the table, which no runtime fuses: a size
saving, not a speed one). How the caches are written does not matter to this pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from ..errors import ArtifactError, InputError

FLOAT_WEIGHTS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
INT_WEIGHTS = {"int8": (8, 127), "int4": (4, 7)}  # bits, largest |q| (symmetric: q in [-qmax, qmax])
WEIGHT_CHOICES = (*FLOAT_WEIGHTS, *INT_WEIGHTS)
BLOCK_SIZES = (16, 32, 64, 128)  # MatMulNBits needs a power of two >= 16
DEFAULT_BLOCK = 32
METHODS = ("rtn",)  # round to nearest, scale = max|w| / qmax per block
QUANT_OPS = ("DequantizeLinear", "MatMulNBits", "GatherBlockQuantized")


@dataclass(frozen=True)
class WeightSpec:
    """What `export --weights int8|int4` asked for; `to_manifest` is the manifest's `weights` entry."""

    format: str  # int8 | int4
    block_size: int = DEFAULT_BLOCK
    method: str = "rtn"
    embeddings: bool = False  # also quantize the embedding table (Gather; not fused by any runtime)
    auto_block: bool = False  # --block-size not given: check_quantizable may pick a smaller one that fits

    @property
    def bits(self) -> int:
        return INT_WEIGHTS[self.format][0]

    @property
    def qmax(self) -> int:
        return INT_WEIGHTS[self.format][1]

    def to_manifest(self, tensors: dict[str, int]) -> dict:
        spec = {k: v for k, v in asdict(self).items() if k != "auto_block"}  # how it was asked: not recorded
        return {**spec, "symmetric": True, "axis": "K (input features), blocks of block_size",
                "layout": "DequantizeLinear(q, scale, axis=0, block_size) -> MatMul",
                "runtimes": {"onnxruntime": "fused into com.microsoft MatMulNBits at session creation",
                             "tensorrt": "weight-only block quantization (IDequantizeLayer, zero zero-point)"},
                "quantized_tensors": tensors}


def parse_weights(weights: str | None, dtype: str | None, block_size: int | None, method: str | None,
                  embeddings: bool = False) -> tuple[str | None, WeightSpec | None]:
    """--weights/--dtype/--block-size/--quant-method -> (float dtype or None, WeightSpec or None).

    A float --weights is the float dtype (same as --dtype); an int one keeps --dtype for activations."""
    if weights is not None and weights not in WEIGHT_CHOICES:
        raise InputError(f"--weights {weights!r}: choose from {', '.join(WEIGHT_CHOICES)}")
    if method is not None and method not in METHODS:
        raise InputError(f"--quant-method {method!r} is unknown; this plt-deploy implements {', '.join(METHODS)}")
    if block_size is not None and block_size not in BLOCK_SIZES:
        raise InputError(f"--block-size {block_size}: choose from {', '.join(map(str, BLOCK_SIZES))}")
    if weights in FLOAT_WEIGHTS:
        want = FLOAT_WEIGHTS[weights]
        if dtype is not None and dtype != want:
            raise InputError(f"--weights {weights} stores {want} weights but --dtype is {dtype}; give one of them")
        if block_size is not None or method is not None or embeddings:
            raise InputError(f"--block-size, --quant-method and --quantize-embeddings apply to --weights int8|int4, "
                             f"not {weights}")
        return want, None
    if weights is None:
        if block_size is not None or method is not None or embeddings:
            raise InputError("--block-size, --quant-method and --quantize-embeddings need --weights int8|int4")
        return dtype, None
    return dtype, WeightSpec(weights, block_size or DEFAULT_BLOCK, method or METHODS[0], embeddings,
                             auto_block=block_size is None)


def check_quantizable(cfg, spec: WeightSpec, log=None) -> WeightSpec:
    """The spec to use for `cfg`; InputError if a linear layer's input size is not a multiple of the
    block size (before any tracing). A default block size (--block-size not given) that does not fit
    becomes the largest smaller one that does, with a note to `log`."""
    sizes = {"d_model": cfg.d_model, "n_heads * head_dim": cfg.n_heads * cfg.head_dim,
             "mlp_hidden": cfg.mlp_hidden}
    fits = [b for b in BLOCK_SIZES if all(v % b == 0 for v in sizes.values())]
    smaller = [b for b in fits if b < spec.block_size]
    if spec.auto_block and spec.block_size not in fits and smaller:
        name, k = next((n, v) for n, v in sizes.items() if v % spec.block_size)
        if log is not None:
            log(f"note: --block-size {max(smaller)}: the default {spec.block_size} does not divide the model's "
                f"{name} = {k}")
        return replace(spec, block_size=max(smaller))
    for name, k in sizes.items():
        if k % spec.block_size:
            advice = f"use --block-size {' or '.join(map(str, fits))}" if fits else \
                f"no block size of {', '.join(map(str, BLOCK_SIZES))} divides every input size {sorted(sizes.values())}"
            raise InputError(f"--weights {spec.format} --block-size {spec.block_size}: the model's {name} = {k} is "
                             f"not a multiple of the block size; {advice}")
    return spec


def rtn(w: np.ndarray, block: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest, symmetric, blocks along axis 0: w [K, N] -> q [K, N] int8, scale [K/block, N] fp32."""
    K, N = w.shape
    blocks = w.astype(np.float32).reshape(K // block, block, N)  # [K/block, block, N]
    scale = np.abs(blocks).max(axis=1) / qmax  # [K/block, N]
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # TensorRT wants strictly positive scales
    q = np.clip(np.rint(blocks / scale[:, None, :]), -qmax, qmax).astype(np.int8)
    return q.reshape(K, N), scale


def dequantize(q: np.ndarray, scale: np.ndarray, block: int) -> np.ndarray:
    """The plain reference of DequantizeLinear(axis=0, block_size=block): [K, N] fp32."""
    return q.astype(np.float32) * np.repeat(scale, block, axis=0)


def _pack_int4(q: np.ndarray) -> bytes:
    """ONNX INT4 raw data: two values per byte, the first in the low nibble (two's complement)."""
    flat = q.reshape(-1).astype(np.uint8) & 0x0F
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()


def _q_tensor(name: str, q: np.ndarray, bits: int):
    from onnx import TensorProto, helper

    if bits == 4:
        return helper.make_tensor(name, TensorProto.INT4, q.shape, _pack_int4(q), raw=True)
    return helper.make_tensor(name, TensorProto.INT8, q.shape, q.tobytes(), raw=True)


def _scale_tensor(name: str, scale: np.ndarray, elem_type: int):
    from onnx import helper, numpy_helper

    import ml_dtypes

    np_type = {1: np.float32, 10: np.float16, 16: ml_dtypes.bfloat16}[elem_type]
    t = numpy_helper.from_array(scale.astype(np_type), name)
    return t if t.data_type == elem_type else helper.make_tensor(name, elem_type, scale.shape,
                                                                 scale.astype(np_type).tobytes(), raw=True)


def _to_float32(init) -> np.ndarray:
    from onnx import numpy_helper

    return np.asarray(numpy_helper.to_array(init)).astype(np.float32)


def refuse_quantized(model_proto, where: str) -> None:
    """InputError if the graph already holds quantized weights (quantizing twice compounds the error)."""
    for node in model_proto.graph.node:
        if node.op_type in QUANT_OPS:
            raise InputError(f"{where}: already holds quantized weights ({node.op_type} node {node.name!r}); "
                             "quantize from the float checkpoint, not from a quantized export")


def quantize_graph(model_proto, spec: WeightSpec, where: str = "graph", tokens: str = "input_ids",
                   read=None, store=None) -> int:
    """Rewrite `model_proto` in place (see the module docstring). Returns how many weights were quantized.
    `tokens`: the graph input holding token ids (io_spec role "tokens"): the embedding Gather reads it.
    `read(initializer) -> fp32 array`: where the weights' values come from (default: the initializer's
    own data; export/stream.py passes a reader of the checkpoint's shards, one tensor at a time).
    `store(list of TensorProto)`: puts the new initializers into the graph as they are made (default:
    appended with their bytes; export/stream.py writes the bytes to the external-data file first).

    A weight read by several MatMuls (a looped prefill's loops share them) gets one quantized copy per
    reader: ONNX Runtime 1.32 fuses DequantizeLinear -> MatMul only when the DequantizeLinear's
    initializers have no other reader (checked: a shared copy stays unfused, dequantized every run).
    """
    from onnx import helper

    refuse_quantized(model_proto, where)
    read = read or _to_float32
    graph = model_proto.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    new_nodes = []
    store = store or graph.initializer.extend  # each quantized tensor goes in as made: no second copy of all

    def const_weight(name: str) -> tuple[str, bool] | None:
        """A 2-D float initializer feeding as [K, N], directly or through Transpose(perm=[1, 0])."""
        if name in inits and len(inits[name].dims) == 2 and inits[name].data_type in (1, 10, 16):
            return name, False
        node = producer.get(name)
        if node is not None and node.op_type == "Transpose" and node.input[0] in inits:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
            src = inits[node.input[0]]
            if perm == [1, 0] and len(src.dims) == 2 and src.data_type in (1, 10, 16):
                return node.input[0], True
        return None

    count = 0
    for node in list(graph.node):
        weight, transposed = None, False
        if node.op_type == "MatMul":
            found = const_weight(node.input[1])
            if found:
                weight, transposed = found
        elif node.op_type == "Gemm" and len(node.input) == 2 and node.input[1] in inits:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and len(inits[node.input[1]].dims) == 2:
                weight, transposed = node.input[1], bool(attrs.get("transB", 0))
        if weight is None:
            new_nodes.append(node)
            continue
        w = read(inits[weight])
        wk = w.T if transposed else w  # [K, N]
        if wk.shape[0] % spec.block_size:
            raise InputError(f"{where}: weight {weight} has {wk.shape[0]} input features, not a multiple of "
                             f"--block-size {spec.block_size}")
        q, scale = rtn(wk, spec.block_size, spec.qmax)
        base = f"{node.name or node.output[0]}.weight"
        q_name, s_name, dq_out = f"{base}.q{spec.bits}", f"{base}.scale", f"{base}.dq"
        store([_q_tensor(q_name, q, spec.bits), _scale_tensor(s_name, scale, inits[weight].data_type)])
        new_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name], [dq_out], axis=0,
                                          block_size=spec.block_size, name=f"{node.name or node.output[0]}.dq"))
        if node.op_type == "Gemm":  # lm_head: Gemm(x, W, transB=1) -> MatMul(x, DQ(W^T))
            node = helper.make_node("MatMul", [node.input[0], dq_out], list(node.output), name=node.name)
        else:
            node.input[1] = dq_out
        new_nodes.append(node)
        count += 1
    if spec.embeddings:
        count += _quantize_gathers(new_nodes, inits, spec, store, tokens, read)
    if not count:
        raise ArtifactError(f"{where}: no constant MatMul weights found to quantize")
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_dead(graph)
    return count


def _quantize_gathers(nodes: list, inits: dict, spec: WeightSpec, store, tokens: str, read) -> int:
    """Embedding lookups Gather(table [V, d], token ids): the table from DequantizeLinear(axis=1, blocks
    along d). Other Gathers from constant tables (RoPE cos/sin by position) stay float."""
    from onnx import helper

    count = 0
    for node in list(nodes):
        if node.op_type != "Gather" or node.input[1] != tokens or node.input[0] not in inits \
                or len(inits[node.input[0]].dims) != 2:
            continue
        src = node.input[0]
        table = read(inits[src])  # [V, d]
        q, scale = rtn(table.T, spec.block_size, spec.qmax)  # blocks along d: [d, V], [d/block, V]
        base = f"{src}.rows"
        store([_q_tensor(f"{base}.q{spec.bits}", np.ascontiguousarray(q.T), spec.bits),
               _scale_tensor(f"{base}.scale", np.ascontiguousarray(scale.T), inits[src].data_type)])
        dq_out = f"{node.name or node.output[0]}.table_dq"
        nodes.insert(nodes.index(node), helper.make_node(
            "DequantizeLinear", [f"{base}.q{spec.bits}", f"{base}.scale"], [dq_out], axis=1,
            block_size=spec.block_size, name=f"{node.name or node.output[0]}.dq"))
        node.input[0] = dq_out
        count += 1
    return count


def _drop_dead(graph) -> None:
    """Remove nodes and initializers nothing reads any more (the float weights and their Transposes)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = outputs | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = outputs | {i for n in graph.node for i in n.input}
    for i in reversed(range(len(graph.initializer))):  # in place: no copy of the ones kept
        if graph.initializer[i].name not in used:
            del graph.initializer[i]


def fake_quantized(model, spec: WeightSpec):
    """The plain torch reference of a quantized export: a copy of `model` whose linear weights (and
    the embedding table with spec.embeddings) are the dequantized values the graph computes with.
    A tied lm_head is untied (the graph quantizes the lm_head MatMul, not the embedding Gather)."""
    import copy

    import torch

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for mod in ref.modules():
            if isinstance(mod, torch.nn.Linear):
                w = mod.weight.detach().float().numpy().T  # [K, N] as the graph's MatMul reads it
                q, scale = rtn(w, spec.block_size, spec.qmax)
                deq = torch.from_numpy(np.ascontiguousarray(dequantize(q, scale, spec.block_size).T))
                mod.weight = torch.nn.Parameter(deq.to(mod.weight.dtype), requires_grad=False)
            elif isinstance(mod, torch.nn.Embedding) and spec.embeddings:
                q, scale = rtn(mod.weight.detach().float().numpy().T, spec.block_size, spec.qmax)  # blocks along d
                deq = torch.from_numpy(np.ascontiguousarray(dequantize(q, scale, spec.block_size).T))
                mod.weight = torch.nn.Parameter(deq.to(mod.weight.dtype), requires_grad=False)
    return ref
