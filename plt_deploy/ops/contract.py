"""The G-SWA / shared-KV op contract: the one source of truth for its name, I/O and attributes.

The torch reference (`gswa.py`), the ONNX node and function (`plt_deploy/export`), the TensorRT
plugin (`plugins/gatedSlidingWindowAttentionPlugin`, whose YAML is generated from this file) all
read these definitions.

Semantics (for every batch b, loop row r, query head h, query index s):

    t       = query_pos[b, s]                          absolute position of the query
    kvh     = h // (num_heads // num_kv_heads)         grouped-query heads
    global  : keys key_global[b, kvh, j]   at position j,               valid iff j <= t
    local   : keys key_local[b, r, kvh, i] at position local_pos[b, i], valid iff
              local_pos[b, i] >= 0 and t - window < local_pos[b, i] <= t
    y_glob  = softmax_valid(scale * q . k_glob) @ v_glob       (0 if no key is valid)
    y_loc   = softmax_valid(scale * q . k_loc)  @ v_loc        (0 if no key is valid)
    g       = sigmoid(sum_d q[d] * gate_weight[h, d] + gate_bias[h])
    out     = g * y_loc + (1 - g) * y_glob

All arithmetic is fp32 whatever the input dtype; the output has the query's dtype. `q` is the
query exactly as passed in (after q-norm and RoPE in the PLT model).

Loop 1 does NOT use this op: its attention is ordinary causal attention over the shared cache,
exported as standard ONNX ops (MatMul/Softmax with a position mask). It is exactly what TensorRT's
own attention fusion and ONNX Runtime already optimise, the vanilla and looped baselines must
export without any plugin, and keeping the op to one job keeps the plugin small.
"""

from __future__ import annotations

from dataclasses import dataclass

OP_NAME = "GatedSlidingWindowAttention"
OP_DOMAIN = "plt"
OP_VERSION = 1
PLUGIN_NAMESPACE = "plt"  # TensorRT plugin namespace = ONNX domain
TORCH_OP = "plt::gated_sliding_window_attention"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[str, ...]  # symbolic dims
    dtype: str  # "T" = the float type (fp32/fp16/bf16) shared by all float I/O, or a fixed type
    doc: str


@dataclass(frozen=True)
class AttributeSpec:
    name: str
    type: str  # ONNX attribute type: INT | FLOAT
    default: int | float | None  # None = required
    doc: str


INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("query", ("B", "R", "Hq", "S", "D"), "T", "queries of R loop rows, after q-norm and RoPE"),
    TensorSpec("key_global", ("B", "Hkv", "T", "D"), "T", "shared (loop-1) keys; slot j holds position j"),
    TensorSpec("value_global", ("B", "Hkv", "T", "D"), "T", "shared (loop-1) values"),
    TensorSpec("key_local", ("B", "R", "Hkv", "W", "D"), "T", "each row's own keys; slot i holds local_pos[b, i]"),
    TensorSpec("value_local", ("B", "R", "Hkv", "W", "D"), "T", "each row's own values"),
    TensorSpec("query_pos", ("B", "S"), "int64", "absolute position of every query"),
    TensorSpec("local_pos", ("B", "W"), "int64", "absolute position held by each local slot, -1 if empty"),
    TensorSpec("gate_weight", ("Hq", "D"), "T", "per-head gate vector"),
    TensorSpec("gate_bias", ("Hq",), "T", "per-head gate bias"),
)

OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("output", ("B", "R", "Hq", "S", "D"), "T", "g * y_local + (1 - g) * y_global"),
)

ATTRIBUTES: tuple[AttributeSpec, ...] = (
    AttributeSpec("window", "INT", None, "sliding window w >= 1 over the local keys"),
    AttributeSpec("scale", "FLOAT", None, "softmax scale, usually 1/sqrt(D)"),
    AttributeSpec("num_heads", "INT", None, "Hq"),
    AttributeSpec("num_kv_heads", "INT", None, "Hkv; Hq % Hkv == 0"),
)

FLOAT_DTYPES = ("float32", "float16", "bfloat16")


def check_attributes(window: int, scale: float, num_heads: int, num_kv_heads: int) -> None:
    """Raise ValueError on attribute values the contract rejects."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if num_kv_heads < 1 or num_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})")
