"""Checkpoints: a folder with config.json + model.safetensors (+ optional tokenizer.json).

A Hugging Face folder (config.json with a `model_type`, e.g. IQuest-Coder-V1 Loop) is loaded
through plt_deploy/hf.py by the same entry points (`load_config`, `load_checkpoint`, `weight_files`).

No pickle anywhere: loading parses JSON and raw tensors and never executes code. Every mismatch
between the config and the weights is reported naming the tensor.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from .config import PLTConfig
from .errors import CheckpointError, ConfigError
from .model import PLT
from .output_folder import current_umask

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; the file gets what open() would give it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise



def state_dict_for_save(model: PLT) -> dict[str, torch.Tensor]:
    """Parameters only, tied lm_head dropped (it is the embedding)."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


# What each checkpoint tensor is, by name pattern (N = layer index); shapes come from the model.
TENSOR_ROLES = (
    ("embed.weight", "token embeddings; with tie_embeddings also the output projection"),
    ("lm_head.weight", "output projection (tie_embeddings false)"),
    ("layers.N.attn_norm.weight", "RMSNorm weight before attention"),
    ("layers.N.attn.wq.weight", "query projection, nn.Linear layout [out, in] (y = x W^T)"),
    ("layers.N.attn.wk.weight", "key projection (n_kv_heads * head_dim rows: grouped-query attention)"),
    ("layers.N.attn.wv.weight", "value projection"),
    ("layers.N.attn.wo.weight", "attention output projection"),
    ("layers.N.attn.q_norm.weight", "RMSNorm over head_dim on q, before RoPE (qk_norm)"),
    ("layers.N.attn.k_norm.weight", "RMSNorm over head_dim on k, before RoPE (qk_norm)"),
    ("layers.N.attn.gate_weight", "G-SWA gate w_h per head: g = sigmoid(q . w_h + b_h), q after RoPE"),
    ("layers.N.attn.gate_bias", "G-SWA gate bias b_h per head"),
    ("layers.N.mlp_norm.weight", "RMSNorm weight before the MLP"),
    ("layers.N.mlp.w1.weight", "SwiGLU gate projection: w2(silu(w1 x) * w3 x)"),
    ("layers.N.mlp.w3.weight", "SwiGLU up projection"),
    ("layers.N.mlp.w2.weight", "SwiGLU down projection"),
    ("norm.weight", "final RMSNorm before the output projection"),
)


def weight_layout(cfg: PLTConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, role) of every tensor model.safetensors must hold for `cfg`, in order.
    Built on the meta device: nothing is allocated, whatever the model's size."""
    import re

    with torch.device("meta"):
        names = {name: tuple(t.shape) for name, t in state_dict_for_save(PLT(cfg)).items()}
    roles = dict(TENSOR_ROLES)
    return [(name, shape, roles[re.sub(r"^layers\.\d+\.", "layers.N.", name)]) for name, shape in names.items()]


def save_checkpoint(model: PLT, out_dir: str | Path, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write config.json + model.safetensors into out_dir (made if missing), replacing those two files
    as transformers' save_pretrained does; the CLI's --out and --force rules are the commands' own."""
    from safetensors.torch import save

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a folder")
    tensors, metadata = state_dict_for_save(model), {"format": "pt", "producer": "plt-deploy"}
    # The data section does not depend on the header's metadata: its digest goes into the header
    # (read_weights checks it, so a flipped byte is a one-line error, not a silently wrong model).
    metadata["data_sha256"] = hashlib.sha256(_split(save(tensors, metadata=metadata))[1]).hexdigest()
    weights = save(tensors, metadata=metadata)
    atomic_write_bytes(out / WEIGHTS_FILE, weights)
    atomic_write_bytes(out / CONFIG_FILE, (json.dumps(model.cfg.to_dict(), indent=2) + "\n").encode())
    for name, data in (extra_files or {}).items():
        atomic_write_bytes(out / name, data)
    return out


def weight_files(model_dir: str | Path) -> list[Path]:
    """The files holding the weights: model.safetensors, or a Hugging Face folder's shards."""
    from . import hf

    model_dir = Path(model_dir)
    return hf.weight_files(model_dir) if hf.is_hf_folder(model_dir) else [model_dir / WEIGHTS_FILE]


def load_config(model_dir: str | Path) -> PLTConfig:
    from . import hf

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: no such checkpoint folder (make one with `plt-deploy init`)")
    if hf.is_hf_folder(model_dir):
        return hf.config_from_hf(hf.read_json(model_dir / CONFIG_FILE), model_dir / CONFIG_FILE)
    try:
        return PLTConfig.from_json(model_dir / CONFIG_FILE)
    except ConfigError as exc:
        data = hf.read_json(model_dir / CONFIG_FILE) if "unknown field" in str(exc) else None
        if isinstance(data, dict) and {"hidden_size", "num_hidden_layers"} <= set(data):  # an HF config.json
            raise CheckpointError(f"{model_dir / CONFIG_FILE}: a Hugging Face config without model_type; add "
                                  f"\"model_type\": \"iquestloopcoder\" if the model is an IQuest-Coder-V1 Loop "
                                  f"(the only Hugging Face family supported)") from None
        raise CheckpointError(str(exc)) from None


def _split(blob: bytes) -> tuple[memoryview, memoryview]:
    """A serialized safetensors file's JSON header and tensor bytes (after the 8-byte length)."""
    end = 8 + int.from_bytes(blob[:8], "little")
    return memoryview(blob)[8:end], memoryview(blob)[end:]


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; its data checked against the header's data_sha256 when it has
    one (save_checkpoint writes it; Hugging Face files and older checkpoints have none)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        blob = path.read_bytes()
        weights = load(blob)
        header, data = _split(blob)
        header = json.loads(bytes(header))
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({str(exc).splitlines()[0]})") from None
    expected = (header.get("__metadata__") or {}).get("data_sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(f"{path}: the tensor data does not match the checksum in its header (data_sha256): "
                              "the file is corrupt; restore it or train/init again")
    return weights


def weights_header(path: str | Path) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in a safetensors file, from its header (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({str(exc).splitlines()[0]})") from None


def load_checkpoint(model_dir: str | Path, dtype: str | None = None) -> PLT:
    """Load a checkpoint folder into a PLT model (eval mode). dtype overrides config.dtype.

    A Hugging Face folder (hf.is_hf_folder) is memory-mapped and keeps its dtype (hf.load_hf_checkpoint)."""
    from . import hf

    model_dir = Path(model_dir)
    if model_dir.is_dir() and hf.is_hf_folder(model_dir):
        return hf.load_hf_checkpoint(model_dir, dtype)
    cfg = load_config(model_dir)
    weights_path = model_dir / WEIGHTS_FILE
    weights = read_weights(weights_path)
    model = PLT(cfg)
    expected = state_dict_for_save(model)
    for kind, names in (("missing", set(expected) - set(weights)), ("unexpected", set(weights) - set(expected))):
        if names:
            first, more = sorted(names)[0], len(names) - 1
            raise CheckpointError(f"{weights_path}: {kind} tensor {first!r}" + (f" (and {more} more)" if more else "")
                                  + f"; the weights do not match {model_dir / CONFIG_FILE}")
    for name, ref in expected.items():
        got = weights[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise CheckpointError(f"{weights_path}: tensor {name!r} has shape {tuple(got.shape)}, config "
                                  f"{model_dir / CONFIG_FILE} implies {tuple(ref.shape)}")
        if not got.is_floating_point():
            raise CheckpointError(f"{weights_path}: tensor {name!r} has non-float dtype {got.dtype}")
        if not torch.isfinite(got).all():
            raise CheckpointError(f"{weights_path}: tensor {name!r} contains NaN or Inf")
    model.load_state_dict(weights, strict=False)
    target = getattr(torch, dtype or cfg.dtype)
    return model.to(target).eval()


RESULTS_FILE = "train_results.json"  # `train` writes it beside its checkpoints (training.py)


def init_checkpoint(preset: str, out: str | Path, mode: str = "plt", loops: int | None = None,
                    window: int | None = None, seed: int = 0, force: bool = False, **overrides) -> Path:
    """A randomly initialised checkpoint from a preset (`plt-deploy init`).

    Written into a temporary folder beside `out` and swapped in (output_folder.swap_in): with force,
    an earlier init/train output is replaced whole (no stale train_results.json or variant folder);
    a folder holding anything else is refused first (output_folder.check_checkpoint_folder)."""
    import shutil

    from .output_folder import check_checkpoint_folder, claim_output, swap_in, temporary_folder

    out = Path(out)
    check = lambda: check_checkpoint_folder(out, force, "init")  # noqa: E731  (before, under the lock, at the swap)
    check()
    changes = {k: v for k, v in dict(mode=mode, loops=loops, window=window, **overrides).items() if v is not None}
    cfg = PLTConfig.from_name(preset, **changes)
    model = PLT(cfg).init_weights(seed).to(getattr(torch, cfg.dtype))  # weights in cfg.dtype
    with claim_output(out, command="init"):
        check()  # again, holding the lock: what is replaced is what was checked
        tmp = temporary_folder(out)
        try:
            save_checkpoint(model, tmp)  # files get what open() would give them (atomic_write_bytes)
            swap_in(tmp, out, recheck=check)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
