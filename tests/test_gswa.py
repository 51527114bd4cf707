"""Properties of the G-SWA reference, the custom op, and the committed shared test vectors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plt_deploy.cache import ring_positions
from plt_deploy.ops import vectors
from plt_deploy.ops.gswa import causal_cache_attention, causal_mask, gswa_fast, gswa_reference


def random_inputs(B, R, Hq, Hkv, S, T, D, seed=0, past=None, G=0):
    """Inputs of one call with R rows, G of them global-only (key_local holds R - G rows)."""
    g = torch.Generator().manual_seed(seed)
    past = torch.zeros(B, dtype=torch.int64) if past is None else past
    query_pos = past[:, None] + torch.arange(S)[None]  # [B, S]
    return dict(
        query=torch.randn(B, R, Hq, S, D, generator=g),
        key_global=torch.randn(B, Hkv, T, D, generator=g),
        value_global=torch.randn(B, Hkv, T, D, generator=g),
        key_local=torch.randn(B, R - G, Hkv, S, D, generator=g),
        value_local=torch.randn(B, R - G, Hkv, S, D, generator=g),
        query_pos=query_pos,
        local_pos=query_pos.clone(),
        gate_weight=torch.zeros(Hq, D),
        gate_bias=torch.zeros(Hq),
    )


def causal_over(q, k, v, query_pos):
    """Causal attention of every row of q [B, R, Hq, S, D] over k/v [B, Hkv, T, D]."""
    mask = causal_mask(query_pos, k.shape[2])
    rows = [causal_cache_attention(q[:, r], k, v, mask, 1 / math.sqrt(q.shape[-1])) for r in range(q.shape[1])]
    return torch.stack(rows, dim=1) if rows else torch.empty_like(q)


shapes = st.tuples(
    st.integers(1, 3),  # B
    st.integers(1, 3),  # R
    st.sampled_from([(1, 1), (2, 1), (4, 2), (4, 4), (6, 3)]),  # (Hq, Hkv)
    st.integers(1, 9),  # S
    st.integers(0, 6),  # extra cache slots beyond the queries
    st.sampled_from([2, 4, 8]),  # D
    st.integers(1, 12),  # window
)


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(0, 2**16))
def test_gate_closed_is_causal_attention_over_shared_keys(shape, seed):
    B, R, (Hq, Hkv), S, extra, D, w = shape
    x = random_inputs(B, R, Hq, Hkv, S, S + extra, D, seed)
    x["gate_bias"] = torch.full((Hq,), -200.0)  # sigmoid -> 0
    out = gswa_reference(**x, window=w, scale=1 / math.sqrt(D), global_rows=0)
    torch.testing.assert_close(out, causal_over(x["query"], x["key_global"], x["value_global"], x["query_pos"]),
                               rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(0, 2**16))
def test_gate_open_with_large_window_is_causal_attention_over_local_keys(shape, seed):
    B, R, (Hq, Hkv), S, extra, D, _ = shape
    x = random_inputs(B, R, Hq, Hkv, S, S + extra, D, seed)
    x["gate_bias"] = torch.full((Hq,), 200.0)  # sigmoid -> 1
    out = gswa_reference(**x, window=S, scale=1 / math.sqrt(D), global_rows=0)
    mask = causal_mask(x["query_pos"], S)
    expected = torch.stack([causal_cache_attention(x["query"][:, r], x["key_local"][:, r], x["value_local"][:, r],
                                                   mask, 1 / math.sqrt(D)) for r in range(R)], dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(shapes, st.integers(0, 2**16))
def test_grouped_query_heads_equal_repeated_kv_heads(shape, seed):
    B, R, (Hq, Hkv), S, extra, D, w = shape
    G = seed % (R + 1)
    x = random_inputs(B, R, Hq, Hkv, S, S + extra, D, seed, G=G)
    g = torch.Generator().manual_seed(seed)
    x["gate_weight"], x["gate_bias"] = torch.randn(Hq, D, generator=g), torch.randn(Hq, generator=g)
    rep = Hq // Hkv
    mha = dict(x)
    for name, dim in (("key_global", 1), ("value_global", 1), ("key_local", 2), ("value_local", 2)):
        mha[name] = x[name].repeat_interleave(rep, dim=dim)
    torch.testing.assert_close(gswa_reference(**x, window=w, scale=0.3, global_rows=G),
                               gswa_reference(**mha, window=w, scale=0.3, global_rows=G))


@settings(max_examples=30, deadline=None)
@given(shapes, st.integers(0, 2**16))
def test_global_rows_are_causal_attention_and_the_rest_are_independent_rows(shape, seed):
    """Rows < G ignore gate and local keys; rows >= G equal a G = 0 call of those rows alone."""
    B, R, (Hq, Hkv), S, extra, D, w = shape
    G = seed % (R + 1)
    x = random_inputs(B, R, Hq, Hkv, S, S + extra, D, seed, G=G)
    g = torch.Generator().manual_seed(seed + 1)
    x["gate_weight"], x["gate_bias"] = torch.randn(Hq, D, generator=g), torch.randn(Hq, generator=g)
    out = gswa_reference(**x, window=w, scale=1 / math.sqrt(D), global_rows=G)
    assert out.shape == x["query"].shape
    torch.testing.assert_close(out[:, :G], causal_over(x["query"][:, :G], x["key_global"], x["value_global"],
                                                       x["query_pos"]), rtol=1e-5, atol=1e-6)
    rest = gswa_reference(**(x | {"query": x["query"][:, G:]}), window=w, scale=1 / math.sqrt(D), global_rows=0)
    torch.testing.assert_close(out[:, G:], rest, rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(0, 2**16))
def test_fast_path_equals_reference(shape, seed):
    """gswa_fast (what the torch op runs) is the oracle's function, incl. empty slots and t < 0."""
    B, R, (Hq, Hkv), S, extra, D, w = shape
    G = seed % (R + 1)
    x = random_inputs(B, R, Hq, Hkv, S, S + extra, D, seed, G=G)
    g = torch.Generator().manual_seed(seed + 2)
    x["gate_weight"], x["gate_bias"] = torch.randn(Hq, D, generator=g), torch.randn(Hq, generator=g)
    if seed % 3 == 0:  # empty ring slots and a query before the cache
        x["local_pos"][:, : S // 2] = -1
        x["query_pos"][0, 0] = -1
    torch.testing.assert_close(gswa_fast(**x, window=w, scale=0.4, global_rows=G),
                               gswa_reference(**x, window=w, scale=0.4, global_rows=G), rtol=1e-5, atol=1e-6)


def test_window_masks_exactly_w_keys():
    """Only the last w local keys count: changing a key just outside the window changes nothing."""
    x = random_inputs(1, 1, 2, 1, 8, 8, 4, seed=1)
    x["gate_bias"] = torch.full((2,), 200.0)
    base = gswa_reference(**x, window=3, scale=0.5, global_rows=0)
    x["key_local"][..., 4, :] += 10.0  # position 4: outside (7-3, 7] for the last query
    moved = gswa_reference(**x, window=3, scale=0.5, global_rows=0)
    torch.testing.assert_close(moved[..., 7, :], base[..., 7, :])
    assert (moved[..., 5, :] - base[..., 5, :]).abs().max() > 1e-3  # inside the window of query 5


def test_rows_without_valid_local_keys_give_global_share_only():
    x = random_inputs(1, 1, 2, 2, 1, 4, 4, seed=2)
    x["local_pos"] = torch.full((1, 1), -1)  # empty ring slot
    out = gswa_reference(**x, window=2, scale=0.5, global_rows=0)  # gate 0.5: y = 0.5 * y_global
    glob = causal_over(x["query"], x["key_global"], x["value_global"], x["query_pos"])
    torch.testing.assert_close(out, 0.5 * glob)
    assert torch.isfinite(out).all()


def test_ring_positions():
    assert ring_positions(torch.tensor([0, 5, 9]), 4).tolist() == [[0, -1, -1, -1], [4, 5, 2, 3], [8, 9, 6, 7]]


def test_custom_op_matches_reference_and_vectors_are_current():
    """The committed vectors equal the reference today; the torch op reproduces them exactly."""
    fresh, _ = vectors.build_vectors()
    for attrs, t in vectors.load_vectors():
        inputs = {k: v for k, v in t.items() if k != "expected"}
        torch.testing.assert_close(fresh[f"{attrs['name']}/expected"], t["expected"], rtol=0, atol=0)
        out = torch.ops.plt.gated_sliding_window_attention(**inputs, window=attrs["window"], scale=attrs["scale"],
                                                           global_rows=attrs["global_rows"])
        assert out.dtype == t["query"].dtype and out.shape == t["query"].shape
        # Loaded tensors may be unaligned, so BLAS may sum in another order: allow one rounding.
        ulp = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[out.dtype]
        torch.testing.assert_close(out, t["expected"], rtol=ulp, atol=ulp)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_inputs_accumulate_in_fp32(dtype, tol):
    x = random_inputs(2, 3, 4, 2, 5, 9, 8, seed=4, G=1)
    ref = gswa_reference(**x, window=3, scale=0.35, global_rows=1)
    half = gswa_reference(**{k: v.to(dtype) if v.is_floating_point() else v for k, v in x.items()},
                          window=3, scale=0.35, global_rows=1)
    assert half.dtype == dtype
    assert (half.float() - ref).abs().max() < tol * 4


def test_bad_attributes_are_rejected():
    x = random_inputs(1, 2, 2, 1, 2, 2, 4, G=1)
    with pytest.raises(ValueError, match="window"):
        gswa_reference(**x, window=0, scale=0.5, global_rows=1)
    with pytest.raises(ValueError, match="global_rows"):
        gswa_reference(**x, window=1, scale=0.5, global_rows=3)
    with pytest.raises(ValueError, match="R - G = 2 rows"):
        gswa_reference(**x, window=1, scale=0.5, global_rows=0)
    x["key_global"] = torch.randn(1, 3, 2, 4)
    with pytest.raises(ValueError, match="multiple"):
        gswa_reference(**x, window=1, scale=0.5, global_rows=1)


def test_vectors_cover_the_v2_cases():
    """The shared file holds what issue 10 lists: R=2/3 with G=1, GQA 4, window 1 and >= T, ragged
    positions, empty rings, a long cache, prefill R=1 G=0, fp16 and bf16."""
    cases = {a["name"]: (a, t) for a, t in vectors.load_vectors()}
    decode = [(a, t) for a, t in cases.values() if t["query"].shape[3] == 1]
    assert {t["query"].shape[1] for a, t in decode if a["global_rows"] == 1} >= {2, 3}
    assert any(a["num_heads"] // a["num_kv_heads"] == 4 for a, _ in decode)
    assert any(a["window"] == 1 for a, _ in decode)
    assert any(a["window"] >= t["key_global"].shape[2] for a, t in decode)
    assert any(len(set(t["query_pos"][:, 0].tolist())) > 1 for _, t in decode)
    assert any((t["local_pos"] < 0).any() for _, t in decode)
    assert max(t["key_global"].shape[2] for _, t in decode) >= 1024
    assert any(t["query"].shape[1] == 1 and a["global_rows"] == 0 and t["query"].shape[3] > 1
               for a, t in cases.values())
    assert {a["dtype"] for a in (a for a, _ in cases.values())} == {"float32", "float16", "bfloat16"}
    for a, t in cases.values():
        assert t["key_local"].shape[1] == t["query"].shape[1] - a["global_rows"]
