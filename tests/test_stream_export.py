"""`export --weights int8|int4` of a Hugging Face LoopCoder folder is streamed from its shards
(export/stream.py: traced on placeholder weights, quantized tensor by tensor). The reference is the
plain path: the float export of the same folder, then `quantize_export`. Both must hold the same
initializers and give the same logits on ONNX Runtime."""

from __future__ import annotations

import hashlib

import onnx
import pytest
import torch

from cli_helpers import run_cli
from plt_deploy import hf
from plt_deploy.export import stream
from plt_deploy.export.exporter import export_model
from plt_deploy.export.quantize import WeightSpec
from plt_deploy.export.quantize_export import quantize_export
from test_hf_loopcoder import random_loopcoder


def _initializers(folder) -> dict[str, dict[str, str]]:
    """graph -> {initializer name: sha256 of its bytes} (external data read in)."""
    out = {}
    for g in ("prefill", "decode"):
        proto = onnx.load(str(folder / f"{g}.onnx"))
        out[g] = {t.name: hashlib.sha256(onnx.numpy_helper.to_array(t).tobytes()).hexdigest()
                  for t in proto.graph.initializer}
    return out


def _logits(folder) -> torch.Tensor:
    from plt_deploy.backends.ort_backend import OrtBackend

    with OrtBackend(folder) as be:
        s = be.start(2, 32)
        logits = s.prefill(torch.tensor([[5, 9, 11, 3, 7, 8, 2, 1, 40, 41]] * 2), torch.tensor([10, 7]))
        seq = [logits]
        for _ in range(4):
            logits = s.decode(logits.argmax(-1))
            seq.append(logits)
    return torch.stack(seq)  # [steps, 2, V]


@pytest.fixture(scope="module", params=[("int4", False), ("int8", True)], ids=["int4-untied", "int8-tied"])
def pair(request, tmp_path_factory):
    """(streamed export, plain export) of a bf16 3-shard LoopCoder; SMALL lowered so the attention and
    MLP weights are placeholders (the default keeps every weight of a model this tiny)."""
    fmt, tied = request.param
    root = tmp_path_factory.mktemp(f"stream-{fmt}")
    model = random_loopcoder(seed=3, window=4, max_seq_len=64, vocab_size=300, d_model=128, mlp_hidden=256,
                             tie_embeddings=tied, dtype="bfloat16")
    src = hf.save_hf_checkpoint(model, root / "hf", shards=3)
    spec = WeightSpec(fmt, 32)
    mp = pytest.MonkeyPatch()
    mp.setattr(stream, "SMALL", 1024)
    placeholders = []
    real = stream.placeholder_model

    def recording(cfg, reader):
        model, names = real(cfg, reader)
        placeholders.append(names)
        return model, names

    mp.setattr(stream, "placeholder_model", recording)
    try:
        streamed = export_model(src, root / "streamed", dtype="float32", max_batch=2, max_seq=32, weights=spec,
                                progress=False)
    finally:
        mp.undo()
    float_export = export_model(src, root / "f32", dtype="float32", max_batch=2, max_seq=32, progress=False)
    plain = quantize_export(float_export, root / "plain", spec)
    assert placeholders and len(placeholders[0]) >= 8, placeholders  # the streamed path was taken, for real
    return streamed, plain


def test_streamed_export_equals_quantizing_the_float_export(pair):
    streamed, plain = pair
    a, b = _initializers(streamed), _initializers(plain)
    assert a == b and all(a.values())
    assert all(not any(e.value == stream.REFERENCE for t in onnx.load(str(streamed / f"{g}.onnx")).graph.initializer
                       for e in t.external_data) for g in ("prefill", "decode"))
    assert torch.equal(_logits(streamed), _logits(plain))


def test_streamed_export_bad_block_size_one_line_nothing_written(tmp_path, capsys):
    src = hf.save_hf_checkpoint(random_loopcoder(seed=1, dtype="bfloat16"), tmp_path / "hf", shards=2)
    out = tmp_path / "q"
    code, _, err = run_cli(capsys, "export", "--model", str(src), "--out", str(out), "--weights", "int4",
                           "--block-size", "128")
    assert code != 0 and "block size" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".q*"))


def test_quantized_checkpoint_refused_one_line(tmp_path, capsys):
    import json

    src = hf.save_hf_checkpoint(random_loopcoder(seed=2, dtype="bfloat16"), tmp_path / "hf", shards=2)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"bits": 4}}))
    code, _, err = run_cli(capsys, "export", "--model", str(src), "--out", str(tmp_path / "q"), "--weights", "int4")
    assert code != 0 and "quantized checkpoints are not supported" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "q").exists()
