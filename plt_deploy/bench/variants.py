"""The models a benchmark compares: plt (L = 2, 3), looped (L = 2, sequential) and vanilla (L = 1).

All variants come from one config and share the same block weights (shapes match across modes;
only plt has the G-SWA gate parameters, zero-initialised when the source has none), so timing
differences come from the decode schedule alone. `open_backend` puts a variant on a runtime:
in memory for torch, through the exporter's library function into a work folder for the others.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import torch

from ..config import PLTConfig
from ..errors import BackendUnavailable, PLTError
from ..model import PLT


@dataclass(frozen=True)
class Variant:
    name: str
    mode: str
    loops: int


VARIANTS = (
    Variant("plt-2", "plt", 2),
    Variant("plt-3", "plt", 3),
    Variant("looped-2", "looped", 2),
    Variant("vanilla", "vanilla", 1),
)
BY_NAME = {v.name: v for v in VARIANTS}


def variant_config(base: PLTConfig, variant: Variant) -> PLTConfig:
    return base.replace(mode=variant.mode, loops=variant.loops)


def build_models(base: PLTConfig, variants=VARIANTS, source: PLT | None = None, seed: int = 0) -> dict[str, PLT]:
    """One PLT per variant with the weights of `source` (or a random init of `base` with `seed`)."""
    if source is None:
        source = PLT(base).init_weights(seed)
    weights = source.state_dict()
    models = {}
    for variant in variants:
        model = PLT(variant_config(base, variant))
        own = model.state_dict()
        missing, _ = model.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)
        bad = [k for k in missing if "gate" not in k]  # only the G-SWA gate may be absent (stays zero)
        if bad:
            raise PLTError(f"variant {variant.name}: source weights lack {bad[0]!r}")
        models[variant.name] = model.to(getattr(torch, base.dtype)).eval()
    return models


def weight_bytes(model: PLT) -> int:
    """Bytes of the distinct parameters (a tied lm_head counted once): what one decode step reads."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def _reusable(out: Path, ckpt: Path, max_batch: int) -> bool:
    """Whether `out` is an export of exactly this checkpoint (same config and weight hashes)."""
    try:
        from ..export.manifest import model_identity, read_manifest

        m = read_manifest(out, verify_hashes=False)
        data = json.loads((out / "manifest.json").read_text())
        return data["model"]["sha256"] == model_identity(ckpt) and m.max_batch >= max_batch
    except Exception:  # no export, an older format, a half-written folder: export again
        return False


def _export(model: PLT, workdir: Path, name: str, max_batch: int, validate: bool) -> Path:
    """Save a checkpoint and export it with the project's exporter (reusing an identical earlier
    export in `workdir`); returns the export folder."""
    from ..checkpoint import save_checkpoint

    try:
        export = import_module("plt_deploy.export")
        if not hasattr(export, "export_model"):
            export = import_module("plt_deploy.export.exporter")
    except ModuleNotFoundError as exc:
        raise BackendUnavailable(f"the ONNX exporter is not available ({exc}); use --backend torch") from None
    ckpt = save_checkpoint(model, workdir / f"ckpt-{name}")
    out = workdir / f"onnx-{name}"
    max_batch = max(max_batch, 2)
    if _reusable(out, ckpt, max_batch):
        return out
    wanted = {"max_batch": max_batch, "force": True, "progress": False, "validate": validate}
    accepted = inspect.signature(export.export_model).parameters
    export.export_model(ckpt, out, **{k: v for k, v in wanted.items() if k in accepted})
    return out


def open_backend(backend: str, model: PLT, name: str, workdir: Path, threads: int | None = None,
                 provider: str | None = None, max_batch: int = 1, validate: bool = True):
    """A Backend running `model`: torch in memory, anything else from an export in `workdir`."""
    if backend == "torch":
        from ..backends.torch_backend import TorchBackend

        return TorchBackend(model, threads=threads)
    from ..backends import LOADERS, load_backend

    if backend not in LOADERS:
        raise PLTError(f"unknown backend {backend!r}; choose one of {', '.join(LOADERS)}")
    module = LOADERS[backend].split(":")[0]
    try:
        import_module(module)  # fail before a slow export if the runtime is missing
    except ModuleNotFoundError as exc:
        raise BackendUnavailable(f"backend {backend!r} is not available here ({exc})") from None
    options = {"threads": threads}
    if provider:
        options["provider"] = provider
    folder = _export(model, workdir, name, max_batch, validate)
    if backend == "tensorrt":  # the loader never builds: bench builds its engines like `plt-deploy build`
        _build_engines(folder)
    return load_backend(backend, str(folder), **options)


def _build_engines(folder: Path) -> None:
    """Engines for an export of the bench's workdir, unless `plt-deploy build` already recorded some."""
    import json

    from ..build import plan_check
    from ..build.engine import build_engines

    if plan_check.SECTION not in json.loads((folder / "manifest.json").read_text()):
        build_engines(folder, log=lambda *_: None)
