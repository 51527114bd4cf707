"""The G-SWA / shared-KV op contract, version 2: the one source of truth for its name, I/O and attributes.

The torch reference (`gswa.py`), the ONNX node and function (`plt_deploy/export`), the TensorRT
plugin (`plugins/gatedSlidingWindowAttentionPlugin`, whose YAML is generated from this file) all
read these definitions.

One call takes R loop rows; rows 0..G-1 (G = global_rows) are global-only. Semantics, for every
batch b, loop row r, query head h, query index s:

    t       = query_pos[b, s]                          absolute position of the query
    kvh     = h // (num_heads // num_kv_heads)         grouped-query heads
    global  : keys key_global[b, kvh, j] at position j, valid iff j <= t
    y_glob  = softmax_valid(scale * q . k_glob) @ v_glob       (0 if no key is valid)
    rows r <  G: out = y_glob                                  (g = 0, no local part)
    rows r >= G:
      local : keys key_local[b, r - G, kvh, i] at position local_pos[b, i], valid iff
              local_pos[b, i] >= 0 and t - window < local_pos[b, i] <= t
      y_loc = softmax_valid(scale * q . k_loc) @ v_loc         (0 if no key is valid)
      g     = sigmoid(sum_d q[d] * gate_weight[h, d] + gate_bias[h])
      out   = g * y_loc + (1 - g) * y_glob

All arithmetic is fp32 whatever the input dtype; the output has the query's dtype. `q` is the
query exactly as passed in (after q-norm and RoPE in the PLT model).

How the PLT model uses it:
  decode : one call per layer with R = L, G = 1: row 0 is loop 1, which attends only to the shared
           cache after its own key/value at position t were written into it; rows 1..L-1 are
           loops 2..L. Every shared K/V slot is read once for all rows and all query heads of its
           KV group.
  prefill: loop 1 is ordinary causal attention (standard ops); loops l >= 2 call the op with
           R = 1, G = 0, the local keys being the chunk's own keys.

Version 1 (R rows all mixed, loop 1 outside the op, key_local with R rows) is gone: an ONNX file
carrying plugin_version "1" is refused (`check_version`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ArtifactError

OP_NAME = "GatedSlidingWindowAttention"
OP_DOMAIN = "plt"
OP_VERSION = 2
PLUGIN_NAMESPACE = "plt"  # TensorRT plugin namespace = ONNX domain
TORCH_OP = "plt::gated_sliding_window_attention"
TORCH_ATTENTION_OP = "plt::causal_attention"  # loop-1 / vanilla / looped attention: ONNX's standard Attention


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


LOCAL_ROWS = "R-G"  # symbolic dim of key_local/value_local: the rows that mix in a local part
DIM_ATTRIBUTES = {"G": "global_rows"}  # symbolic dims given by an attribute rather than a tensor

INPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("query", ("B", "R", "Hq", "S", "D"), "T",
               "queries of R loop rows, after q-norm and RoPE; rows 0..G-1 are global-only"),
    TensorSpec("key_global", ("B", "Hkv", "T", "D"), "T", "shared (loop-1) keys; slot j holds position j"),
    TensorSpec("value_global", ("B", "Hkv", "T", "D"), "T", "shared (loop-1) values"),
    TensorSpec("key_local", ("B", LOCAL_ROWS, "Hkv", "W", "D"), "T",
               "own keys of rows G..R-1 (row r uses key_local[:, r - G]); slot i holds local_pos[b, i]"),
    TensorSpec("value_local", ("B", LOCAL_ROWS, "Hkv", "W", "D"), "T", "own values of rows G..R-1"),
    TensorSpec("query_pos", ("B", "S"), "int64", "absolute position of every query"),
    TensorSpec("local_pos", ("B", "W"), "int64", "absolute position held by each local slot, -1 if empty"),
    TensorSpec("gate_weight", ("Hq", "D"), "T", "per-head gate vector"),
    TensorSpec("gate_bias", ("Hq",), "T", "per-head gate bias"),
)

OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("output", ("B", "R", "Hq", "S", "D"), "T",
               "y_global for rows < G, g * y_local + (1 - g) * y_global for rows >= G"),
)

ATTRIBUTES: tuple[AttributeSpec, ...] = (
    AttributeSpec("window", "INT", None, "sliding window w >= 1 over the local keys"),
    AttributeSpec("scale", "FLOAT", None, "softmax scale, usually 1/sqrt(D)"),
    AttributeSpec("num_heads", "INT", None, "Hq"),
    AttributeSpec("num_kv_heads", "INT", None, "Hkv; Hq % Hkv == 0"),
    AttributeSpec("global_rows", "INT", None, "G, 0 <= G <= R: rows 0..G-1 attend to the shared keys only"),
)

FLOAT_DTYPES = ("float32", "float16", "bfloat16")


def check_attributes(window: int, scale: float, num_heads: int, num_kv_heads: int,
                     global_rows: int = 0, rows: int | None = None) -> None:
    """Raise ValueError on attribute values the contract rejects (rows = R when known)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if num_kv_heads < 1 or num_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})")
    if global_rows < 0 or (rows is not None and global_rows > rows):
        raise ValueError(f"global_rows must be in 0..R (R = {rows}), got {global_rows}")


def check_version(found: str | int, where: str) -> None:
    """Raise ArtifactError unless an exported op's plugin_version is this contract's OP_VERSION."""
    if str(found) != str(OP_VERSION):
        raise ArtifactError(
            f"{where}: G-SWA op version {found}; this plt-deploy implements version {OP_VERSION} only: "
            f"re-export it from its checkpoint with `plt-deploy export` to get version {OP_VERSION}")
