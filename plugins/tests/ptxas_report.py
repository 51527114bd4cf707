#!/usr/bin/env python3
"""Registers and spills of every G-SWA kernel instantiation, from `nvcc -Xptxas -v`, per architecture.

    python plugins/tests/ptxas_report.py [--arch 80 ...]

Prints one line per kernel x dtype x DPL (= ceil(D / 32) rounded to 1, 2, 4, 8): registers per
thread, spill stores/loads (bytes) and stack frame. Needs nvcc (no GPU).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "gatedSlidingWindowAttentionPlugin"
KERNEL = PLUGIN_DIR / "gatedSlidingWindowAttentionKernel.cu"
ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
NAME = re.compile(r"\d+(gswa[A-Za-z]+Kernel)I(f|6__half|13__nv_bfloat16)Li(\d)E")
STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGS = re.compile(r"Used (\d+) registers")
DTYPE = {"f": "fp32", "6__half": "fp16", "13__nv_bfloat16": "bf16"}


def report(arch: str, kernel: Path = KERNEL) -> list[tuple]:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-std=c++17", "-O3", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v", "-c",
               f"-I{KERNEL.parent}", str(kernel), "-o", str(Path(tmp) / "k.o")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"nvcc failed:\n{proc.stderr[-3000:]}")
    rows, cur = [], None
    for line in proc.stderr.splitlines():
        if (m := ENTRY.search(line)):
            n = NAME.search(m.group(1))
            cur = [n.group(1), DTYPE[n.group(2)], int(n.group(3)), None, None, None, None] if n else None
        elif cur and (m := STACK.search(line)):
            cur[5], cur[3], cur[4] = int(m.group(1)), int(m.group(2)), int(m.group(3))
        elif cur and (m := REGS.search(line)):
            cur[6] = int(m.group(1))
            rows.append(tuple(cur))
            cur = None
    return sorted(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="*", default=["80"])
    ap.add_argument("--kernel", type=Path, default=KERNEL, help="another version of the .cu (e.g. from git show)")
    args = ap.parse_args()
    for arch in args.arch:
        print(f"sm_{arch}: kernel dtype DPL registers spill_stores spill_loads stack")
        for kernel, dtype, dpl, st, ld, stack, regs in report(arch, args.kernel):
            print(f"  {kernel:24s} {dtype} {dpl} {regs:4d} {st:5d} {ld:5d} {stack:5d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
