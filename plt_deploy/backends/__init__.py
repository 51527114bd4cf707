"""Backend registry: name -> loader. Heavy runtimes (and torch) are imported only when asked for."""

from __future__ import annotations

from importlib import import_module

from ..errors import InputError

# name -> "module:function"; each function takes (path, **options) and returns a Backend.
LOADERS = {
    "torch": "plt_deploy.backends.torch_backend:load",
    "onnxruntime": "plt_deploy.backends.ort_backend:load",
    "tensorrt": "plt_deploy.backends.trt_backend:load",
}
BACKEND_NAMES = list(LOADERS)


def load_backend(name: str, path: str, **options):
    """Load `path` (a checkpoint folder for torch, an export folder for the others) on backend `name`."""
    if name not in LOADERS:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(LOADERS)}")
    from .folders import preflight

    preflight(name, path)
    module, func = LOADERS[name].split(":")
    return getattr(import_module(module), func)(path, **options)


def __getattr__(name):  # Backend, DecoderSession without importing torch at package import
    if name in ("Backend", "DecoderSession"):
        from . import base

        return getattr(base, name)
    raise AttributeError(name)


__all__ = ["Backend", "DecoderSession", "LOADERS", "BACKEND_NAMES", "load_backend"]
