#!/usr/bin/env python3
"""Plants bugs into a temporary copy of the G-SWA kernels and shows that the CPU execution model
catches each one (the harness exits non-zero: a model fault, differing outputs between resume
orders, a launch refused, or a mismatch against the float64 reference).

    python plugins/tests/plant_bugs.py                 # all mutants on the default case set
    python plugins/tests/plant_bugs.py --only removed-barrier wrong-shuffle-lane
    python plugins/tests/plant_bugs.py --cases DIR --manifest manifest_mutants.txt

Without --cases it writes the cases itself (tests/test_kernels.py's writer, needs torch and the
plt_deploy package). Exit status 0 iff the unmodified kernels pass and every mutant is caught.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gswa_cpu_build  # noqa: E402
from gswa_cpu_build import KERNEL_NAME, PLUGIN_DIR  # noqa: E402

# Cases the mutants run on: multi-split decode, GQA rows, prefill with local tiles, opt-in shared memory.
MUTANT_CASES = ("decode_long_cache", "decode_rows3_gqa4", "prefill_chunk", "prefill_fp16", "gen_d200_fp32",
                "gen_prefill_d8_fp16", "gen_d256_prefill_fp16")


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # in the plugin folder
    old: str  # must occur exactly once
    new: str
    what: str


MUTANTS = (
    Mutant("removed-barrier", KERNEL_NAME,
           "    __syncthreads();\n    att.template scoreTile<kLocal>",
           "    att.template scoreTile<kLocal>",
           "attendTile: no barrier between loading a K tile and scoring it"),
    Mutant("wrong-shuffle-lane", KERNEL_NAME,
           "__shfl_sync(kFullMask, w[qi], kk)",
           "__shfl_sync(kFullMask, w[qi], kk + 1)",
           "accumulateTile: key kk's weight taken from lane kk + 1"),
    Mutant("smem-8-bytes-short", KERNEL_NAME,
           "size_t const smem = attentionSmemBytes(p.queriesPerBlock, dims.headDim);",
           "size_t const smem = attentionSmemBytes(p.queriesPerBlock, dims.headDim) - 8;",
           "decode launcher: dynamic shared memory 8 bytes smaller than the block's buffers"),
    Mutant("split-range-off-by-one", KERNEL_NAME,
           "    end = min(end, maxCount);",
           "    end = min(end - 1, maxCount);",
           "decode split kernel: each split stops one slot early"),
    Mutant("divergent-barrier", KERNEL_NAME,
           "        sm.keyPos[threadIdx.x] = threadIdx.x < tileLen ? keyPosOf(threadIdx.x) : -1;\n    }\n"
           "    __syncthreads();\n",
           "        sm.keyPos[threadIdx.x] = threadIdx.x < tileLen ? keyPosOf(threadIdx.x) : -1;\n"
           "        __syncthreads();\n    }\n",
           "attendTile: the tile barrier inside `if (threadIdx.x < kKeyTile)`"),
    Mutant("missing-smem-opt-in", KERNEL_NAME,
           "    if (smem <= kDefaultSmemBytes)\n",
           "    if (smem <= kDefaultSmemBytes || smem > 0)\n",
           "gswaPrepareKernels never raises the limit: the D = 256 prefill launch (> 48 KiB) must be refused"),
    Mutant("lane-exits-before-shuffle", KERNEL_NAME,
           "    if (qv >= numQv)\n    {\n        return; // whole warp",
           "    if (qv >= numQv || (lane == 31 && qv == numQv - 1))\n    {\n        return; // whole warp",
           "combine kernel: the last lane of the last query vector exits before the warp's shuffles"),
    Mutant("global-row-mixes-local", KERNEL_NAME,
           "    if (r < g.globalRows)\n",
           "    if (r < 0)\n",
           "combine kernel: rows < G get the local part and the gate"),
    Mutant("local-row-not-offset", KERNEL_NAME,
           "localRow(b, r - g.globalRows, kvh, slot,",
           "localRow(b, r, kvh, slot,",
           "combine kernel: key_local indexed with r instead of r - G"),
)


def plant(mutant: Mutant, dest: Path) -> Path:
    """Copy of the plugin folder with the mutant applied; returns the folder."""
    shutil.copytree(PLUGIN_DIR, dest)
    path = dest / mutant.file
    text = path.read_text()
    if text.count(mutant.old) != 1:
        raise SystemExit(f"plant_bugs.py: mutant {mutant.name}: pattern found {text.count(mutant.old)} times in "
                         f"{mutant.file} (must be once); update the mutant to the current kernels")
    path.write_text(text.replace(mutant.old, mutant.new))
    return dest


def _reason(proc) -> str:
    """The most telling line of a failed harness run: a model fault first, then a mismatch."""
    lines = (proc.stderr + "\n" + proc.stdout).splitlines()
    for keys in (("cuda_cpu_model:", "AddressSanitizer", "runtime error"), ("MISMATCH",), ("gswa_host_harness:",)):
        for line in lines:
            if any(k in line for k in keys):
                return line.strip()[:300]
    return "harness passed" if proc.returncode == 0 else f"exit status {proc.returncode}"


def run_one(mutant: Mutant | None, cases: Path, manifest: str, scratch: Path) -> tuple[bool, str]:
    """(harness passed, reason) for the mutant (None = the unmodified kernels)."""
    name = mutant.name if mutant else "unmodified"
    plugin_dir = plant(mutant, scratch / name) if mutant else PLUGIN_DIR
    try:
        exe = gswa_cpu_build.build_harness(scratch / f"harness_{name}", plugin_dir, object_cache=scratch)
    except gswa_cpu_build.BuildError as e:
        return True, f"the mutant does not compile, so it proves nothing: {str(e)[-300:]}"
    proc = gswa_cpu_build.run_harness(exe, cases, manifest, timeout=300)
    return proc.returncode == 0, _reason(proc)


def write_default_cases(work: Path) -> str:
    """Writes MUTANT_CASES with tests/test_kernels.py's case writer; returns the manifest name."""
    spec = importlib.util.spec_from_file_location(
        "test_kernels", Path(__file__).resolve().parents[2] / "tests" / "test_kernels.py")
    tk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tk)
    cases = tk.all_cases()
    lines = [tk.write_case(work, n, *cases[n]) for n in MUTANT_CASES]
    (work / "manifest_mutants.txt").write_text("".join(lines))
    return "manifest_mutants.txt"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="mutant names (default: all)")
    ap.add_argument("--cases", type=Path, help="directory with case files and the manifest (default: write them)")
    ap.add_argument("--manifest", default="manifest_mutants.txt")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    if (reason := gswa_cpu_build.missing_toolchain()):
        print(f"plant_bugs.py: {reason}", file=sys.stderr)
        return 2
    known = {m.name: m for m in MUTANTS}
    unknown = sorted(set(args.only or []) - set(known))
    if unknown:
        print(f"plant_bugs.py: unknown mutant(s) {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    mutants = [known[n] for n in args.only] if args.only else list(MUTANTS)
    with tempfile.TemporaryDirectory(prefix="gswa_mutants_") as tmp:
        scratch = Path(tmp)
        cases, manifest = args.cases, args.manifest
        if cases is None:
            cases = scratch / "cases"
            cases.mkdir()
            manifest = write_default_cases(cases)
        ok, why = run_one(None, cases, manifest, scratch)
        print(f"{'PASS' if ok else 'FAIL'}   unmodified kernels{'' if ok else ': ' + why}", flush=True)
        if not ok:
            return 1
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            results = list(pool.map(lambda m: run_one(m, cases, manifest, scratch), mutants))
    missed = 0
    for m, (passed, why) in zip(mutants, results):
        missed += passed
        print(f"{'MISSED' if passed else 'CAUGHT'} {m.name:26s} ({m.what})\n       {why}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
