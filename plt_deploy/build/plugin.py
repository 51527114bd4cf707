"""Find, hash and load the G-SWA plugin library (libplt_trt_plugins.so) into this process.

Where it comes from, first match wins: `--plugin PATH`, env `PLT_TRT_PLUGIN`, then the CMake build
folders `plugins/build/` and `build/plugins/` under the repository root and the working directory.
An explicit path that does not exist is an error naming that path (no silent fallback).

How it is loaded (see plugins/common/pluginEntryPoints.cpp and FACTS.md): the library does not
link libnvinfer, its `getPluginRegistry` resolves at load time from the process. Python loads
libnvinfer through an extension module, i.e. RTLD_LOCAL, so its symbols are not visible to a later
dlopen; `_promote_libnvinfer` re-opens the already loaded libnvinfer with RTLD_NOLOAD|RTLD_GLOBAL
first. Then `ctypes.CDLL` runs the library's static registration (REGISTER_TENSORRT_PLUGIN); if the
library was built with -DPLT_STATIC_PLUGIN_REGISTRATION=OFF, `IPluginRegistry.load_library` calls
its `getCreators` instead (doing both would register the creator twice). Finally the creator
GatedSlidingWindowAttention / "1" / "plt" must be in the registry.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError, BackendUnavailable
from ..ops import contract

LIBRARY_NAME = "libplt_trt_plugins.so"
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
    how: str  # "static-registration" | "load_library" | "already-loaded"


_LOADED: dict[Path, LoadedPlugin] = {}


def loaded_libraries(name_prefix: str) -> list[str]:
    """Paths of shared objects mapped in this process whose file name starts with `name_prefix`."""
    seen: list[str] = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6:
                    path = parts[5].strip()
                    if os.path.basename(path).startswith(name_prefix) and path not in seen:
                        seen.append(path)
    except OSError:
        pass
    return seen


def promote_global(name_prefix: str) -> list[str]:
    """Re-open already loaded libraries `name_prefix*` with RTLD_GLOBAL so later dlopens see their symbols."""
    done = []
    for path in loaded_libraries(name_prefix):
        try:
            ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
            done.append(path)
        except OSError:
            continue
    return done


def creator_registered(trt) -> bool:
    """Is GatedSlidingWindowAttention / version / namespace in TensorRT's plugin registry?"""
    registry = trt.get_plugin_registry()
    version = str(contract.OP_VERSION)
    try:
        if registry.get_creator(contract.OP_NAME, version, contract.PLUGIN_NAMESPACE) is not None:
            return True
    except Exception:  # noqa: BLE001  (older bindings raise instead of returning None)
        pass
    for creator in getattr(registry, "all_creators", []):
        if (getattr(creator, "name", None) == contract.OP_NAME and str(getattr(creator, "plugin_version", "")) == version
                and getattr(creator, "plugin_namespace", None) == contract.PLUGIN_NAMESPACE):
            return True
    return False


def load_plugin(trt, explicit: str | os.PathLike | None = None) -> LoadedPlugin:
    """Find and load the plugin library once per process; verify the G-SWA creator is registered."""
    path = find_plugin(explicit)
    if path in _LOADED:
        return _LOADED[path]
    sha = plugin_sha256(path)
    if creator_registered(trt):  # e.g. loaded by a host application or an earlier path
        how = "already-loaded"
    else:
        promote_global("libnvinfer.so")
        try:
            ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL)
        except OSError as exc:
            raise BackendUnavailable(f"{path}: cannot load the plugin library ({str(exc).splitlines()[0]}); "
                                     "rebuild it against this TensorRT and CUDA") from None
        how = "static-registration"
        if not creator_registered(trt):
            handle = trt.get_plugin_registry().load_library(str(path))
            how = "load_library"
            if handle is None:
                raise BackendUnavailable(f"{path}: IPluginRegistry.load_library failed; rebuild the plugin against "
                                         f"TensorRT {trt.__version__}")
    if not creator_registered(trt):
        raise ArtifactError(f"{path}: loaded, but no plugin creator {contract.OP_NAME!r} version "
                            f"{contract.OP_VERSION} namespace {contract.PLUGIN_NAMESPACE!r} is registered; is this "
                            "the PLT plugin library built from plugins/?")
    _LOADED[path] = LoadedPlugin(path, sha, how)
    return _LOADED[path]
