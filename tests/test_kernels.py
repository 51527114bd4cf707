"""CPU checks of the G-SWA CUDA kernels (plugins/gatedSlidingWindowAttentionPlugin).

1. The .cu compiles with nvcc for every architecture the CMake project targets.
2. The real __global__ kernels run on the CPU through the project's launchers, compiled by g++
   against a small execution model of CUDA (plugins/tests/cuda_cpu_model.h: a fiber per thread,
   true block barriers, warp-shuffle rendezvous, exact NaN-filled shared memory, launch limits),
   in three resume orders with bitwise-equal outputs (plugins/tests/gswa_host_harness.cpp).
   Every path (auto, prefill, decode with several split counts) must match the vectors' expected
   outputs (tests/data/gswa_vectors.safetensors) and a float64 reference on those vectors plus
   generated cases (GQA, long caches, every head-dim class, fp32/fp16/bf16).
3. One build under AddressSanitizer + UBSan runs a smaller case set.
4. plugins/tests/plant_bugs.py plants bugs into a copy of the .cu; the model must catch each one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plt_deploy.ops import contract
from plt_deploy.ops.vectors import VECTORS_PATH, load_vectors

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins" / "tests"))
import gswa_cpu_build  # noqa: E402  (plugins/tests/gswa_cpu_build.py: the harness build, shared with plant_bugs.py)
import plant_bugs  # noqa: E402
from gswa_cpu_build import CUDA_HOME, PLUGIN_DIR  # noqa: E402

KERNEL_SRC = PLUGIN_DIR / gswa_cpu_build.KERNEL_NAME

# Architectures of plugins/CMakeLists.txt's default CMAKE_CUDA_ARCHITECTURES "75-real;80-real;86-real;89-real;90".
GENCODE = [
    "-gencode=arch=compute_75,code=sm_75",
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_86,code=sm_86",
    "-gencode=arch=compute_89,code=sm_89",
    "-gencode=arch=compute_90,code=[sm_90,compute_90]",
]

# Kernel outputs (in the case dtype) against a reference (rounded to the dtype or float64).
TOLERANCES = {  # dtype -> (atol, rtol)
    "float32": (1e-5, 0.0),
    "float16": (2e-3, 2e-3),
    "bfloat16": (1e-2, 1e-2),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Perturbed copies of vector cases: (base case, input, index, must the output change?).
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
    cmd = [nvcc, "-std=c++17", "-O3", "-t", "0", *GENCODE, "-c", str(KERNEL_SRC), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"nvcc failed:\n{' '.join(cmd)}\n{proc.stderr[-4000:]}"
    assert obj.stat().st_size > 0


def test_launcher_header_compiles_as_plain_cpp(tmp_path):
    """The plugin's .cpp includes the kernel header with a host compiler and no CUDA device support."""
    if (reason := gswa_cpu_build.missing_toolchain()):
        pytest.skip(reason)
    src = tmp_path / "uses_header.cpp"
    src.write_text('#include "gatedSlidingWindowAttentionKernel.h"\n'
                   "int main() { plt::gswa::GswaDims d{}; d.globalRows = 1; "
                   "return plt::gswa::gswaCheckDims(d) == nullptr; }\n")
    cmd = ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", f"-I{CUDA_HOME / 'include'}",
           f"-I{PLUGIN_DIR}", str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-3000:]}"


# ---- the harness: real kernels on the CPU execution model -------------------------------------------------

def _build(work: Path, sanitize: bool = False) -> Path:
    reason = gswa_cpu_build.missing_toolchain()
    if reason:
        pytest.skip(reason)
    exe = work / ("gswa_host_harness_asan" if sanitize else "gswa_host_harness")
    try:
        return gswa_cpu_build.build_harness(exe, sanitize=sanitize)
    except gswa_cpu_build.BuildError as e:
        pytest.fail(str(e))


def write_case(out: Path, name: str, attrs: dict, tensors: dict[str, torch.Tensor]) -> str:
    """Raw dumps of the inputs plus one manifest line (format: gswa_host_harness.cpp)."""
    for spec in contract.INPUTS:
        t = tensors[spec.name].contiguous().flatten()
        (out / f"{name}.{spec.name}.bin").write_bytes(t.view(torch.uint8).numpy().tobytes())
    B, R, Hq, S, D = tensors["query"].shape
    Hkv, T = tensors["key_global"].shape[1:3]
    W = tensors["local_pos"].shape[1]
    G = R - tensors["key_local"].shape[1]
    atol, rtol = TOLERANCES[attrs["dtype"]]
    return (f"{name} {attrs['dtype']} {B} {R} {G} {Hq} {Hkv} {S} {D} {T} {W} "
            f"{attrs['window']} {attrs['scale']!r} {atol!r} {rtol!r}\n")


def _ring_positions(t_last: int, W: int) -> list[int]:
    """Ring of W slots after writing positions 0..t_last: slot i holds the newest p = i (mod W), -1 if none."""
    out = []
    for i in range(W):
        p = t_last - ((t_last - i) % W)
        out.append(p if p >= 0 else -1)
    return out


def generated_case(name: str, dtype: str, B: int, R: int, G: int, Hq: int, Hkv: int, S: int, D: int, T: int,
                   W: int, window: int, t_last: list[int], seed: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """Random inputs of one case; query b sees positions t_last[b] - S + 1 .. t_last[b] (ragged across b)."""
    g = torch.Generator().manual_seed(seed)
    dt = DTYPES[dtype]

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dt)

    qpos = torch.tensor([[t - S + 1 + s for s in range(S)] for t in t_last], dtype=torch.int64)  # [B, S]
    tensors = {
        "query": randn(B, R, Hq, S, D),
        "key_global": randn(B, Hkv, T, D),
        "value_global": randn(B, Hkv, T, D),
        "key_local": randn(B, R - G, Hkv, W, D),
        "value_local": randn(B, R - G, Hkv, W, D),
        "query_pos": qpos,
        "local_pos": torch.tensor([_ring_positions(t, W) for t in t_last], dtype=torch.int64),  # [B, W]
        "gate_weight": randn(Hq, D),
        "gate_bias": randn(Hq),
    }
    attrs = {"name": name, "dtype": dtype, "window": window, "scale": D ** -0.5, "num_heads": Hq,
             "num_kv_heads": Hkv}
    return attrs, tensors


# Generated cases: (name, dtype, B, R, G, Hq, Hkv, S, D, T, W, window, t_last per batch, seed).
GENERATED = (
    ("gen_gqa4_d40", "float32", 2, 3, 1, 8, 2, 1, 40, 300, 8, 5, [299, 3], 1),  # DPL 2, empty ring slots
    ("gen_long_d96_bf16", "bfloat16", 1, 2, 1, 4, 1, 2, 96, 2100, 6, 6, [2099], 2),  # 17 splits, S = 2
    ("gen_prefill_d8_fp16", "float16", 1, 1, 0, 2, 2, 37, 8, 64, 40, 20, [63], 3),  # prefill, 2 local tiles
    ("gen_prefill_rows_g1", "float32", 1, 2, 1, 4, 2, 20, 16, 40, 20, 6, [39], 6),  # prefill kernel with G = 1
    ("gen_d200_fp32", "float32", 1, 2, 1, 2, 1, 1, 200, 150, 4, 4, [149], 4),  # DPL 8
    ("gen_d256_gqa8", "float32", 1, 3, 1, 8, 1, 1, 256, 100, 4, 2, [99], 5),  # D = 256: 24 query vectors, 2 groups
    ("gen_d32_u64", "float32", 1, 4, 1, 16, 1, 1, 32, 80, 4, 3, [79], 7),  # 64 query vectors: one 512-thread block
    ("gen_d256_prefill_fp16", "float16", 1, 1, 0, 2, 1, 6, 256, 6, 6, 3, [5], 8),  # prefill at D = 256: opt-in
)
ASAN_CASES = ("decode_rows3_gqa4", "prefill_fp16", "gen_gqa4_d40", "gen_prefill_rows_g1", "gen_d256_prefill_fp16")
# plant_bugs.py mutants run in CI (the script has more; run it alone for all of them).
CI_MUTANTS = ("removed-barrier", "wrong-shuffle-lane", "smem-8-bytes-short", "split-range-off-by-one")


def _perturbed_name(base: str, tensor: str, index: tuple[int, ...]) -> str:
    return f"{base}__{tensor}_" + "_".join(map(str, index))


def all_cases() -> dict[str, tuple[dict, dict[str, torch.Tensor]]]:
    """Vector cases, their perturbed copies and the generated cases, by name."""
    cases = {attrs["name"]: (attrs, tensors) for attrs, tensors in load_vectors(VECTORS_PATH)}
    for base, tensor, index, _ in PERTURBATIONS:
        attrs, tensors = cases[base]
        changed = dict(tensors)
        changed[tensor] = tensors[tensor].clone()
        changed[tensor][index] += 3.0
        cases[_perturbed_name(base, tensor, index)] = (attrs, changed)
    for spec in GENERATED:
        name, dtype, B, R, G, Hq, Hkv, S, D, T, W, window, t_last, seed = spec
        cases[name] = generated_case(name, dtype, B, R, G, Hq, Hkv, S, D, T, W, window, t_last, seed)
    return cases


@pytest.fixture(scope="session")
def harness_cases(tmp_path_factory):
    """Writes every case's inputs and the manifests; returns (dir, cases)."""
    work = tmp_path_factory.mktemp("gswa_harness")
    cases = all_cases()
    lines = {name: write_case(work, name, attrs, tensors) for name, (attrs, tensors) in cases.items()}
    (work / "manifest.txt").write_text("".join(lines.values()))
    (work / "manifest_asan.txt").write_text("".join(lines[n] for n in ASAN_CASES))
    (work / "manifest_mutants.txt").write_text("".join(lines[n] for n in plant_bugs.MUTANT_CASES))
    return work, cases


@pytest.fixture(scope="session")
def harness_run(harness_cases):
    """Builds the harness and runs every case once. Returns (dir, cases)."""
    work, cases = harness_cases
    exe = _build(work)
    proc = gswa_cpu_build.run_harness(exe, work)
    assert proc.returncode == 0, f"harness failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return work, cases


def _outputs(work: Path, name: str, like: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every kernel path's output file of one case, as tensors shaped and typed like `like`."""
    skip = {s.name for s in contract.INPUTS} | {"reference"}
    out = {}
    for f in sorted(work.glob(f"{name}.*.bin")):
        path = f.name[len(name) + 1:-len(".bin")]
        if path in skip or "." in path:
            continue
        raw = bytearray(f.read_bytes())
        out[path] = torch.frombuffer(raw, dtype=like.dtype).reshape(like.shape)
    return out


def _reference(work: Path, name: str, like: torch.Tensor) -> torch.Tensor:
    raw = bytearray((work / f"{name}.reference.bin").read_bytes())
    return torch.frombuffer(raw, dtype=torch.float64).reshape(like.shape)


def _max_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.double() - want.double()).abs().max().item()


def _close(got: torch.Tensor, want: torch.Tensor, dtype: str) -> bool:
    atol, rtol = TOLERANCES[dtype]
    return torch.allclose(got.double(), want.double(), atol=atol, rtol=rtol)


def _vector_case_names() -> list[str]:
    return [attrs["name"] for attrs, _ in load_vectors(VECTORS_PATH)]


def _out_like(attrs: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.empty(tensors["query"].shape, dtype=DTYPES[attrs["dtype"]])


@pytest.mark.parametrize("case", _vector_case_names() + [spec[0] for spec in GENERATED])
def test_kernels_match_references(harness_run, case):
    """Every launcher path of the real kernels matches the float64 reference (and the vectors' expected)."""
    work, cases = harness_run
    attrs, tensors = cases[case]
    like = _out_like(attrs, tensors)
    outputs = _outputs(work, case, like)
    assert {"auto", "prefill", "decode_splits1", "decode_splits7"} <= set(outputs), sorted(outputs)
    ref64 = _reference(work, case, like)
    atol, rtol = TOLERANCES[attrs["dtype"]]
    wants = {"float64 reference": ref64}
    if "expected" in tensors:
        wants["vectors' expected"] = tensors["expected"]
        assert _close(ref64, tensors["expected"], attrs["dtype"]), (
            f"{case}: float64 reference differs from the vectors by {_max_err(ref64, tensors['expected']):.3g}")
    for path, got in outputs.items():
        assert torch.isfinite(got.double()).all(), f"{case}/{path}: non-finite output (unwritten or NaN shared memory)"
        for what, want in wants.items():
            assert _close(got, want, attrs["dtype"]), (
                f"{case}/{path}: max abs error {_max_err(got, want):.3g} against the {what} exceeds "
                f"atol={atol}, rtol={rtol} ({attrs['dtype']})")


def _launches(work: Path, name: str) -> list[list[str]]:
    return [line.split() for line in (work / f"{name}.launches.txt").read_text().splitlines()]


def test_long_cache_uses_several_splits(harness_run):
    """The auto path of the long-cache cases runs the split-K kernel with the kernels' own split count."""
    work, _ = harness_run
    for name, splits in (("decode_long_cache", 6), ("gen_long_d96_bf16", 17)):  # ceil(T / 128)
        grids = [int(rec[2]) for rec in _launches(work, name) if rec[0] == "auto" and "split" in rec[1].lower()]
        assert grids == [splits], (name, _launches(work, name))


@pytest.mark.parametrize("case,groups,threads", [
    ("decode_rows3_gqa4", 1, 96),  # R * nRep * S = 3 * 4 = 12 query vectors: 3 warps, one block per split
    ("gen_d32_u64", 1, 512),  # 64 query vectors
    ("gen_d256_gqa8", 2, 128),  # 24 query vectors, 15 fit 48 KiB at D = 256
])
def test_decode_loads_each_tile_once_per_kv_group(harness_run, case, groups, threads):
    """One decode split block serves every row x query head of its KV group (grid.z = query groups)."""
    work, _ = harness_run
    recs = [rec for rec in _launches(work, case) if rec[0] == "auto" and "split" in rec[1].lower()]
    assert [(int(r[4]), int(r[5])) for r in recs] == [(groups, threads)], recs
    assert all(int(r[6]) <= 48 * 1024 for r in recs), recs  # decode never needs the opt-in


@pytest.mark.parametrize("base,tensor,index,changes", PERTURBATIONS)
def test_perturbed_inputs(harness_run, base, tensor, index, changes):
    """Visible keys change every path's output; masked keys (future slots, empty slots) do not."""
    work, cases = harness_run
    attrs, tensors = cases[base]
    expected = tensors["expected"]
    atol, _ = TOLERANCES[attrs["dtype"]]
    outputs = _outputs(work, _perturbed_name(base, tensor, index), expected)
    assert outputs
    for path, got in outputs.items():
        same = _close(got, expected, attrs["dtype"])
        err = _max_err(got, expected)
        if changes:
            assert not same and err > 10 * atol, f"{path}: perturbing {tensor}{index} changed nothing ({err:.3g})"
        else:
            assert same, f"{path}: perturbing masked {tensor}{index} changed the output by {err:.3g}"


def test_global_rows_ignore_local_keys(harness_run):
    """Rows r < G have g = 0 and no local part: a changed local value leaves them bit-identical."""
    work, cases = harness_run
    base, tensor, index = "decode_basic", "value_local", (1, 0, 1, 1)
    attrs, tensors = cases[base]
    G = tensors["query"].shape[1] - tensors["key_local"].shape[1]
    assert G == 1
    like = _out_like(attrs, tensors)
    before = _outputs(work, base, like)
    after = _outputs(work, _perturbed_name(base, tensor, index), like)
    for path in before:
        assert torch.equal(before[path][:, :G], after[path][:, :G]), path
        assert not torch.equal(before[path][:, G:], after[path][:, G:]), path


@pytest.fixture(scope="session")
def selftest_exe(tmp_path_factory):
    if (reason := gswa_cpu_build.missing_toolchain()):
        pytest.skip(reason)
    try:
        return gswa_cpu_build.build_selftest(tmp_path_factory.mktemp("cpu_model") / "cuda_cpu_model_selftest")
    except gswa_cpu_build.BuildError as e:
        pytest.fail(str(e))


@pytest.mark.parametrize("name,stderr_says", [
    ("ok_shuffle_arithmetic", None),  # up/down/xor/idx with widths, ballot, half-warp mask
    ("ok_shared_nan_every_block", None),  # static and dynamic shared memory NaN at every block start
    ("ok_launch_limits", None),  # 1024 threads, grid.y, 48 KiB default, 64 KiB opt-in cap
    ("fail_barrier_after_exit", "exited while the others wait at __syncthreads"),
    ("fail_barrier_vs_shuffle", "waits elsewhere"),
    ("fail_mask_without_caller", "does not name the calling lane"),
    ("fail_read_outside_mask", "which is not in mask"),
    ("fail_two_call_sites", "waits elsewhere"),
    ("fail_write_past_dynamic_shared", "of dynamic shared memory, which has only 100 bytes"),
    ("fail_touch_guard_page", "past the end of dynamic shared memory"),
])
def test_cpu_model_semantics(selftest_exe, name, stderr_says):
    """The execution model itself: CUDA's lane arithmetic and limits hold, divergent syncs fail loudly."""
    proc = subprocess.run([str(selftest_exe), name], capture_output=True, text=True, timeout=60)
    if stderr_says is None:
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
    else:
        assert proc.returncode != 0 and "cuda_cpu_model:" in proc.stderr and stderr_says in proc.stderr, (
            proc.returncode, proc.stdout, proc.stderr)


def test_kernels_under_asan_ubsan(harness_cases):
    """The same kernels built with AddressSanitizer + UBSan: no report on a small case set."""
    work, _ = harness_cases
    if (reason := gswa_cpu_build.missing_sanitizers(work)):
        pytest.skip(reason)
    exe = _build(work, sanitize=True)
    proc = gswa_cpu_build.run_harness(exe, work, "manifest_asan.txt")
    assert proc.returncode == 0, f"sanitized harness failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    assert proc.stdout.count(": ok") == len(ASAN_CASES), proc.stdout


def test_planted_bugs_are_caught(harness_cases):
    """A removed barrier, a wrong shuffle lane, shared memory 8 bytes short, an off-by-one split range:
    each planted into a copy of the kernels must make the harness fail."""
    if (reason := gswa_cpu_build.missing_toolchain()):
        pytest.skip(reason)
    work, _ = harness_cases
    cmd = [sys.executable, str(ROOT / "plugins" / "tests" / "plant_bugs.py"), "--cases", str(work),
           "--manifest", "manifest_mutants.txt", "--only", *CI_MUTANTS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert proc.stdout.count("CAUGHT") == len(CI_MUTANTS), proc.stdout
