"""Incremental decoding equals the full-sequence forward, for every mode."""

import pytest
import torch

from plt_deploy.backends.torch_backend import TorchBackend
from plt_deploy.cache import PLTCache, kv_bytes_formula
from plt_deploy.config import PLTConfig
from plt_deploy.generate import SamplingParams, generate
from plt_deploy.model import PLT

VARIANTS = [("plt", 2, 4), ("plt", 3, 3), ("plt", 2, 1), ("looped", 2, 4), ("vanilla", 1, 4)]


def make_model(mode, loops, window, seed=0, **over):
    cfg = PLTConfig.from_name("tiny", mode=mode, loops=loops, window=window, max_seq_len=64, **over)
    model = PLT(cfg).init_weights(seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial gates so both attention paths matter
        for name, p in model.named_parameters():
            if "gate" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("mode,loops,window", VARIANTS)
def test_decode_matches_full_forward(mode, loops, window):
    model = make_model(mode, loops, window)
    B, S = 2, 30  # 30 tokens: far longer than the window
    tokens = torch.randint(0, model.cfg.vocab_size, (B, S), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(tokens)  # [B, S, V]
    lengths = torch.tensor([4, 11])  # unequal prompt lengths, right-padded
    cache = PLTCache.allocate(model.cfg, B, S, torch.float32)
    last = model.prefill(tokens[:, :11], lengths, cache)
    assert cache.lengths.tolist() == [0, 0]  # the model leaves the positions to the caller
    cache.advance(lengths)
    errs = [(last[b] - full[b, lengths[b] - 1]).abs().max().item() for b in range(B)]
    for _ in range(S - 11):
        pos = cache.lengths.clone()
        logits = model.decode_step(tokens[torch.arange(B), pos], cache)
        assert torch.equal(cache.lengths, pos)
        cache.advance()
        errs += [(logits[b] - full[b, pos[b]]).abs().max().item() for b in range(B)]
    assert max(errs) < 1e-5, max(errs)
    assert cache.lengths.tolist() == [4 + S - 11, S]


def test_loops_change_the_output():
    """A guard against a decode path that silently ignores loops >= 2 or the carry."""
    plt2 = make_model("plt", 2, 4)
    plt1 = make_model("plt", 2, 4)
    plt1.cfg.carry_scale = 0.0
    tokens = torch.randint(0, 259, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (plt2(tokens) - plt1(tokens)).abs().max() > 1e-3


def test_shift_right_gives_position_zero_no_carry():
    """Position 0 of loop l >= 2 sees a*E only: same logits with carry_scale 0."""
    a, b = make_model("plt", 2, 4), make_model("plt", 2, 4)
    b.cfg.carry_scale = 0.0
    tokens = torch.randint(0, 259, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a(tokens)[:, 0], b(tokens)[:, 0], rtol=0, atol=1e-6)


def test_greedy_generation_follows_full_forward_argmax():
    model = make_model("plt", 2, 3)
    prompt = [256, 10, 20, 30]
    out = generate(TorchBackend(model), [prompt, prompt[:2]], SamplingParams(max_new_tokens=12))
    seq = list(prompt)
    for tok in out[0]:
        with torch.no_grad():
            assert tok == int(model(torch.tensor([seq]))[0, -1].argmax())
        seq.append(tok)


def test_sampling_is_seeded_and_respects_top_k():
    model = make_model("plt", 2, 3)
    be = TorchBackend(model)
    p = SamplingParams(max_new_tokens=10, temperature=1.0, top_k=5, seed=7)
    assert generate(be, [[256, 1]], p) == generate(be, [[256, 1]], p)
    with torch.no_grad():
        first_top5 = set(model(torch.tensor([[256, 1]]))[0, -1].topk(5).indices.tolist())
    assert generate(be, [[256, 1]], p)[0][0] in first_top5


def test_stop_token_ends_a_sequence():
    model = make_model("vanilla", 1, 4)
    be = TorchBackend(model)
    free = generate(be, [[256, 5]], SamplingParams(max_new_tokens=6))[0]
    stopped = generate(be, [[256, 5]], SamplingParams(max_new_tokens=6, stop_tokens=(free[2],)))[0]
    assert stopped == free[: free.index(free[2]) + 1]


@pytest.mark.parametrize("mode,loops", [("plt", 2), ("plt", 3), ("looped", 2), ("vanilla", 1)])
def test_kv_bytes_allocated_equal_formula(mode, loops):
    cfg = PLTConfig.from_name("tiny", mode=mode, loops=loops, max_seq_len=128, window=8)
    cache = PLTCache.allocate(cfg, 2, 128, torch.float32)
    assert cache.kv_bytes() == kv_bytes_formula(cfg, 2, 128, 4)
    vanilla = kv_bytes_formula(cfg.replace(mode="vanilla"), 2, 128, 4)
    expected = {"plt": 1 + (loops - 1) * 8 / 128, "looped": loops, "vanilla": 1}[mode]
    assert cache.kv_bytes() == pytest.approx(vanilla * expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_decode_close_to_fp32(dtype):
    model = make_model("plt", 2, 4)
    tokens = torch.randint(0, 259, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(tokens)[0, -1]
        half = model.to(dtype)
        cache = PLTCache.allocate(half.cfg, 1, 16, dtype)
        half.prefill(tokens[:, :6], torch.tensor([6]), cache)
        cache.advance(6)
        for i in range(6, 10):
            out = half.decode_step(tokens[:, i], cache)
            cache.advance()
    assert out.dtype == dtype
    tol = 2e-2 if dtype == torch.float16 else 1e-1
    assert (out[0].float() - ref).abs().max() < tol * ref.abs().max()


def test_generation_shorter_than_the_window():
    """A session smaller than the window still holds w ring slots (regression: shape mismatch)."""
    model = make_model("plt", 2, 16)
    out = generate(TorchBackend(model), [[256, 3]], SamplingParams(max_new_tokens=3))
    assert len(out[0]) == 3
