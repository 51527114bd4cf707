"""Builds plugins/tests/gswa_host_harness.cpp: the real G-SWA kernels on the CPU execution model.

Shared by tests/test_kernels.py and plugins/tests/plant_bugs.py (which builds mutants of the kernels).
"""

from __future__ import annotations

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


def harness_command(exe: Path, plugin_dir: Path = PLUGIN_DIR, sanitize: bool = False) -> list[str]:
    """g++ command compiling plugin_dir's .cu as C++ against cuda_cpu_model.h, plus the model and harness."""
    flags = (["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
             if sanitize else ["-O2"])
    return ["g++", "-std=c++17", *flags, "-Wall", "-Wextra", "-Werror",
            # nvcc's defaults for the kernel file: no unknown-pragma or signed/unsigned warnings (threadIdx is unsigned)
            "-Wno-unknown-pragmas", "-Wno-sign-compare",
            f"-I{CUDA_HOME / 'include'}", f"-I{plugin_dir}", f"-I{TESTS_DIR}",
            "-include", str(TESTS_DIR / "cuda_cpu_model.h"),
            "-x", "c++", str(plugin_dir / KERNEL_NAME), "-x", "none",
            str(TESTS_DIR / "cuda_cpu_model.cpp"), str(TESTS_DIR / "gswa_host_harness.cpp"), "-o", str(exe)]


def build_harness(exe: Path, plugin_dir: Path = PLUGIN_DIR, sanitize: bool = False) -> Path:
    cmd = harness_command(exe, plugin_dir, sanitize)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"harness build failed:\n{' '.join(cmd)}\n{proc.stderr[-4000:]}")
    return exe


def run_harness(exe: Path, work: Path, manifest: str = "manifest.txt", timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs every case of work/manifest; exit 0 = all paths agree across resume orders and with the reference."""
    return subprocess.run([str(exe), str(work), manifest], capture_output=True, text=True, timeout=timeout)
