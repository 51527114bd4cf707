"""The state primitive: a prompt extended in chunks of any sizes equals one prefill from 0 and the
full-sequence forward, for every mode, with rings wrapping inside a chunk and across chunk boundaries."""

import pytest
import torch

from plt_deploy.cache import PLTCache
from plt_deploy.config import PLTConfig
from plt_deploy.model import PLT

W = 4  # window: chunks of w-1, w, w+1 wrap the ring inside a chunk and across boundaries
MODES = [("plt", 2), ("plt", 3), ("looped", 2), ("vanilla", 1), ("loopcoder", 2), ("loopcoder", 3)]
PROMPT = 23


def make_model(mode: str, loops: int, seed: int = 0) -> PLT:
    over = {"mode": mode, "loops": loops, "window": W, "max_seq_len": 64}
    cfg = PLTConfig.from_name("tiny", **over)
    model = PLT(cfg).init_weights(seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial gates so both attention paths matter
        for name, p in model.named_parameters():
            if "gate" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def chunks_of(size: int, total: int) -> list[int]:
    out = []
    while sum(out) < total:
        out.append(min(size, total - sum(out)))
    return out


def extend_in_chunks(model: PLT, tokens: torch.Tensor, sizes: list[int], cache: PLTCache) -> list[torch.Tensor]:
    """Extend every row of `cache` by tokens [B, sum(sizes)] chunk by chunk -> logits of each chunk's last token."""
    out, start = [], 0
    B = tokens.shape[0]
    for s in sizes:
        lengths = torch.full((B,), s)
        out.append(model.extend(tokens[:, start:start + s], lengths, cache.lengths.clone(), cache))
        cache.advance(lengths)
        start += s
    return out


@pytest.mark.parametrize("mode,loops", MODES)
@pytest.mark.parametrize("chunk", [1, 7, W - 1, W, W + 1, PROMPT])
def test_chunked_prefill_equals_full_forward_and_decodes_the_same(mode, loops, chunk):
    model = make_model(mode, loops)
    B, new = 2, 6
    tokens = torch.randint(0, model.cfg.vocab_size, (B, PROMPT + new), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(tokens)  # [B, S, V]
    sizes = chunks_of(chunk, PROMPT)
    cache = PLTCache.allocate(model.cfg, B, 40, torch.float32)
    logits = extend_in_chunks(model, tokens, sizes, cache)
    ends = torch.cumsum(torch.tensor(sizes), 0) - 1
    err = max((lg - full[:, e]).abs().max().item() for lg, e in zip(logits, ends.tolist()))
    assert err < 2e-5, err
    for t in range(PROMPT, PROMPT + new):  # decoding after the chunks reads the state they left
        lg = model.decode_step(tokens[:, t], cache)
        cache.advance()
        err = max(err, (lg - full[:, t]).abs().max().item())
    assert err < 2e-5, err


@pytest.mark.parametrize("mode,loops", MODES)
def test_ragged_chunks_from_different_positions(mode, loops):
    """One call extends rows at different start positions with right-padded chunks of different
    lengths; stale state in the slots (a previous sequence) is ignored from start_pos 0."""
    model = make_model(mode, loops)
    g = torch.Generator().manual_seed(5)
    seqs = [torch.randint(0, model.cfg.vocab_size, (n,), generator=g) for n in (17, 12)]
    with torch.no_grad():
        full = [model(s[None])[0] for s in seqs]
    cache = PLTCache.allocate(model.cfg, 2, 32, torch.float32)
    # stale state: another sequence in both rows first
    model.extend(torch.randint(0, 200, (2, 9), generator=g), torch.tensor([9, 9]), torch.tensor([0, 0]), cache)
    cache.advance(torch.tensor([9, 9]))
    # row 0 starts fresh with 5 tokens, row 1 starts fresh with 8 (padded to 8)
    t = torch.zeros(2, 8, dtype=torch.int64)
    t[0, :5], t[1, :8] = seqs[0][:5], seqs[1][:8]
    lg = model.extend(t, torch.tensor([5, 8]), torch.tensor([0, 0]), cache)
    cache.lengths[:] = torch.tensor([5, 8])
    errs = [(lg[0] - full[0][4]).abs().max().item(), (lg[1] - full[1][7]).abs().max().item()]
    # row 0 continues at 5 with 12 tokens, row 1 at 8 with 4 (padded to 12)
    t = torch.zeros(2, 12, dtype=torch.int64)
    t[0], t[1, :4] = seqs[0][5:17], seqs[1][8:12]
    lg = model.extend(t, torch.tensor([12, 4]), torch.tensor([5, 8]), cache)
    errs += [(lg[0] - full[0][16]).abs().max().item(), (lg[1] - full[1][11]).abs().max().item()]
    assert max(errs) < 2e-5, errs
