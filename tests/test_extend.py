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


# -- on the runtimes: torch and ONNX Runtime sessions, through DecoderSession.extend ------------------

@pytest.fixture(scope="module")
def runtime_pairs(tiny_exports, tmp_path_factory):
    """mode -> (torch backend, ONNX Runtime backend) of the same tiny checkpoint (window 8)."""
    from plt_deploy.backends.ort_backend import OrtBackend
    from plt_deploy.backends.torch_backend import load
    from plt_deploy.checkpoint import init_checkpoint
    from plt_deploy.export.exporter import export_model

    pairs = {mode: (ck, ex) for mode, (ck, ex) in tiny_exports.items()}
    root = tmp_path_factory.mktemp("loopcoder")
    ck = init_checkpoint("tiny", root / "ck", mode="loopcoder", seed=1)
    pairs["loopcoder"] = (ck, export_model(ck, root / "ex", max_batch=4, progress=False, validate=False))
    return {mode: (load(ck), OrtBackend(ex)) for mode, (ck, ex) in pairs.items()}


def session_chunks(backend, tokens: torch.Tensor, sizes: list[int], slots=(0, 1), max_seq: int = 64):
    """A new session of len(slots)+1 rows; rows `slots` extended chunk by chunk -> (session, logits per chunk)."""
    s = backend.start(len(slots) + 1, max_seq)
    out, start = [], 0
    for n in sizes:
        k = len(slots)
        out.append(s.extend(list(slots), tokens[:, start:start + n], torch.full((k,), n),
                            s.lengths[list(slots)].clone()))
        start += n
    return s, out


def greedy_after(s, first: torch.Tensor, slots, steps: int) -> list[list[int]]:
    """Greedy tokens of rows `slots` for `steps` decode steps after logits `first` [k, V]."""
    toks, got = first.argmax(-1), []
    for _ in range(steps):
        got.append(toks.tolist())
        row = torch.zeros(s.batch, dtype=torch.int64)
        row[list(slots)] = toks
        toks = s.decode(row)[list(slots)].argmax(-1)
    return got


@pytest.mark.parametrize("mode", ["plt", "looped", "vanilla", "loopcoder"])
def test_sessions_extend_in_chunks_like_one_prefill(runtime_pairs, mode):
    """Chunks of 1, 7, w-1, w, w+1 and the whole prompt, into rows 2 and 0 of a 3-row session (the
    other row untouched): the same last logits at the fp32 floor and the same greedy continuation as
    one prefill from 0, on torch and ONNX Runtime, and the two runtimes agree."""
    torch_be, ort_be = runtime_pairs[mode]
    w, P = torch_be.config.window, 29
    tokens = torch.randint(3, 250, (2, P), generator=torch.Generator().manual_seed(7))
    for be in (torch_be, ort_be):
        ref = be.start(2, 64)
        want = ref.prefill(tokens, torch.tensor([P, P]))
        want_greedy = greedy_after(ref, want, [0, 1], 8)
        for size in (1, 7, w - 1, w, w + 1, P):
            s, logits = session_chunks(be, tokens, chunks_of(size, P), slots=(2, 0))
            assert s.lengths.tolist() == [P, 0, P]
            err = (logits[-1] - want).abs().max().item()
            assert err < 3e-5, (be.name, size, err)
            assert greedy_after(s, logits[-1], [2, 0], 8) == want_greedy, (be.name, size)
    _, t_logits = session_chunks(torch_be, tokens, chunks_of(5, P))
    _, o_logits = session_chunks(ort_be, tokens, chunks_of(5, P))
    assert max((a - b).abs().max().item() for a, b in zip(t_logits, o_logits)) < 3e-5


def test_extend_refuses_what_it_cannot_continue(runtime_pairs):
    from plt_deploy.errors import InputError

    torch_be, _ = runtime_pairs["plt"]
    s = torch_be.start(2, 16)
    s.extend([0], torch.tensor([[5, 6, 7]]), torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(InputError, match="slot 0 holds 3 tokens: extend it from there"):
        s.extend([0], torch.tensor([[5]]), torch.tensor([1]), torch.tensor([2]))
    with pytest.raises(InputError, match="chunk from position 3 of 14 tokens exceeds the session's 16"):
        s.extend([0], torch.ones(1, 14, dtype=torch.int64), torch.tensor([14]), torch.tensor([3]))
    with pytest.raises(InputError, match="must be distinct rows"):
        s.extend([1, 1], torch.ones(2, 2, dtype=torch.int64), torch.tensor([2, 2]), torch.tensor([0, 0]))
    with pytest.raises(InputError, match=r"chunk lengths \[0\] must be in \[1, 2\]"):
        s.extend([1], torch.ones(1, 2, dtype=torch.int64), torch.tensor([0]), torch.tensor([0]))


@pytest.mark.parametrize("mode", ["plt", "loopcoder"])
def test_saved_prefix_continues_like_the_whole_prompt(runtime_pairs, mode):
    """save_slot at P, load_slot into another session's row, extend the rest: the prompt's logits."""
    for be in runtime_pairs[mode]:
        tokens = torch.randint(3, 250, (1, 21), generator=torch.Generator().manual_seed(3))
        ref = be.start(1, 32)
        want = ref.prefill(tokens, torch.tensor([21]))
        a = be.start(2, 32)
        a.extend([1], tokens[:, :13], torch.tensor([13]), torch.tensor([0]))
        saved = a.save_slot(1, 13)
        b = be.start(3, 32)
        b.extend([2], torch.randint(3, 250, (1, 17)), torch.tensor([17]), torch.tensor([0]))  # stale state
        b.load_slot(2, saved)
        got = b.extend([2], tokens[:, 13:], torch.tensor([8]), torch.tensor([13]))
        assert (got - want).abs().max().item() < 3e-5, be.name


@pytest.mark.parametrize("mode", ["plt", "looped"])
def test_decode_holds_rows_in_the_middle_of_a_prompt(runtime_pairs, mode):
    """A decode step of every row leaves the held rows (chunked prefill in progress) continuing exactly."""
    for be in runtime_pairs[mode]:
        tokens = torch.randint(3, 250, (1, 15), generator=torch.Generator().manual_seed(4))
        ref = be.start(1, 32)
        want = ref.prefill(tokens, torch.tensor([15]))
        s = be.start(2, 32)
        s.extend([0], torch.tensor([[3, 4, 5]]), torch.tensor([3]), torch.tensor([0]))  # row 0 decodes
        s.extend([1], tokens[:, :6], torch.tensor([6]), torch.tensor([0]))  # row 1: the first chunk
        s.decode(torch.tensor([9, 9]), hold=[1])
        assert s.lengths.tolist() == [4, 6]
        got = s.extend([1], tokens[:, 6:], torch.tensor([9]), torch.tensor([6]))
        assert (got - want).abs().max().item() < 3e-5, be.name


def test_rows_of_views_only_where_the_address_is_aligned():
    """TensorRT wants 256-byte aligned addresses: a view at an unaligned row offset becomes a copy,
    and write_rows puts the copy's new values back (a view was written in place already)."""
    from plt_deploy.backends import state as state_lib

    bufs = {"k": torch.zeros(4, 2, 8, 16), "carry": torch.zeros(4, 1, 8)}  # rows of 1024 and 32 bytes
    roles = {"k": "key", "carry": "carry"}
    rows = torch.tensor([1, 2])
    part = state_lib.rows_of(bufs, roles, rows, 8, align=256)
    shares = {n: t.untyped_storage().data_ptr() == bufs[n].untyped_storage().data_ptr() for n, t in part.items()}
    assert shares == {"k": bufs["k"].data_ptr() % 256 == 0, "carry": False}
    assert state_lib.rows_of(bufs, roles, rows, 8)["carry"].data_ptr() == bufs["carry"][1].data_ptr()  # align 1: a view
    for t in part.values():
        t.fill_(7.0)
    state_lib.write_rows(bufs, roles, rows, part, 0)
    for n in bufs:
        assert bool((bufs[n][1:3] == 7).all()) and bool((bufs[n][0] == 0).all()) and bool((bufs[n][3] == 0).all())
