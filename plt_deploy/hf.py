"""Hugging Face checkpoint folders: IQuest-Coder-V1 Loop (`model_type: "iquestloopcoder"`).

A folder with config.json (model_type set), model.safetensors or model-0000i-of-0000n.safetensors
+ model.safetensors.index.json, and the tokenizer files. Mapped onto PLTConfig(mode="loopcoder")
and the PLT model; the ONE table of weight names is HF_NAMES below.

Gate orientation: the published model computes `g * global + (1 - g) * local` with
g = sigmoid(q . W + b); our op (plt_deploy/ops/contract.py) weights the LOCAL part by its gate.
Since 1 - sigmoid(x) = sigmoid(-x), loading negates W and b (and saving negates them back): the
model is then exactly our op, kernels unchanged.

Loading memory-maps the safetensors files (private, copy-on-write mapping; tensors are views of
it), builds the model on the meta device and assigns those views as its parameters: the weights
exist once, in the checkpoint's dtype. Nothing here executes code from the folder.
"""

from __future__ import annotations

import json
import mmap
import re
import struct
from pathlib import Path

from .config import DTYPES, PLTConfig
from .errors import CheckpointError

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SUPPORTED_MODEL_TYPES = ("iquestloopcoder",)

# (Hugging Face name, our name, negate): {i} is the layer. The one mapping, used both ways.
HF_NAMES: tuple[tuple[str, str, bool], ...] = (
    ("model.embed_tokens.weight", "embed.weight", False),
    ("lm_head.weight", "lm_head.weight", False),
    ("model.norm.weight", "norm.weight", False),
    ("model.layers.{i}.input_layernorm.weight", "layers.{i}.attn_norm.weight", False),
    ("model.layers.{i}.self_attn.q_proj.weight", "layers.{i}.attn.wq.weight", False),
    ("model.layers.{i}.self_attn.k_proj.weight", "layers.{i}.attn.wk.weight", False),
    ("model.layers.{i}.self_attn.v_proj.weight", "layers.{i}.attn.wv.weight", False),
    ("model.layers.{i}.self_attn.o_proj.weight", "layers.{i}.attn.wo.weight", False),
    ("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.mlp_norm.weight", False),
    ("model.layers.{i}.mlp.gate_proj.weight", "layers.{i}.mlp.w1.weight", False),
    ("model.layers.{i}.mlp.up_proj.weight", "layers.{i}.mlp.w3.weight", False),
    ("model.layers.{i}.mlp.down_proj.weight", "layers.{i}.mlp.w2.weight", False),
    # the published gate weights the global part; ours the local part: negated (module docstring)
    ("model.gate_projections.{i}.weight", "layers.{i}.attn.gate_weight", True),
    ("model.gate_projections.{i}.bias", "layers.{i}.attn.gate_bias", True),
)

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # RoPE tables some exporters save; recomputed (as vLLM skips them)
_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}  # torch dtype names (torch imported lazily)


def is_hf_folder(model_dir: str | Path) -> bool:
    """config.json names a Hugging Face model_type (our own config.json has no such key)."""
    path = Path(model_dir) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model_type" in data


def hf_name(ours: str) -> tuple[str, bool]:
    """Our tensor name -> (Hugging Face name, negate)."""
    for theirs, mine, negate in HF_NAMES:
        m = re.fullmatch(re.escape(mine).replace(r"\{i\}", r"(\d+)"), ours)
        if m:
            return (theirs.replace("{i}", m.group(1)) if m.groups() else theirs), negate
    raise KeyError(ours)


def hf_layout(cfg: PLTConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """(Hugging Face name, shape, role) of every tensor a LoopCoder folder must hold for cfg."""
    from .checkpoint import weight_layout

    out = []
    for ours, shape, role in weight_layout(cfg):
        theirs, negate = hf_name(ours)
        out.append((theirs, shape, f"{role} [{ours}" + (", negated at load: the file's gate weights the global "
                                                         "part]" if negate else "]")))
    return out


# Config --------------------------------------------------------------------------------------------
def config_from_hf(data: dict, path: Path) -> PLTConfig:
    """config.json of a Hugging Face LoopCoder -> PLTConfig(mode="loopcoder"); CheckpointError naming
    the field for anything this toolchain does not implement."""
    def refuse(msg: str):
        raise CheckpointError(f"{path}: {msg}")

    model_type = data.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        refuse(f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)} "
               f"(or a plt-deploy checkpoint, whose config.json has no model_type)")
    for key in ("quantization", "quantization_config"):
        if data.get(key):
            refuse(f"{key}: quantized checkpoints are not supported; use the unquantized (bf16/fp16/fp32) weights")
    params = data.get("rope_parameters")  # transformers 5 writes rope_theta (and the RoPE type) here
    if params is not None:
        if not (isinstance(params, dict) and set(params) <= {"rope_theta", "rope_type", "type"}
                and all(params[k] == "default" for k in ("rope_type", "type") if k in params)):
            refuse(f"rope_parameters {params!r} is not supported (plain RoPE only: rope_theta and rope_type "
                   "'default')")
        if "rope_theta" in params and "rope_theta" not in data:
            data = {**data, "rope_theta": params["rope_theta"]}
    scaling = data.get("rope_scaling")
    if scaling and not (isinstance(scaling, dict) and set(scaling) <= {"rope_type", "type"}
                        and all(v == "default" for v in scaling.values())):  # {"rope_type": "default"}: plain RoPE
        refuse(f"rope_scaling {data['rope_scaling']!r} is not supported (plain RoPE only); remove it only if the "
               "model was trained without it")
    for key in ("attention_bias", "mlp_bias"):
        if data.get(key):
            refuse(f"{key}: true is not supported (bias-free projections only)")
    if data.get("hidden_act", "silu") != "silu":
        refuse(f"hidden_act {data['hidden_act']!r} is not supported (SwiGLU with silu only)")
    # rope_theta and rms_norm_eps change every logit and implementations disagree on their defaults
    # (rope_theta: 10000 in Llama's config class, 500000 in mlx-lm's LoopCoder): never guess them.
    need = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "rope_theta", "rms_norm_eps")
    missing = [k for k in need if k not in data]
    if missing:
        refuse(f"missing field {missing[0]!r}" + (" (it changes every logit and implementations disagree on its "
                                                   "default: copy it from the model's published config.json)"
                                                   if missing[0] in ("rope_theta", "rms_norm_eps") else ""))
    loops = data.get("loop_num", 2)
    if not isinstance(loops, int) or isinstance(loops, bool) or loops < 2:
        refuse(f"loop_num must be an integer >= 2, got {loops!r}")
    dtype = data.get("torch_dtype") or data.get("dtype") or "float32"
    if dtype not in DTYPES:
        refuse(f"torch_dtype {dtype!r} is not supported; one of {', '.join(DTYPES)}")
    heads = data["num_attention_heads"]
    hf = {k: data[k] for k in ("model_type", "bos_token_id", "eos_token_id", "pad_token_id") if k in data}
    try:
        return PLTConfig(
            vocab_size=data["vocab_size"], d_model=data["hidden_size"], n_layers=data["num_hidden_layers"],
            n_heads=heads, n_kv_heads=data.get("num_key_value_heads") or heads, head_dim=data.get("head_dim"),
            mlp_hidden=data["intermediate_size"], norm_eps=data["rms_norm_eps"],
            rope_theta=data["rope_theta"], max_seq_len=data.get("max_position_embeddings", 4096),
            loops=loops, window=data.get("loop_window_size", 64), mode="loopcoder", qk_norm=False,
            tie_embeddings=bool(data.get("tie_word_embeddings", False)), dtype=dtype, extra={"hf": hf})
    except Exception as exc:  # ConfigError, TypeError from a wrongly typed field
        refuse(str(exc).removeprefix("invalid config: "))


def config_to_hf(cfg: PLTConfig) -> dict:
    """The Hugging Face config.json of a loopcoder PLTConfig (tests and fixtures)."""
    hf = dict(cfg.extra.get("hf", {}))
    return {"architectures": ["IQuestLoopCoderForCausalLM"], "model_type": "iquestloopcoder",
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
            "intermediate_size": cfg.mlp_hidden, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "max_position_embeddings": cfg.max_seq_len, "loop_num": cfg.loops, "loop_window_size": cfg.window,
            "tie_word_embeddings": cfg.tie_embeddings, "torch_dtype": cfg.dtype, "hidden_act": "silu",
            "attention_bias": False, "mlp_bias": False, "rope_scaling": None,
            **{k: v for k, v in hf.items() if k != "model_type"}}


# Weights -------------------------------------------------------------------------------------------
def _weight_map(model_dir: Path) -> dict[str, str] | None:
    """The index's tensor name -> shard file name, or None for a folder without an index."""
    index = model_dir / INDEX_FILE
    if not index.is_file():
        return None
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not all(isinstance(k, str) for k in weight_map):
            raise TypeError
        files = set(weight_map.values())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{index}: not a valid index (expected a JSON object with a weight_map)") from None
    if any(not isinstance(f, str) for f in files):
        raise CheckpointError(f"{index}: every weight_map value must be a shard file name")
    return weight_map


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of the folder: model.safetensors, or the shards the index lists."""
    index = model_dir / INDEX_FILE
    weight_map = _weight_map(model_dir)
    if weight_map is not None and (model_dir / SINGLE_FILE).is_file():  # which one is stale would be a guess
        raise CheckpointError(f"{model_dir}: holds both {SINGLE_FILE} and {INDEX_FILE} (Hugging Face loads the "
                              f"first, other tools the second); remove the stale one")
    if weight_map is not None:
        files = sorted(set(weight_map.values()))
        for f in files:
            if not isinstance(f, str) or "/" in f or f.startswith("."):
                raise CheckpointError(f"{index}: shard name {f!r} is not a file name in the folder")
            if not (model_dir / f).is_file():
                raise CheckpointError(f"{model_dir / f}: shard listed in {index.name} is missing")
        return [model_dir / f for f in files]
    single = model_dir / SINGLE_FILE
    if not single.is_file():
        other = sorted(p.name for p in model_dir.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".gguf"))
        raise CheckpointError(f"{single}: file not found (nor {INDEX_FILE})" + (
            f"; {other[0]} is not read: only safetensors weights are (convert it, e.g. with transformers' "
            "save_pretrained(..., safe_serialization=True))" if other else ""))
    return [single]


def shard_entries(model_dir: Path) -> dict[str, tuple[Path, tuple]]:
    """HF name -> (file, tensor_entries' entry) over the folder's weight files, from their headers
    only: each tensor inside its file, in exactly one file, and in the file the index names."""
    weight_map = _weight_map(model_dir)
    index = model_dir / INDEX_FILE
    out: dict[str, tuple[Path, tuple]] = {}
    for path in weight_files(model_dir):
        for name, entry in tensor_entries(path).items():
            if name in out:
                raise CheckpointError(f"{path}: tensor {name!r} is also in {out[name][0].name}: which one the "
                                      "model uses would be a guess")
            if weight_map is not None and weight_map.get(name) != path.name and not name.endswith(IGNORED_SUFFIXES):
                where = f"places it in {weight_map[name]}" if name in weight_map else "does not list it"
                raise CheckpointError(f"{path}: holds tensor {name!r} but {index.name} {where}")
            out[name] = (path, entry)
    for name, f in (weight_map or {}).items():
        if name not in out:
            raise CheckpointError(f"{index}: lists tensor {name!r} in {f}, which does not hold it")
    return out


def _header(path: Path) -> tuple[int, dict]:
    """(data start, header JSON) of a safetensors file."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 << 20:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a valid safetensors file (header is not an object)")
    header.pop("__metadata__", None)
    return 8 + n, header


def header_shapes(model_dir: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """HF name -> (shape, torch dtype name) over all weight files, from their headers only (each
    checked as shard_entries does)."""
    return {name: (tuple(entry[1]), str(entry[0]).removeprefix("torch."))
            for name, (_, entry) in shard_entries(model_dir).items()}


def tensor_entries(path: Path) -> dict:
    """name -> (torch dtype, shape, byte offset, element count) of every tensor of a safetensors
    file, from its header, each checked to lie inside the file with the right byte size."""
    import torch

    start, header = _header(path)
    size = path.stat().st_size
    out = {}
    for name, entry in header.items():
        try:
            dtype = getattr(torch, _ST_DTYPES.get(entry["dtype"], ""), None)
            shape = [int(d) for d in entry["shape"]]
            begin, end = (start + int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {entry['dtype']} (quantized or not a float); "
                                  "only F32/F16/BF16 checkpoints are supported")
        count = 1
        for d in shape:
            count *= d
        nbytes = count * torch.empty((), dtype=dtype).element_size()
        if not (start <= begin and end <= size and end - begin == nbytes):
            raise CheckpointError(f"{path}: tensor {name!r} lies outside the file or has the wrong byte size")
        out[name] = (dtype, shape, begin, count)
    return out


def mmap_tensors(path: Path, entries: dict | None = None) -> dict:
    """Every tensor of a safetensors file as a view of a private memory map of it (no copy);
    `entries`: its tensor_entries, when the caller has read them already."""
    import torch

    entries = tensor_entries(path) if entries is None else entries
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if path.stat().st_size else None
    return {name: (torch.frombuffer(mm, dtype=dtype, count=count, offset=begin) if count
                   else torch.empty(0, dtype=dtype)).view(shape)
            for name, (dtype, shape, begin, count) in entries.items()}


class FileTensor:
    """A tensor of a safetensors file read on demand with pread (a fresh buffer each time, freed
    after use: reading a 40B checkpoint tensor by tensor never keeps its pages resident)."""

    def __init__(self, path: Path, dtype, shape: list[int], begin: int, count: int):
        self.path, self.dtype, self.shape, self.begin, self.count = path, dtype, tuple(shape), begin, count

    def load(self):
        import os

        import torch

        nbytes = self.count * torch.empty((), dtype=self.dtype).element_size()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            buf = bytearray(nbytes)
            view, done = memoryview(buf), 0
            while done < nbytes:
                n = os.preadv(fd, [view[done:]], self.begin + done)
                if n <= 0:
                    raise CheckpointError(f"{self.path}: file ended inside a tensor")
                done += n
        finally:
            os.close(fd)
        t = torch.frombuffer(buf, dtype=self.dtype, count=self.count) if self.count else torch.empty(0, dtype=self.dtype)
        return t.view(self.shape)


def file_tensors(path: Path, entries: dict | None = None) -> dict:
    """Every tensor of a safetensors file as a FileTensor (nothing read yet); `entries` as mmap_tensors'."""
    entries = tensor_entries(path) if entries is None else entries
    return {name: FileTensor(path, *entry) for name, entry in entries.items()}


def load_weights(model_dir: Path, cfg: PLTConfig) -> dict:
    """Our state dict (names of PLT) from the folder's files, mapped through HF_NAMES and checked."""
    return {ours: read() for ours, read in weight_readers(model_dir, cfg).items()}


def weight_readers(model_dir: Path, cfg: PLTConfig, mapped: bool = True) -> dict:
    """Our name -> a function returning that weight (cfg.dtype, sign as our op wants it, NaN/Inf
    refused), reading only that tensor's pages of the memory-mapped shard. Names and shapes are
    checked here, before anything is read: a quantized export reads one weight at a time.
    mapped: views of a memory map (no copy: the model's weights); else FileTensors read with pread
    on each call (export/stream.py: nothing stays resident after use)."""
    from .checkpoint import weight_layout

    by_file: dict[Path, dict] = {}  # each shard's headers, read once (a bad index, shard or duplicate refused first)
    for name, (path, entry) in shard_entries(model_dir).items():
        by_file.setdefault(path, {})[name] = entry
    index = model_dir / INDEX_FILE
    found: dict[str, tuple] = {}  # HF name -> (tensor, file)
    for path, entries in sorted(by_file.items()):
        for name, t in (mmap_tensors if mapped else file_tensors)(path, entries).items():
            if not name.endswith(IGNORED_SUFFIXES):
                found[name] = (t, path)
    expected = {hf_name(name)[0]: (name, shape) for name, shape, _ in weight_layout(cfg)}
    where = index if index.is_file() else model_dir / SINGLE_FILE
    for theirs in expected:
        if theirs not in found:
            raise CheckpointError(f"{where}: tensor {theirs!r} is missing")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise CheckpointError(f"{found[extra[0]][1]}: unexpected tensor {extra[0]!r} for {model_dir / CONFIG_FILE}"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    readers = {}
    for theirs, (ours, shape) in expected.items():
        t, path = found[theirs]
        if tuple(t.shape) != tuple(shape):
            raise CheckpointError(f"{path}: tensor {theirs!r} has shape {tuple(t.shape)}, "
                                  f"{model_dir / CONFIG_FILE} implies {tuple(shape)}")
        readers[ours] = _reader(t, path, theirs, hf_name(ours)[1], cfg.dtype)
    return readers


def _reader(t, path: Path, theirs: str, negate: bool, dtype: str):
    def read():
        import torch

        data = t.load() if isinstance(t, FileTensor) else t
        if not _all_finite(data):
            raise CheckpointError(f"{path}: tensor {theirs!r} contains NaN or Inf")
        out = data.to(getattr(torch, dtype))  # a view when the file already holds dtype: no copy
        return -out if negate else out
    return read


def _all_finite(t, chunk: int = 1 << 22) -> bool:
    """No NaN/Inf, checked in chunks: isfinite's temporaries stay small next to a 40B model's tensors."""
    import torch

    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + chunk]).all()) for i in range(0, flat.numel(), chunk))


def save_hf_checkpoint(model, out_dir: str | Path, shards: int = 1, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a loopcoder PLT in the published Hugging Face layout (gate negated back); tests' fixture
    and the inverse of loading. shards > 1 writes model-0000i-of-0000n.safetensors + the index.

    As transformers' save_pretrained: config.json and the weights in out_dir are replaced, and the
    weight files of an earlier save that this one does not write are removed (an earlier save's
    index or shards would otherwise be what loads)."""
    from safetensors.torch import save

    from .checkpoint import atomic_write_bytes, state_dict_for_save

    out = Path(out_dir)
    tensors = {}
    for ours, t in state_dict_for_save(model).items():
        theirs, negate = hf_name(ours)
        tensors[theirs] = (-t if negate else t).contiguous()
    names = list(tensors)
    if shards <= 1:
        (out / INDEX_FILE).unlink(missing_ok=True)  # first: a stale index would win over the new file
    else:
        (out / SINGLE_FILE).unlink(missing_ok=True)
    atomic_write_bytes(out / CONFIG_FILE, (json.dumps(config_to_hf(model.cfg), indent=2) + "\n").encode())
    if shards <= 1:
        atomic_write_bytes(out / SINGLE_FILE, save(tensors, metadata={"format": "pt"}))
    else:
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[s::shards]}
            weight_map.update({n: fname for n in part})
            atomic_write_bytes(out / fname, save(part, metadata={"format": "pt"}))
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": weight_map}
        atomic_write_bytes(out / INDEX_FILE, (json.dumps(index, indent=2) + "\n").encode())
    for name, data in (extra_files or {}).items():
        atomic_write_bytes(out / name, data)
    written = {f"model-{s + 1:05d}-of-{shards:05d}.safetensors" for s in range(shards)} if shards > 1 else set()
    for stale in out.glob("model-*-of-*.safetensors"):
        if re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", stale.name) and stale.name not in written:
            stale.unlink()
    return out


def load_hf_checkpoint(model_dir: str | Path, dtype: str | None = None):
    """A Hugging Face LoopCoder folder -> PLT (eval mode), weights assigned from the memory maps."""
    import torch

    from .model import PLT, rope_tables

    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILE
    cfg = config_from_hf(read_json(path), path)
    if dtype is not None:
        cfg = cfg.replace(dtype=dtype)
    weights = load_weights(model_dir, cfg)
    with torch.device("meta"):
        model = PLT(cfg)
    if cfg.tie_embeddings:
        weights["lm_head.weight"] = weights["embed.weight"]
    model.load_state_dict(weights, strict=True, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
    model.rope_cos, model.rope_sin = cos, sin
    return model.eval()


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data
