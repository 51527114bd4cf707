"""Model configuration: one dataclass, validated on construction, plus named presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

SEED_MIN, SEED_MAX = -(1 << 63), (1 << 63) - 1  # every seed (CLI flags, server requests): a signed 64-bit
# integer, what torch.Generator.manual_seed takes (here, not in generate.py: --help must not import torch)
MIN_EXPORT_SEQ = 3  # the shortest --max-seq an export accepts: a prompt token, one decode step, its output

MODES = ("plt", "looped", "vanilla", "loopcoder")
# `train --variants` names -> config overrides (vanilla also forces loops = 1)
VARIANTS = {"plt": dict(mode="plt"), "looped": dict(mode="looped"), "vanilla": dict(mode="vanilla")}
DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class PLTConfig:
    vocab_size: int = 259  # 256 bytes + <bos>, <eos>, <pad> of the byte tokenizer
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2  # grouped-query attention: n_heads must be a multiple of n_kv_heads
    head_dim: int | None = None  # None -> d_model // n_heads
    mlp_hidden: int | None = None  # SwiGLU hidden size; None -> about 8/3 * d_model, rounded to 16
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 256  # the KV cache and the RoPE tables are sized for this
    loops: int = 2  # L: how many times the N-layer block is applied
    window: int = 16  # w: G-SWA sliding window over a loop's own keys (loops >= 2)
    mode: str = "plt"  # plt | looped (sequential loops, own KV per loop) | vanilla (L = 1)
    #                    | loopcoder (IQuest-Coder-V1 Loop: sequential loops, shared KV + G-SWA, no CLP)
    input_scale: float = 1.0  # a in B_l = a*E + b*shift_right(H_{l-1})
    carry_scale: float = 1.0  # b in the same formula
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE
    tie_embeddings: bool = True
    dtype: str = "float32"
    extra: dict = field(default_factory=dict)  # free-form metadata (e.g. training task), not used by the model

    def __post_init__(self):
        self.validate_types()
        if self.head_dim is None:
            self._derive_head_dim()
        if self.mlp_hidden is None:
            self.mlp_hidden = 16 * ((8 * self.d_model // 3 + 15) // 16)
        if self.mode == "vanilla" and self.loops != 1:
            self.loops = 1
        self.validate()

    def _derive_head_dim(self) -> None:
        """head_dim = d_model / n_heads, refused (naming the fields written) unless exact and even."""
        d, h = self.d_model, self.n_heads
        if d >= 1 and h >= 1:
            if d % h:
                raise ConfigError(f"invalid config: d_model ({d}) is not divisible by n_heads ({h}); change one, "
                                  "or give head_dim explicitly (then n_heads * head_dim may differ from d_model)")
            if (d // h) % 2:
                raise ConfigError(f"invalid config: d_model / n_heads = {d} / {h} = {d // h} is the head size, which "
                                  "must be even for RoPE; change d_model or n_heads, or give an even head_dim")
        self.head_dim = d // max(h, 1)

    def validate_types(self) -> None:
        """Every field has its declared type (checked before anything is derived from it)."""
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        checks = {
            **{n: (is_int, "an integer") for n in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                                                  "max_seq_len", "loops", "window")},
            **{n: ((lambda v: v is None or is_int(v)), "an integer or null") for n in ("head_dim", "mlp_hidden")},
            **{n: ((lambda v: is_int(v) or isinstance(v, float)), "a number")
               for n in ("norm_eps", "rope_theta", "input_scale", "carry_scale")},
            **{n: ((lambda v: isinstance(v, bool)), "true or false") for n in ("qk_norm", "tie_embeddings")},
            **{n: ((lambda v: isinstance(v, str)), "a string") for n in ("mode", "dtype")},
            "extra": ((lambda v: isinstance(v, dict)), "a JSON object"),
        }
        for name, (ok, what) in checks.items():
            value = getattr(self, name)
            if not ok(value):
                raise ConfigError(f"invalid config: {name} must be {what}, got {value!r}")
        for name in ("norm_eps", "rope_theta", "input_scale", "carry_scale"):
            value = getattr(self, name)
            if value != value or value in (float("inf"), float("-inf")):
                raise ConfigError(f"invalid config: {name} must be finite, got {value!r}")

    def validate(self) -> None:
        def need(ok: bool, msg: str):
            if not ok:
                raise ConfigError(f"invalid config: {msg}")

        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden",
                     "max_seq_len"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{name} must be a positive integer, got {value!r}")
        need(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        need(isinstance(self.loops, int) and self.loops >= 1, f"loops must be >= 1, got {self.loops!r}")
        need(isinstance(self.window, int) and self.window >= 1, f"window must be >= 1, got {self.window!r}")
        need(self.window <= self.max_seq_len, f"window ({self.window}) must be <= max_seq_len ({self.max_seq_len}): "
             "a longer window holds no more keys, only a bigger cache")
        need(self.mode != "loopcoder" or self.loops >= 2, f"mode loopcoder needs loops >= 2, got {self.loops!r}")
        need(self.n_heads % self.n_kv_heads == 0,
             f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})")
        need(self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}")
        need(self.norm_eps > 0, f"norm_eps must be > 0, got {self.norm_eps}")
        need(self.rope_theta > 0, f"rope_theta must be > 0, got {self.rope_theta}")
        need(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        self.check_memory()

    def parameter_count(self) -> int:
        """Parameters of the model this config builds (embedding tied unless tie_embeddings is off)."""
        d, hd = self.d_model, self.head_dim
        attn = d * hd * (self.n_heads + 2 * self.n_kv_heads) + self.n_heads * hd * d
        gate = self.n_heads * (hd + 1) if self.uses_gswa else 0
        layer = attn + gate + 3 * d * self.mlp_hidden + 2 * d + (2 * hd if self.qk_norm else 0)
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * layer + d + head

    def estimated_bytes(self) -> int:
        """Bytes the model needs at rest: weights plus the RoPE tables sized for max_seq_len."""
        elem = 4 if self.dtype == "float32" else 2
        return self.parameter_count() * elem + 2 * self.max_seq_len * self.head_dim * 4

    def check_memory(self) -> None:
        """Refuse a config whose weights cannot fit this machine's memory, before allocating anything."""
        check_fits(self.estimated_bytes(), "invalid config: the model",
                   f"{self.parameter_count():,} parameters, {self.dtype}; max_seq_len {self.max_seq_len}")

    def training_bytes(self, batch: int, seq: int) -> int:
        """Peak bytes of `training.train` on `batch` sequences of `seq` tokens (fp32, AdamW).

        weights + gradients + AdamW's two moments (4 copies of the parameters: the gradients of
        step n are still alive during step n+1's forward, zero_grad runs after it), plus what
        autograd keeps per token for the backward pass, counted from model.py / ops/gswa.py:
          every layer, every loop: the two RMSNorms' input, x * rstd and output (6 d), SwiGLU's w1,
            silu, w3 and product (4 h), roped q and k, v, and the o_proj input (2 q + 2 kv);
          causal attention (loop 1; every loop of vanilla / looped): scores, masked, softmax (3 Hq * S);
          G-SWA loops (training runs gswa_reference, local keys = the whole sequence): for the global
            and the local part each the masked scores, exp and masked probabilities (3 Hq * S), p@v
            and its quotient (2 q); the repeated K/V of grouped heads (4 q when n_rep > 1);
          the head: the final norm's input and output (2 d), log_softmax (V) plus its gradient and
            the logits' gradient during backward (2 V);
          the backward pass's gradient buffers of the layer being differentiated: one more layer.
        This is the live set; peak RSS under glibc's default malloc is higher when the tensors are
        small (< 32 MiB each: freed heap memory is kept), e.g. 1.3-1.7x for the tiny and small presets.
        Measure: `python -m plt_deploy.training PRESET BATCH [field=value ...]` (measure_peak_memory).
        """
        d, h, V, Hq = self.d_model, self.mlp_hidden, self.vocab_size, self.n_heads
        q, kv = Hq * self.head_dim, self.n_kv_heads * self.head_dim
        block = 6 * d + 4 * h + 2 * q + 2 * kv + 8  # + the norms' rstd
        causal = block + 3 * Hq * seq
        gswa = block + 2 * (3 * Hq * seq + 2 * q) + (4 * q if self.n_rep > 1 else 0) + 4 * Hq
        gswa_loops = self.loops - 1 if self.uses_gswa else 0
        layers = self.n_layers * ((self.loops - gswa_loops) * causal + gswa_loops * gswa)
        per_token = layers + max(causal, gswa if gswa_loops else 0) + 2 * d + 3 * V
        return 4 * 4 * self.parameter_count() + 4 * batch * seq * per_token

    def check_training_memory(self, batch: int, seq: int) -> None:
        """Refuse `train --batch` whose training step cannot fit this machine's memory, before allocating."""
        from .errors import InputError

        check_fits(self.training_bytes(batch, seq), f"--batch {batch}: training",
                   f"weights, gradients and AdamW state of {self.parameter_count():,} parameters, activations of "
                   f"{batch:,} sequences x {seq} tokens x {self.n_layers} layers x {self.loops} loops",
                   error=InputError, advice="; lower --batch")

    # Derived quantities -------------------------------------------------------------------
    @property
    def n_rep(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def n_cache_layers(self) -> int:
        """Full-length KV cache layers: loop 1 only for plt/vanilla, every loop for looped."""
        return self.n_layers * (self.loops if self.mode == "looped" else 1)

    @property
    def uses_gswa(self) -> bool:
        """Loops 2..L attend through the G-SWA op (shared loop-1 KV + their own window)."""
        return self.mode in ("plt", "loopcoder") and self.loops >= 2

    @property
    def has_carry(self) -> bool:
        """plt decodes all loops in one pass, so it carries h_l(t-1) between steps; loopcoder does not."""
        return self.mode == "plt" and self.loops >= 2

    @property
    def n_local_layers(self) -> int:
        """Local ring tensors: one per layer (plt: holding loops 2..L as rows), or one per layer per
        later loop (loopcoder, index = (loop - 2) * n_layers + layer: its loops run one after another)."""
        if not self.uses_gswa:
            return 0
        return self.n_layers * (self.loops - 1 if self.mode == "loopcoder" else 1)

    @property
    def local_rows(self) -> int:
        """Loop rows in each local ring tensor: L-1 for plt, 1 for loopcoder (0 without G-SWA)."""
        if not self.uses_gswa:
            return 0
        return 1 if self.mode == "loopcoder" else self.loops - 1

    @property
    def decode_gswa_rows(self) -> tuple[int, int]:
        """(R, G) of every G-SWA call of a decode step: plt one call of all L rows with loop 1
        global-only; loopcoder one call per later loop (R = 1, G = 0), as in prefill."""
        return (1, 0) if self.mode == "loopcoder" else (self.loops, 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PLTConfig":
        if not isinstance(data, dict):
            raise ConfigError("invalid config: expected a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"invalid config: unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | Path) -> "PLTConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        try:
            return cls.from_dict(data)
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def from_name(cls, name: str, **overrides) -> "PLTConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def replace(self, **changes) -> "PLTConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, dict] = {
    # For tests: a few hundred thousand parameters, runs in milliseconds.
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256, window=8),
    # For benchmarks: ~30M parameters (25-40M asked for), 2048-token context.
    "small": dict(d_model=512, n_layers=10, n_heads=8, n_kv_heads=4, mlp_hidden=1536, max_seq_len=2304, window=64),
    # Large enough to be memory-bound on a CPU: ~300M parameters in fp32.
    "base": dict(d_model=1024, n_layers=20, n_heads=16, n_kv_heads=8, mlp_hidden=3072, max_seq_len=2304, window=64),
}


def check_variants(variants) -> tuple[str, ...]:
    """Validate `train --variants` names: unknown or repeated names are refused."""
    from .errors import InputError

    names = tuple(variants)
    if not names or not all(names):
        raise InputError(f"expected comma-separated variants (plt, looped, vanilla), got {','.join(names)!r}")
    for v in names:
        if v not in VARIANTS:
            raise InputError(f"unknown variant {v!r}; use plt, looped, vanilla")
    dup = next((v for i, v in enumerate(names) if v in names[:i]), None)
    if dup:
        raise InputError(f"variant {dup!r} given twice; each variant trains once per run")
    return names


def machine_memory_bytes() -> int | None:
    """Physical memory of this machine (None if the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(need: int, subject: str, detail: str = "", error: type[Exception] = ConfigError,
               advice: str = "") -> None:
    """The one memory check: refuse `need` bytes beyond this machine's physical memory, before allocating.

    Message: "<subject> needs about X (<detail>) but this machine has Y of memory<advice>".
    """
    have = machine_memory_bytes()
    if have and need > have:
        raise error(f"{subject} needs about {_size(need)}{f' ({detail})' if detail else ''} "
                    f"but this machine has {_size(have)} of memory{advice}")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def variant_configs(preset: str, variants, loops: int = 2, window: int | None = None,
                    extra: dict | None = None) -> dict[str, PLTConfig]:
    """`train --variants`: name -> validated config of the preset (vanilla always L = 1)."""
    configs = {}
    for name in check_variants(variants):
        overrides = dict(VARIANTS[name], loops=1 if name == "vanilla" else loops, extra=dict(extra or {}))
        if window is not None:
            overrides["window"] = window
        configs[name] = PLTConfig.from_name(preset, **overrides)
    return configs


def numpy_dtype(name: str):
    """numpy dtype of a dtype name (DTYPES or "int64"); bfloat16 through ml_dtypes (onnx's dependency)."""
    import numpy as np

    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return {"float32": np.float32, "float16": np.float16, "int64": np.int64}[name]
