"""A session's K/V capacity follows its sequences (backends/state.KVCapacity): ONNX Runtime steps read
the slots the rows reach, not the session's max_seq, and nothing a row holds is lost when the
buffers are laid out again. The torch session cuts its K/V to the same slots (views)."""

import pytest
import torch

from plt_deploy.backends import state as state_lib
from plt_deploy.backends.ort_backend import OrtBackend
from plt_deploy.backends.torch_backend import load as load_torch
from plt_deploy.cache import kv_bytes_formula


def test_capacity_grows_by_doubling_and_shrinks_only_when_four_times_too_large():
    step = state_lib.CAPACITY_STEP
    assert state_lib.capacity_for(1, step, 10 * step) == step
    assert state_lib.capacity_for(step + 1, step, 10 * step) == 2 * step
    assert state_lib.capacity_for(5 * step, 2 * step, 6 * step) == 6 * step  # capped at max_seq
    assert state_lib.capacity_for(step, 2 * step, 10 * step) == 2 * step  # 2x too large: kept
    assert state_lib.capacity_for(step, 4 * step, 10 * step) == step  # 4x: shrunk


def test_relayout_keeps_every_rows_slots_in_the_same_storage(monkeypatch):
    monkeypatch.setattr(state_lib, "CAPACITY_STEP", 4)
    B, H, T, D = 3, 2, 40, 5
    bufs = {"k": torch.zeros(B, H, T, D), "ring": torch.zeros(B, H, 4, D)}
    cap = state_lib.KVCapacity(bufs, {"k": "key", "ring": "local_key"}, T)
    ptr, nbytes = bufs["k"].data_ptr(), cap.nbytes
    assert bufs["k"].shape == (B, H, 4, D) and nbytes == B * H * T * D * 4
    bufs["k"].copy_(torch.randn(B, H, 4, D))
    seen = bufs["k"].clone()
    for needed, want in ((5, 8), (9, 16), (30, 32), (33, 40), (3, 4)):  # grow, grow, grow, cap, shrink
        keep = min(cap.cap, want, seen.shape[2])
        cap.reserve(needed)
        assert cap.cap == want and bufs["k"].shape == (B, H, want, D) and bufs["k"].is_contiguous()
        assert bufs["k"].data_ptr() == ptr and cap.nbytes == nbytes and bufs["ring"].shape == (B, H, 4, D)
        assert torch.equal(bufs["k"][:, :, :keep], seen[:, :, :keep])
        bufs["k"].copy_(torch.randn(B, H, want, D))  # the next round's content fills the new capacity
        seen = bufs["k"].clone()


def _serve_like(session, prompt_a, prompt_b):
    """Slots joining and leaving a 3-row session while others decode: every path that reserves capacity
    (extend of one row, of two non-consecutive rows, decode with a row held between its chunks,
    load_slot), growing past several steps, shrinking while a row still holds tokens, growing again.
    -> the logits of every call, in order."""
    out = []

    def decode(n, hold=None):
        tok = out[-1].argmax(-1) if out[-1].shape[0] == 3 else torch.tensor([5, 6, 7])
        for _ in range(n):
            out.append(session.decode(tok, hold=hold))
            tok = out[-1].argmax(-1)

    out.append(session.prefill_slots([2], prompt_a, torch.tensor([prompt_a.shape[1]])))
    decode(6)  # slot 2 crosses capacity 8
    out.append(session.extend([1], prompt_b[:, :5], torch.tensor([5]), torch.tensor([0])))  # a chunk...
    decode(2, hold=[1])  # ...the others decode while slot 1 waits for its next chunk
    out.append(session.extend([1], prompt_b[:, 5:], torch.tensor([prompt_b.shape[1] - 5]), torch.tensor([5])))
    saved = session.save_slot(1, prompt_b.shape[1])
    chunk = torch.cat([prompt_b[:, :3], prompt_a[:, :3]])  # rows 0 and 2: a copy, not a view of the rows
    out.append(session.extend([0, 2], chunk, torch.tensor([3, 3]), torch.tensor([0, int(session.lengths[2])])))
    decode(24)  # slot 2 past 32
    session.reset_slots([0])
    out.append(session.extend([0], prompt_a[:, :3], torch.tensor([3]), torch.tensor([0])))
    decode(5)
    session.reset_slots([2, 1])  # slot 0 holds 8 tokens: the capacity shrinks under it (rows move down)
    decode(3)
    session.load_slot(1, saved)
    out.append(session.extend([1], prompt_a[:, :3], torch.tensor([3]), torch.tensor([prompt_b.shape[1]])))
    decode(4)  # slot 1 past 16 again
    return out


@pytest.mark.parametrize("mode", ["plt", "vanilla"])
def test_onnxruntime_steps_at_any_capacity_equal_the_full_buffers(tiny_exports, monkeypatch, mode):
    ck, ex = tiny_exports[mode]
    g = torch.Generator().manual_seed(4)
    prompt_a, prompt_b = torch.randint(3, 200, (1, 5), generator=g), torch.randint(3, 200, (1, 12), generator=g)
    be = OrtBackend(ex, threads=1)
    full = _serve_like(be.start(3, 64), prompt_a, prompt_b)  # CAPACITY_STEP 256 > 64: never laid out again
    monkeypatch.setattr(state_lib, "CAPACITY_STEP", 8)
    s = be.start(3, 64)
    caps = []
    s._reserve = lambda n, r=s._reserve: (r(n), caps.append(s._capacity.cap))  # noqa: E731
    small = _serve_like(s, prompt_a, prompt_b)
    grown = caps.index(64)  # grew step by step, shrank to 16 with slot 0's 8 tokens in it, grew again
    assert caps[:grown + 1] == sorted(caps[:grown + 1]) and {8, 16, 32} <= set(caps[:grown]), caps
    shrunk = caps.index(16, grown)
    assert set(caps[grown:shrunk]) == {64} and caps[-1] == 32, caps
    assert s.kv_bytes() == kv_bytes_formula(be.config, 3, 64, 4)  # allocated for max_seq, whatever the capacity
    for a, b in zip(full, small, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    torch_out = _serve_like(load_torch(ck).start(3, 64), prompt_a, prompt_b)  # cut views on torch
    for a, b in zip(torch_out, small, strict=True):
        torch.testing.assert_close(b, a, atol=2e-4, rtol=2e-4)

