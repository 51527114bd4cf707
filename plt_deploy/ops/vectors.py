"""Shared G-SWA test vectors: inputs and reference outputs, fixed seeds, edge-case shapes.

The same file checks the torch op, the ONNX function body, the CUDA kernels' host-side math and,
on a GPU, the TensorRT plugin. Regenerate with `python -m plt_deploy.ops.vectors` (a test checks
that the committed file still matches the reference).

File format: safetensors; tensor "<case>/<input name>" for every contract input plus
"<case>/expected"; metadata "cases" = JSON list of {name, dtype, window, scale, num_heads,
num_kv_heads, global_rows} (contract v2: key_local/value_local hold R - global_rows rows).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import contract
from ..cache import ring_positions
from .gswa import gswa_reference

VECTORS_PATH = Path(__file__).resolve().parents[2] / "tests" / "data" / "gswa_vectors.safetensors"


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    rows: int  # R
    global_rows: int  # G: rows 0..G-1 are global-only
    heads: int  # Hq
    kv_heads: int  # Hkv
    queries: int  # S
    head_dim: int  # D
    cache_len: int  # T (slots in the shared cache)
    window: int
    query_pos: tuple[tuple[int, ...], ...]  # [B][S]
    local: str  # "ring": decode ring buffer of `window` slots; "chunk": local keys = the queries' own
    dtype: str = "float32"
    seed: int = 0


def _seq(start: int, n: int) -> tuple[int, ...]:
    return tuple(range(start, start + n))


CASES: tuple[Case, ...] = (
    # decode: R = L rows, G = 1 (row 0 = loop 1, global-only), one query per sequence
    Case("decode_basic", 2, 2, 1, 4, 2, 1, 8, 20, 4, ((7,), (13,)), "ring"),
    Case("decode_rows3_gqa4", 2, 3, 1, 8, 2, 1, 16, 64, 5, ((0,), (40,)), "ring", seed=1),
    Case("decode_window1", 1, 2, 1, 2, 1, 1, 8, 12, 1, ((9,),), "ring", seed=2),
    Case("decode_window_ge_len", 2, 2, 1, 4, 2, 1, 8, 16, 32, ((3,), (15,)), "ring", seed=3),
    Case("decode_empty_ring", 3, 3, 1, 4, 1, 1, 8, 10, 8, ((0,), (2,), (9,)), "ring", seed=4),
    Case("decode_long_cache", 2, 2, 1, 4, 4, 1, 32, 700, 16, ((699,), (257,)), "ring", seed=5),
    Case("decode_long_gqa", 2, 3, 1, 8, 2, 1, 16, 1100, 64, ((1099,), (600,)), "ring", seed=6),
    Case("decode_no_global_rows", 2, 1, 0, 4, 2, 1, 8, 20, 4, ((5,), (19,)), "ring", seed=7),
    # prefill of loops >= 2: R = 1, G = 0, the local keys are the chunk's own
    Case("prefill_chunk", 2, 1, 0, 4, 2, 10, 16, 10, 3, (_seq(0, 10), _seq(0, 10)), "chunk", seed=8),
    Case("prefill_window_ge_len", 1, 1, 0, 4, 1, 6, 8, 6, 100, (_seq(0, 6),), "chunk", seed=9),
    Case("prefill_offset", 2, 1, 0, 4, 2, 5, 8, 16, 4, (_seq(3, 5), _seq(11, 5)), "chunk", seed=10),
    # half precision (fp32 arithmetic inside)
    Case("decode_fp16", 2, 2, 1, 4, 2, 1, 16, 40, 6, ((5,), (39,)), "ring", "float16", seed=11),
    Case("decode_bf16", 2, 3, 1, 8, 2, 1, 16, 40, 6, ((3,), (30,)), "ring", "bfloat16", seed=12),
    Case("prefill_fp16", 1, 1, 0, 2, 1, 33, 16, 33, 8, (_seq(0, 33),), "chunk", "float16", seed=13),
    Case("prefill_bf16", 1, 1, 0, 4, 2, 12, 16, 20, 5, (_seq(4, 12),), "chunk", "bfloat16", seed=14),
)


def make_inputs(case: Case) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(case.seed)
    dtype = getattr(torch, case.dtype)
    B, R, Hq, Hkv, S, D, T = case.batch, case.rows, case.heads, case.kv_heads, case.queries, case.head_dim, case.cache_len
    RL = R - case.global_rows  # rows with local keys

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    query_pos = torch.tensor(case.query_pos, dtype=torch.int64)  # [B, S]
    if case.local == "ring":
        assert S == 1
        local_pos = ring_positions(query_pos[:, 0], case.window)  # [B, W]
    else:
        local_pos = query_pos.clone()  # local keys are the queries' own, in order
    W = local_pos.shape[1]
    return {
        "query": randn(B, R, Hq, S, D),
        "key_global": randn(B, Hkv, T, D),
        "value_global": randn(B, Hkv, T, D),
        "key_local": randn(B, RL, Hkv, W, D),
        "value_local": randn(B, RL, Hkv, W, D),
        "query_pos": query_pos,
        "local_pos": local_pos,
        "gate_weight": (0.5 * torch.randn(Hq, D, generator=g)).to(dtype),
        "gate_bias": torch.randn(Hq, generator=g).to(dtype),
    }


def case_attributes(case: Case) -> dict:
    return {"window": case.window, "scale": 1.0 / math.sqrt(case.head_dim),
            "num_heads": case.heads, "num_kv_heads": case.kv_heads, "global_rows": case.global_rows}


def build_vectors() -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors, meta = {}, []
    for case in CASES:
        inputs = make_inputs(case)
        attrs = case_attributes(case)
        expected = gswa_reference(**inputs, window=attrs["window"], scale=attrs["scale"],
                                  global_rows=attrs["global_rows"])
        for name, value in inputs.items():
            tensors[f"{case.name}/{name}"] = value.contiguous()
        tensors[f"{case.name}/expected"] = expected.contiguous()
        meta.append({"name": case.name, "dtype": case.dtype, **attrs})
    return tensors, meta


def load_vectors(path: Path = VECTORS_PATH) -> list[tuple[dict, dict[str, torch.Tensor]]]:
    """[(attributes, {input name or 'expected': tensor})] for every case in the file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["cases"])
        out = []
        for attrs in meta:
            names = [s.name for s in contract.INPUTS] + ["expected"]
            out.append((attrs, {n: f.get_tensor(f"{attrs['name']}/{n}") for n in names}))
    return out


def write_vectors(path: Path = VECTORS_PATH) -> Path:
    from safetensors.torch import save_file

    tensors, meta = build_vectors()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"cases": json.dumps(meta)})
    tmp.replace(path)
    return path


if __name__ == "__main__":
    print(write_vectors())
