"""Is TensorRT usable here? One function that answers with a one-line error, plus CUDA helpers.

CUDA access (device memory, streams, CUDA graphs) goes through torch.cuda: torch is already a
dependency, the runner hands logits back as torch tensors, and `torch.cuda.graph` can capture
`execute_async_v3`. Everything is imported lazily.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..errors import BackendUnavailable

INSTALL_TRT = "pip install tensorrt (needs an NVIDIA GPU and driver)"
INSTALL_TORCH_CUDA = "pip install torch --index-url https://download.pytorch.org/whl/cu126"


def require_tensorrt():
    """Import and return the `tensorrt` module, or raise BackendUnavailable saying what is missing."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "tensorrt":
            raise BackendUnavailable(f"TensorRT is not installed: {INSTALL_TRT}") from None
        raise BackendUnavailable(f"TensorRT cannot be imported (missing module {exc.name}): {INSTALL_TRT}") from None
    except (ImportError, OSError) as exc:  # bindings present, libnvinfer missing or mismatched
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendUnavailable(f"TensorRT's Python bindings cannot load its libraries ({first}): install the "
                                 "matching tensorrt wheel (pip install tensorrt) or add TensorRT's lib/ to "
                                 "LD_LIBRARY_PATH") from None
    if not hasattr(trt, "Builder") or not hasattr(trt, "Runtime"):
        raise BackendUnavailable(f"the installed `tensorrt` module is incomplete (no Builder/Runtime): {INSTALL_TRT}")
    return trt


def require_cuda_device() -> int:
    """Index of the current CUDA device, or BackendUnavailable saying why there is none."""
    import torch

    if torch.version.cuda is None:
        raise BackendUnavailable(f"no CUDA device: torch {torch.__version__} is a CPU-only build; install a CUDA "
                                 f"build ({INSTALL_TORCH_CUDA})")
    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA device: torch.cuda sees no GPU (check the NVIDIA driver with nvidia-smi "
                                 "and CUDA_VISIBLE_DEVICES)")
    return torch.cuda.current_device()


def require():
    """TensorRT and a CUDA device, checked in that order. Returns the tensorrt module."""
    trt = require_tensorrt()
    require_cuda_device()
    return trt


@lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None when TensorRT and a GPU are usable, else the one-line reason (for pytest skips)."""
    try:
        require()
    except BackendUnavailable as exc:
        return str(exc)
    return None


def compute_capability(device: int | None = None) -> str:
    """'8.6' for an sm_86 GPU."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


def device_name(device: int | None = None) -> str:
    import torch

    return torch.cuda.get_device_name(device)


def trt_version(trt) -> str:
    return str(trt.__version__)


def version_tuple(version: str) -> tuple[int, ...]:
    """'10.7.0.23' -> (10, 7, 0, 23); non-numeric tails are dropped ('10.8.0.post1' -> (10, 8, 0))."""
    out = []
    for part in version.split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


_TRT_WHEEL = re.compile(r"^tensorrt[-_]cu(\d+)(?:[-_](?:libs|bindings))?$", re.I)
_NVCC_RELEASE = re.compile(r"release (\d+)\.(\d+)")


def trt_cuda_major(dist_names: list[str] | None = None) -> int | None:
    """CUDA major version of the installed TensorRT wheels (tensorrt-cu12*, tensorrt-cu13*), None if
    TensorRT was not installed from wheels (tarball, deb: check by hand) or the wheels disagree."""
    if dist_names is None:
        import importlib.metadata as md

        dist_names = [d.metadata["Name"] or "" for d in md.distributions()]
    majors = {int(m.group(1)) for n in dist_names if (m := _TRT_WHEEL.match(n))}
    return majors.pop() if len(majors) == 1 else None


def nvcc_cuda_version(nvcc_output: str) -> tuple[int, int] | None:
    """(13, 0) from `nvcc --version` output."""
    m = _NVCC_RELEASE.search(nvcc_output)
    return (int(m.group(1)), int(m.group(2))) if m else None


def cuda_toolkit_line(nvcc_output: str, dist_names: list[str] | None = None) -> str:
    """One line saying the plugin's CUDA toolkit matches TensorRT's CUDA major version, or
    BackendUnavailable saying what to install. The plugin links the CUDA runtime statically, so the
    toolkit it is built with must be the major version TensorRT was built for."""
    nvcc = nvcc_cuda_version(nvcc_output)
    if nvcc is None:
        raise BackendUnavailable("cannot read the CUDA version from `nvcc --version`; install the CUDA toolkit")
    trt_major = trt_cuda_major(dist_names)
    if trt_major is None:
        return (f"CUDA toolkit {nvcc[0]}.{nvcc[1]}; TensorRT's CUDA major version is unknown (not installed from "
                f"tensorrt-cuNN wheels): make sure it is {nvcc[0]}")
    if trt_major != nvcc[0]:
        raise BackendUnavailable(f"nvcc is CUDA {nvcc[0]}.{nvcc[1]} but TensorRT is built for CUDA {trt_major}: put a "
                                 f"CUDA {trt_major}.x toolkit first on PATH (or install tensorrt-cu{nvcc[0]})")
    return f"CUDA toolkit {nvcc[0]}.{nvcc[1]} matches TensorRT's CUDA {trt_major}"
