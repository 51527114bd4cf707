"""The ONE declarative description of the exported graphs' inputs and outputs.

Everything that touches ONNX tensor names reads them from here (through the manifest at run
time): the exporter's dummy inputs and dynamic axes, the manifest, validation, the ONNX Runtime
and TensorRT runners, the engine profiles and the Polygraphy check. Derived from PLTConfig only.

Runners never spell or derive a tensor name: they find tensors by `role` (`GraphSpec.one`), pair
them through `alias_of` (every cache/carry output names the decode input it becomes the next value
of, in both graphs) and turn named axes into sizes with `IOTensor.concrete`, the one resolver.

Graphs (two, see export/README.md for why):

  prefill  (extend: continue sequences by a chunk from their state; a prompt from 0 is start_pos 0)
           input_ids [batch, prompt] int64 (right-padded), lengths [batch] int64 (real tokens),
           start_pos [batch] int64 (0, or the tokens the row already holds), and the state as the
           decode graph takes it (past_* below; past_key/value cut to `max_seq` = the slots the chunk
           reaches: start_pos + prompt <= max_seq)
           -> logits [batch, vocab] (each chunk's last real token), present_key.i / present_value.i
              (TensorScatter of past_* at start_pos, `in_place` like decode's), plt and loopcoder:
              present_local_key.n / present_local_value.n [batch, rows*kv_heads, ring, head_dim]
              (config.n_local_layers rings rewritten whole: new tensors), plt only: present_carry
  decode   input_ids [batch], position [batch] int64 (= tokens already cached per sequence),
           past_key.i / past_value.i [batch, kv_heads, max_seq, head_dim] (preallocated),
           plt and loopcoder: past_local_key.n / past_local_value.n; plt only: past_carry
           -> logits [batch, vocab], present_* of the SAME shapes as past_*.
           present_key.i / present_value.i / present_local_* are each ONE TensorScatter (opset 24,
           linear, axis -2) of past_* at `position` (or `position % ring`), the form TensorRT
           imports as IKVCacheUpdateLayer (`in_place`: a runner binds each to the memory of its
           past_*; TensorRT requires it); the carry is recomputed from itself, so it needs its own
           buffer. All caches are 4-D [batch, heads, slots, head_dim]: a ring's rows (loops 2..L)
           and kv heads share axis 1 (row r, head h at r * kv_heads + h).

Pairing (`alias_of`, every output but logits): an output names the DECODE input it is the next
value of, in both graphs. The prefill graph's own state inputs pair with the decode inputs by role
and index (`state_inputs`): runners keep one buffer per decode input and feed it to both graphs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ..cache import ring_len
from ..config import PLTConfig
from ..errors import ArtifactError

PREFILL, DECODE = "prefill", "decode"
GRAPHS = (PREFILL, DECODE)


@dataclass(frozen=True)
class IOTensor:
    name: str
    shape: tuple  # ints are static, strings are named dynamic axes
    dtype: str  # "float32" | "float16" | "bfloat16" | "int64"
    role: str  # tokens | lengths | start | position | logits | key | value | local_key | local_value | carry
    index: int = 0  # layer / cache index for cache roles
    alias_of: str | None = None  # outputs: the decode input this output is the next value of (see module doc)
    in_place: bool = False  # decode outputs: a TensorScatter of its alias_of input, bound to that input's buffer

    def concrete(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The shape with every named axis replaced by sizes[axis]: the one named-axis resolver."""
        out = []
        for d in self.shape:
            if isinstance(d, str):
                if sizes.get(d) is None:
                    raise ArtifactError(f"{self.name}: no size for dynamic axis {d!r} (have {sorted(sizes)})")
                out.append(int(sizes[d]))
            else:
                out.append(int(d))
        return tuple(out)

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

    def one(self, role: str, io: str = "inputs") -> IOTensor:
        """The single input (or output, io="outputs") with this role: tokens, position, lengths, logits, carry."""
        found = [t for t in getattr(self, io) if t.role == role]
        if len(found) != 1:
            raise ArtifactError(f"{self.name} graph: expected one {io[:-1]} with role {role!r}, found {len(found)}")
        return found[0]

    def maybe(self, role: str, io: str = "inputs") -> IOTensor | None:
        """Like `one`, but None when no tensor has the role (e.g. no carry in vanilla exports)."""
        found = [t for t in getattr(self, io) if t.role == role]
        return self.one(role, io) if found else None

    def state_outputs(self) -> tuple[IOTensor, ...]:
        """Outputs that carry decoder state (everything but logits), each paired through alias_of."""
        out = tuple(t for t in self.outputs if t.role != "logits")
        missing = [t.name for t in out if not t.alias_of]
        if missing:
            raise ArtifactError(f"{self.name} graph: outputs {missing} name no decode input in alias_of; re-export")
        return out

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in (*self.inputs, *self.outputs)}

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "GraphSpec":
        return cls(name, tuple(IOTensor.from_dict(t) for t in d["inputs"]),
                   tuple(IOTensor.from_dict(t) for t in d["outputs"]))


def state_inputs(spec: GraphSpec, decode: GraphSpec) -> dict[str, str]:
    """spec's state inputs -> the decode input holding the same state (same role and index)."""
    by_kind = {(t.role, t.index): t.name for t in decode.inputs if t.role in STATE_ROLES}
    return {t.name: by_kind[(t.role, t.index)] for t in spec.inputs if t.role in STATE_ROLES}


STATE_ROLES = ("key", "value", "local_key", "local_value", "carry")


def cache_tensors(cfg: PLTConfig, prefix: str, seq_axis: str | int, max_seq: int, dtype: str) -> list[IOTensor]:
    """Cache tensors in a fixed order: key.0..key.n, value.0..value.n, local keys, local values, carry."""
    Hkv, D = cfg.n_kv_heads, cfg.head_dim
    out = [IOTensor(f"{prefix}key.{i}", ("batch", Hkv, seq_axis, D), dtype, "key", i)
           for i in range(cfg.n_cache_layers)]
    out += [IOTensor(f"{prefix}value.{i}", ("batch", Hkv, seq_axis, D), dtype, "value", i)
            for i in range(cfg.n_cache_layers)]
    if cfg.uses_gswa:
        rows, wc = cfg.local_rows, ring_len(cfg)
        out += [IOTensor(f"{prefix}local_key.{n}", ("batch", rows * Hkv, wc, D), dtype, "local_key", n)
                for n in range(cfg.n_local_layers)]
        out += [IOTensor(f"{prefix}local_value.{n}", ("batch", rows * Hkv, wc, D), dtype, "local_value", n)
                for n in range(cfg.n_local_layers)]
    if cfg.has_carry:
        out.append(IOTensor(f"{prefix}carry", ("batch", cfg.loops - 1, cfg.d_model), dtype, "carry"))
    return out


def _paired(outputs: list[IOTensor], inputs: list[IOTensor], in_place: tuple[str, ...]) -> list[IOTensor]:
    """outputs[i] with alias_of = inputs[i].name (same role and index, cache_tensors order); the roles
    in `in_place` are TensorScatters of their input."""
    assert [(o.role, o.index) for o in outputs] == [(i.role, i.index) for i in inputs]
    return [IOTensor(o.name, o.shape, o.dtype, o.role, o.index, alias_of=i.name, in_place=o.role in in_place)
            for o, i in zip(outputs, inputs)]


SCATTERED = ("key", "value", "local_key", "local_value")  # written by TensorScatter in the decode graph


def prefill_spec(cfg: PLTConfig, max_seq: int, dtype: str) -> GraphSpec:
    past = cache_tensors(cfg, "past_", "max_seq", max_seq, dtype)
    inputs = (IOTensor("input_ids", ("batch", "prompt"), "int64", "tokens"),
              IOTensor("lengths", ("batch",), "int64", "lengths"),
              IOTensor("start_pos", ("batch",), "int64", "start"), *past)
    present = _paired(cache_tensors(cfg, "present_", "max_seq", max_seq, dtype), past, in_place=("key", "value"))
    outputs = (IOTensor("logits", ("batch", cfg.vocab_size), dtype, "logits"), *present)  # last real token only
    return GraphSpec(PREFILL, inputs, outputs)


def decode_spec(cfg: PLTConfig, max_seq: int, dtype: str) -> GraphSpec:
    past = cache_tensors(cfg, "past_", "max_seq", max_seq, dtype)
    present = _paired(cache_tensors(cfg, "present_", "max_seq", max_seq, dtype), past, in_place=SCATTERED)
    inputs = (IOTensor("input_ids", ("batch",), "int64", "tokens"),
              IOTensor("position", ("batch",), "int64", "position"), *past)
    outputs = (IOTensor("logits", ("batch", cfg.vocab_size), dtype, "logits"), *present)
    return GraphSpec(DECODE, inputs, tuple(outputs))


def graph_specs(cfg: PLTConfig, max_seq: int, dtype: str) -> dict[str, GraphSpec]:
    return {PREFILL: prefill_spec(cfg, max_seq, dtype), DECODE: decode_spec(cfg, max_seq, dtype)}
