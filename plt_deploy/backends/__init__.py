"""Backend registry: name -> loader. Heavy runtimes are imported only when asked for."""

from __future__ import annotations

from importlib import import_module

from ..errors import InputError
from .base import Backend, DecoderSession

# name -> "module:function"; each function takes (path, **options) and returns a Backend.
LOADERS = {
    "torch": "plt_deploy.backends.torch_backend:load",
    "onnxruntime": "plt_deploy.backends.ort_backend:load",
    "tensorrt": "plt_deploy.backends.trt_backend:load",
}


def load_backend(name: str, path: str, **options) -> Backend:
    """Load `path` (a checkpoint folder for torch, an export folder for the others) on backend `name`."""
    if name not in LOADERS:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(LOADERS)}")
    module, func = LOADERS[name].split(":")
    return getattr(import_module(module), func)(path, **options)


__all__ = ["Backend", "DecoderSession", "LOADERS", "load_backend"]
