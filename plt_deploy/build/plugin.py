"""Find, hash and load the G-SWA plugin library (libplt_trt_plugins.so) into this process.

Where it comes from, first match wins: `--plugin PATH`, env `PLT_TRT_PLUGIN`, then the CMake build
folders `plugins/build/` and `build/plugins/` under the repository root and the working directory.
An explicit path that does not exist is an error naming that path (no silent fallback).

How it is loaded (plugins/README.md lists every path): `ctypes.CDLL(path, mode=os.RTLD_LOCAL)` after
`import tensorrt`. RTLD_LOCAL (ctypes' default, stated): nothing else resolves symbols from the library.
libplt_trt_plugins.so registers its creator under namespace "plt" in this process's registry on that
dlopen (it finds the registry itself: no libnvinfer link) and logs through TensorRT's global logger.
libplt_trt_plugins_dynamic.so registers nothing on dlopen; it exports getCreators, so it is then
handed to `IPluginRegistry.load_library`, which calls setLoggerFinder and getCreators: one mechanism
per library, never both. Success means the exact lookup
`get_creator(GatedSlidingWindowAttention, OP_VERSION, "plt")`, the one the ONNX parser does.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError, BackendUnavailable
from ..ops import contract

LIBRARY_NAME = "libplt_trt_plugins.so"  # registers on dlopen; libplt_trt_plugins_dynamic.so is loadLibrary's
ENV_VAR = "PLT_TRT_PLUGIN"
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_HINT = ("build it with: cmake -S plugins -B plugins/build -DTENSORRT_ROOT=<TensorRT root> && "
              "cmake --build plugins/build -j, or pass --plugin / set PLT_TRT_PLUGIN")


def default_candidates() -> list[Path]:
    """The CMake build folders searched when neither --plugin nor PLT_TRT_PLUGIN is given."""
    out: list[Path] = []
    for base in (REPO_ROOT, Path.cwd()):
        for sub in ("plugins/build", "build/plugins"):
            p = (base / sub / LIBRARY_NAME).resolve()
            if p not in out:
                out.append(p)
    return out


def find_plugin(explicit: str | os.PathLike | None = None, candidates: list[Path] | None = None) -> Path:
    """The plugin library's path, or ArtifactError naming what was looked for and how to build it."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ArtifactError(f"--plugin {p}: file not found; {BUILD_HINT}")
        return p.resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ArtifactError(f"{ENV_VAR}={p}: file not found; {BUILD_HINT}")
        return p.resolve()
    candidates = default_candidates() if candidates is None else candidates
    for p in candidates:
        if p.is_file():
            return p
    looked = ", ".join(str(p) for p in candidates)
    raise ArtifactError(f"{LIBRARY_NAME} not found (looked in {looked}); {BUILD_HINT}")


def plugin_sha256(path: Path) -> str:
    from ..export.manifest import sha256_file

    return sha256_file(Path(path))


@dataclass(frozen=True)
class LoadedPlugin:
    path: Path
    sha256: str
    how: str  # "dlopen" | "load_library" | "already-registered"


_LOADED: dict[Path, LoadedPlugin] = {}


def creator_registered(registry) -> bool:
    """Does `registry` (trt.get_plugin_registry()) resolve the exact (name, version, namespace) the
    ONNX parser looks up? A creator registered under another namespace (e.g. "", whatever the
    creator itself reports) does not count."""
    return registry.get_creator(contract.OP_NAME, str(contract.OP_VERSION), contract.PLUGIN_NAMESPACE) is not None


def load_plugin(trt, explicit: str | os.PathLike | None = None) -> LoadedPlugin:
    """Find and load the plugin library once per process; verify the G-SWA creator is registered."""
    path = find_plugin(explicit)
    if path in _LOADED:
        return _LOADED[path]
    sha = plugin_sha256(path)
    registry = trt.get_plugin_registry()
    if creator_registered(registry):  # registered by the host application before us
        how = "already-registered"
    else:
        try:
            lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL)  # libplt_trt_plugins.so registers here ("plt")
        except OSError as exc:
            raise BackendUnavailable(f"{path}: cannot load the plugin library ({str(exc).splitlines()[0]}); "
                                     "rebuild it against this TensorRT and CUDA") from None
        how = "dlopen"
        if not creator_registered(registry) and hasattr(lib, "getCreators"):  # the loadLibrary library
            if registry.load_library(str(path)) is None:
                raise BackendUnavailable(f"{path}: IPluginRegistry.load_library failed; rebuild the plugin against "
                                         f"TensorRT {trt.__version__}")
            how = "load_library"
    if not creator_registered(registry):
        raise ArtifactError(f"{path}: loaded, but no plugin creator {contract.OP_NAME!r} version "
                            f"{contract.OP_VERSION} namespace {contract.PLUGIN_NAMESPACE!r} is registered; is this "
                            "the PLT plugin library built from plugins/?")
    _LOADED[path] = LoadedPlugin(path, sha, how)
    return _LOADED[path]
