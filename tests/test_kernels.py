"""CPU checks of the G-SWA CUDA kernels (plugins/gatedSlidingWindowAttentionPlugin).

1. The .cu compiles with nvcc for every architecture the CMake project targets (one nvcc call,
   several -gencode flags).
2. The kernels' math (gswaMath.h: masks, split ranges, tile skipping, online softmax, partial
   merge, gate, dtype conversions) runs in a host harness (plugins/tests/gswa_host_harness.cpp)
   through the same decompositions as the decode and prefill kernels, on the shared test vectors,
   and must match the torch reference's expected outputs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from plt_deploy.ops import contract
from plt_deploy.ops.vectors import VECTORS_PATH, load_vectors

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "plugins" / "gatedSlidingWindowAttentionPlugin"
HARNESS_SRC = ROOT / "plugins" / "tests" / "gswa_host_harness.cpp"
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))

# Architectures of plugins/CMakeLists.txt's default CMAKE_CUDA_ARCHITECTURES "80-real;86-real;89-real;90".
GENCODE = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_86,code=sm_86",
    "-gencode=arch=compute_89,code=sm_89",
    "-gencode=arch=compute_90,code=[sm_90,compute_90]",
]

# Tolerances against the torch reference (expected is rounded to the case dtype).
TOLERANCES = {  # dtype -> (atol, rtol)
    "float32": (1e-5, 0.0),
    "float16": (2e-3, 2e-3),
    "bfloat16": (1e-2, 1e-2),
}

# Perturbed copies of cases: (base case, input, index, must the output change?).
PERTURBATIONS = (
    ("decode_long_cache", "value_global", (0, 1, 600), True),  # slot 600 <= t=699: visible
    ("decode_long_cache", "key_global", (1, 2, 300), False),  # slot 300 > t=257: causally masked
    ("decode_rows3_gqa4", "value_local", (0, 1, 0, 3), False),  # b=0, t=0: slot 3 is empty (-1)
    ("decode_basic", "value_local", (1, 0, 1, 1), True),  # b=1, t=13, window 4: slot 1 holds 13
    ("prefill_chunk", "key_local", (0, 0, 1, 5), True),  # position 5, seen by queries 5..7
)


def _nvcc() -> str:
    nvcc = shutil.which("nvcc") or str(CUDA_HOME / "bin" / "nvcc")
    if not Path(nvcc).exists():
        pytest.skip(f"nvcc not found (PATH or {CUDA_HOME}/bin); the CUDA toolkit is needed to compile the kernels")
    return nvcc


def test_kernels_compile_for_all_archs(tmp_path):
    nvcc = _nvcc()
    obj = tmp_path / "gswa_kernels.o"
    cmd = [nvcc, "-std=c++17", "-O3", "-t", "0", *GENCODE, "-c",
           str(PLUGIN_DIR / "gatedSlidingWindowAttentionKernel.cu"), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"nvcc failed:\n{' '.join(cmd)}\n{proc.stderr[-4000:]}"
    assert obj.stat().st_size > 0


# ---- host harness -------------------------------------------------------------------------------------

def _write_case(out: Path, name: str, attrs: dict, tensors: dict[str, torch.Tensor]) -> str:
    """Raw dumps of the inputs plus one manifest line (see gswa_host_harness.cpp)."""
    for spec in contract.INPUTS:
        t = tensors[spec.name].contiguous().flatten()
        (out / f"{name}.{spec.name}.bin").write_bytes(t.view(torch.uint8).numpy().tobytes())
    B, R, Hq, S, D = tensors["query"].shape
    Hkv, T = tensors["key_global"].shape[1:3]
    W = tensors["local_pos"].shape[1]
    return (f"{name} {attrs['dtype']} {B} {R} {Hq} {Hkv} {S} {D} {T} {W} "
            f"{attrs['window']} {attrs['scale']!r}\n")


def _perturbed_name(base: str, tensor: str, index: tuple[int, ...]) -> str:
    return f"{base}__{tensor}_" + "_".join(map(str, index))


@pytest.fixture(scope="session")
def harness_run(tmp_path_factory):
    """Builds the harness, exports the vectors (plus perturbed copies), runs it once.

    Returns (dir, {case name: (attrs, tensors)}).
    """
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler (g++) found")
    if not (CUDA_HOME / "include" / "cuda_fp16.h").exists():
        pytest.skip(f"CUDA headers not found under {CUDA_HOME}/include (set CUDA_HOME)")
    work = tmp_path_factory.mktemp("gswa_harness")
    exe = work / "gswa_host_harness"
    build = [cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", f"-I{CUDA_HOME / 'include'}", f"-I{PLUGIN_DIR}",
             str(HARNESS_SRC), "-o", str(exe)]
    proc = subprocess.run(build, capture_output=True, text=True)
    assert proc.returncode == 0, f"harness build failed:\n{' '.join(build)}\n{proc.stderr[-4000:]}"

    cases = {attrs["name"]: (attrs, tensors) for attrs, tensors in load_vectors(VECTORS_PATH)}
    for base, tensor, index, _ in PERTURBATIONS:
        attrs, tensors = cases[base]
        changed = dict(tensors)
        changed[tensor] = tensors[tensor].clone()
        changed[tensor][index] += 3.0
        cases[_perturbed_name(base, tensor, index)] = (attrs, changed)
    manifest = "".join(_write_case(work, name, attrs, tensors) for name, (attrs, tensors) in cases.items())
    (work / "manifest.txt").write_text(manifest)
    proc = subprocess.run([str(exe), str(work)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"harness failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return work, cases


def _outputs(work: Path, name: str, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every path's output file of one case, as tensors shaped and typed like `like`."""
    out = {}
    for f in sorted(work.glob(f"{name}.*.bin")):
        path = f.name[len(name) + 1:-len(".bin")]
        if path in {s.name for s in contract.INPUTS}:
            continue
        raw = bytearray(f.read_bytes())
        out[path] = torch.frombuffer(raw, dtype=like.dtype).reshape(like.shape)
    return out


def _max_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.float() - want.float()).abs().max().item()


def _case_names() -> list[str]:
    import json
    from safetensors import safe_open

    with safe_open(str(VECTORS_PATH), framework="pt") as f:
        return [c["name"] for c in json.loads(f.metadata()["cases"])]


@pytest.mark.parametrize("case", _case_names())
def test_harness_matches_reference(harness_run, case):
    work, cases = harness_run
    attrs, tensors = cases[case]
    expected = tensors["expected"]
    atol, rtol = TOLERANCES[attrs["dtype"]]
    outputs = _outputs(work, case, expected)
    assert {"plain", "prefill", "decode_splits1", "decode_splits7"} <= set(outputs), sorted(outputs)
    for path, got in outputs.items():
        err = _max_err(got, expected)
        assert torch.allclose(got.float(), expected.float(), atol=atol, rtol=rtol), (
            f"{case}/{path}: max abs error {err:.3g} exceeds atol={atol}, rtol={rtol} ({attrs['dtype']})")


def test_long_cache_uses_several_splits(harness_run):
    """The long-cache case must go through the real split-K merge with the kernels' own split count."""
    work, _ = harness_run
    names = {f.name for f in work.glob("decode_long_cache.decode_splits*.bin")}
    assert "decode_long_cache.decode_splits6.bin" in names, names  # ceil(700 / 128) = 6 splits


@pytest.mark.parametrize("base,tensor,index,changes", PERTURBATIONS)
def test_perturbed_inputs(harness_run, base, tensor, index, changes):
    """Visible keys change every path's output; masked keys (future slots, empty slots) do not."""
    work, cases = harness_run
    attrs, tensors = cases[base]
    expected = tensors["expected"]
    atol, rtol = TOLERANCES[attrs["dtype"]]
    for path, got in _outputs(work, _perturbed_name(base, tensor, index), expected).items():
        same = torch.allclose(got.float(), expected.float(), atol=atol, rtol=rtol)
        err = _max_err(got, expected)
        if changes:
            assert not same and err > 10 * atol, f"{path}: perturbing {tensor}{index} changed nothing ({err:.3g})"
        else:
            assert same, f"{path}: perturbing masked {tensor}{index} changed the output by {err:.3g}"
