"""Builds plugins/tests/gswa_host_harness.cpp: the real G-SWA kernels on the CPU execution model.

Shared by tests/test_kernels.py and plugins/tests/plant_bugs.py (which builds mutants of the kernels).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
PLUGIN_DIR = TESTS_DIR.parent / "gatedSlidingWindowAttentionPlugin"
KERNEL_NAME = "gatedSlidingWindowAttentionKernel.cu"
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))


class BuildError(RuntimeError):
    """The harness did not compile; the message holds the command and the compiler's last lines."""


def missing_toolchain() -> str | None:
    """Why the harness cannot be built here, or None."""
    if shutil.which("g++") is None:
        return "no host C++ compiler (g++) found"
    if not (CUDA_HOME / "include" / "cuda_fp16.h").exists():
        return f"CUDA headers not found under {CUDA_HOME}/include (set CUDA_HOME)"
    return None


def missing_sanitizers(work: Path) -> str | None:
    """Why an AddressSanitizer + UBSan build cannot link here (no libasan/libubsan), or None."""
    src = work / "asan_probe.cpp"
    src.write_text("int main() { return 0; }\n")
    proc = subprocess.run(["g++", "-fsanitize=address,undefined", str(src), "-o", str(work / "asan_probe")],
                          capture_output=True, text=True)
    return None if proc.returncode == 0 else "g++ cannot link -fsanitize=address,undefined (libasan/libubsan missing)"


def _flags(plugin_dir: Path, sanitize: bool) -> list[str]:
    opt = (["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
           if sanitize else ["-O2"])
    return ["-std=c++17", *opt, "-Wall", "-Wextra", "-Werror",
            # nvcc's defaults for the kernel file: no unknown-pragma or signed/unsigned warnings (threadIdx is unsigned)
            "-Wno-unknown-pragmas", "-Wno-sign-compare",
            f"-I{CUDA_HOME / 'include'}", f"-I{plugin_dir}", f"-I{TESTS_DIR}",
            "-include", str(TESTS_DIR / "cuda_cpu_model.h")]


def harness_command(exe: Path, plugin_dir: Path = PLUGIN_DIR, sanitize: bool = False) -> list[str]:
    """One g++ command: plugin_dir's .cu compiled as C++ against cuda_cpu_model.h, plus the model and harness."""
    return ["g++", *_flags(plugin_dir, sanitize), "-x", "c++", str(plugin_dir / KERNEL_NAME), "-x", "none",
            str(TESTS_DIR / "cuda_cpu_model.cpp"), str(TESTS_DIR / "gswa_host_harness.cpp"), "-o", str(exe)]


def build_selftest(exe: Path) -> Path:
    """cuda_cpu_model_selftest.cpp: the model's own semantics (shuffle arithmetic, NaN fill, limits, faults)."""
    _compile(["g++", *_flags(PLUGIN_DIR, False), str(TESTS_DIR / "cuda_cpu_model_selftest.cpp"),
              str(TESTS_DIR / "cuda_cpu_model.cpp"), "-o", str(exe)])
    return exe


def _compile(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"harness build failed:\n{' '.join(cmd)}\n{proc.stderr[-4000:]}")


def build_harness(exe: Path, plugin_dir: Path = PLUGIN_DIR, sanitize: bool = False,
                  object_cache: Path | None = None) -> Path:
    """Builds the harness. With object_cache, the model and harness objects are compiled once per
    (headers, flags) and reused, so only the .cu is compiled again (plant_bugs.py's mutants)."""
    if object_cache is None:
        _compile(harness_command(exe, plugin_dir, sanitize))
        return exe
    key = hashlib.sha1(repr(sanitize).encode())
    sources = sorted(plugin_dir.glob("*.h")) + sorted(TESTS_DIR.glob("*.[hc]pp")) + [TESTS_DIR / "cuda_cpu_model.h"]
    for header in sources:
        key.update(header.name.encode() + header.read_bytes())
    objects = []
    for src in (TESTS_DIR / "cuda_cpu_model.cpp", TESTS_DIR / "gswa_host_harness.cpp"):
        obj = object_cache / f"{src.stem}-{key.hexdigest()[:12]}.o"
        if not obj.exists():
            tmp = obj.with_suffix(f".{os.getpid()}.tmp.o")
            _compile(["g++", *_flags(plugin_dir, sanitize), "-c", str(src), "-o", str(tmp)])
            tmp.replace(obj)
        objects.append(str(obj))
    kernel_obj = exe.with_suffix(".kernels.o")
    _compile(["g++", *_flags(plugin_dir, sanitize), "-x", "c++", "-c", str(plugin_dir / KERNEL_NAME),
              "-o", str(kernel_obj)])
    link = ["-fsanitize=address,undefined"] if sanitize else []
    _compile(["g++", *link, str(kernel_obj), *objects, "-o", str(exe)])
    return exe


def run_harness(exe: Path, work: Path, manifest: str = "manifest.txt",
                timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs every case of work/manifest; exit 0 = all paths agree across resume orders and with the reference."""
    return subprocess.run([str(exe), str(work), manifest], capture_output=True, text=True, timeout=timeout)
