"""The ONE declarative description of the exported graphs' inputs and outputs.

Everything that touches ONNX tensor names reads them from here (through the manifest at run
time): the exporter's dummy inputs and dynamic axes, the manifest, validation, the ONNX Runtime
runner and the Polygraphy check. Derived from PLTConfig only.

Graphs (two, see export/README.md for why):

  prefill  input_ids [batch, prompt] int64, lengths [batch] int64
           -> logits [batch, vocab] (each prompt's last real token), present_key.i / present_value.i
              [batch, kv_heads, prompt, head_dim] (cache slots 0..prompt-1),
              plt only: present_local_key.n / present_local_value.n [batch, rows, kv_heads, ring, head_dim],
              present_carry [batch, rows, d_model]
  decode   input_ids [batch], position [batch] int64 (= tokens already cached per sequence),
           past_key.i / past_value.i [batch, kv_heads, max_seq, head_dim] (preallocated),
           plt only: past_local_key.n / past_local_value.n, past_carry
           -> logits [batch, vocab], present_* of the SAME shapes as past_*.
           present_key.i / present_value.i / present_local_* are ScatterElements of past_* at
           `position`: runners bind each present_* to the memory of its past_* (in place).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..cache import ring_len
from ..config import PLTConfig

PREFILL, DECODE = "prefill", "decode"
GRAPHS = (PREFILL, DECODE)


@dataclass(frozen=True)
class IOTensor:
    name: str
    shape: tuple  # ints are static, strings are named dynamic axes
    dtype: str  # "float32" | "float16" | "bfloat16" | "int64"
    role: str  # tokens | lengths | position | logits | key | value | local_key | local_value | carry
    index: int = 0  # layer / cache index for cache roles
    alias_of: str | None = None  # decode outputs: the input whose buffer this output is written into

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "IOTensor":
        return cls(**{**d, "shape": tuple(d["shape"])})


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[IOTensor, ...]
    outputs: tuple[IOTensor, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in (*self.inputs, *self.outputs)}

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "GraphSpec":
        return cls(name, tuple(IOTensor.from_dict(t) for t in d["inputs"]),
                   tuple(IOTensor.from_dict(t) for t in d["outputs"]))


def cache_tensors(cfg: PLTConfig, prefix: str, seq_axis: str | int, max_seq: int, dtype: str) -> list[IOTensor]:
    """Cache tensors in a fixed order: key.0..key.n, value.0..value.n, local keys, local values, carry."""
    Hkv, D = cfg.n_kv_heads, cfg.head_dim
    out = [IOTensor(f"{prefix}key.{i}", ("batch", Hkv, seq_axis, D), dtype, "key", i)
           for i in range(cfg.n_cache_layers)]
    out += [IOTensor(f"{prefix}value.{i}", ("batch", Hkv, seq_axis, D), dtype, "value", i)
            for i in range(cfg.n_cache_layers)]
    if cfg.uses_gswa:
        rows, wc = cfg.loops - 1, ring_len(cfg)
        out += [IOTensor(f"{prefix}local_key.{n}", ("batch", rows, Hkv, wc, D), dtype, "local_key", n)
                for n in range(cfg.n_layers)]
        out += [IOTensor(f"{prefix}local_value.{n}", ("batch", rows, Hkv, wc, D), dtype, "local_value", n)
                for n in range(cfg.n_layers)]
        out.append(IOTensor(f"{prefix}carry", ("batch", rows, cfg.d_model), dtype, "carry"))
    return out


def prefill_spec(cfg: PLTConfig, max_seq: int, dtype: str) -> GraphSpec:
    inputs = (IOTensor("input_ids", ("batch", "prompt"), "int64", "tokens"),
              IOTensor("lengths", ("batch",), "int64", "lengths"))
    outputs = (IOTensor("logits", ("batch", cfg.vocab_size), dtype, "logits"),  # last real token only
               *cache_tensors(cfg, "present_", "prompt", max_seq, dtype))
    return GraphSpec(PREFILL, inputs, outputs)


def decode_spec(cfg: PLTConfig, max_seq: int, dtype: str) -> GraphSpec:
    past = cache_tensors(cfg, "past_", "max_seq", max_seq, dtype)
    present = [IOTensor(t.name.replace("past_", "present_", 1), t.shape, t.dtype, t.role, t.index,
                        alias_of=t.name if t.role != "carry" else None) for t in past]
    inputs = (IOTensor("input_ids", ("batch",), "int64", "tokens"),
              IOTensor("position", ("batch",), "int64", "position"), *past)
    outputs = (IOTensor("logits", ("batch", cfg.vocab_size), dtype, "logits"), *present)
    return GraphSpec(DECODE, inputs, tuple(outputs))


def graph_specs(cfg: PLTConfig, max_seq: int, dtype: str) -> dict[str, GraphSpec]:
    return {PREFILL: prefill_spec(cfg, max_seq, dtype), DECODE: decode_spec(cfg, max_seq, dtype)}
