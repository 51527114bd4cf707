"""Checkpoint round trip and the CLI's handling of bad input: one line, non-zero exit, no traceback."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from plt_deploy.checkpoint import load_checkpoint
from cli_helpers import assert_one_line_error, run_cli
from plt_deploy.checkpoint import init_checkpoint
from plt_deploy.config import PLTConfig
from plt_deploy.errors import CheckpointError, ConfigError
from plt_deploy.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer


@pytest.fixture()
def ckpt(tmp_path):
    return init_checkpoint("tiny", tmp_path / "m", mode="plt", loops=2, window=4, seed=3)


def test_round_trip_is_exact(ckpt):
    from plt_deploy.model import PLT

    a = load_checkpoint(ckpt)
    b = PLT(PLTConfig.from_name("tiny", loops=2, window=4)).init_weights(3).eval()
    tokens = torch.randint(0, 259, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(a(tokens), b(tokens), rtol=0, atol=0)
    assert a.cfg == b.cfg


def tamper(ckpt, edit):
    weights = load_file(str(ckpt / "model.safetensors"))
    edit(weights)
    save_file(weights, str(ckpt / "model.safetensors"))


@pytest.mark.parametrize("edit,needle", [
    (lambda w: w.pop("layers.1.attn.wk.weight"), "missing tensor 'layers.1.attn.wk.weight'"),
    (lambda w: w.__setitem__("layers.9.extra", torch.zeros(2)), "unexpected tensor 'layers.9.extra'"),
    (lambda w: w.__setitem__("layers.0.mlp.w1.weight", torch.zeros(3, 64)), "tensor 'layers.0.mlp.w1.weight' has shape"),
    (lambda w: w.__setitem__("norm.weight", torch.full((64,), float("nan"))), "'norm.weight' contains NaN"),
])
def test_bad_weights_name_the_tensor(ckpt, capsys, edit, needle):
    tamper(ckpt, edit)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(ckpt)
    code, _, err = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt", "hi", "--max-new-tokens", "2")
    assert_one_line_error(code, err, needle)


def test_config_that_does_not_match_the_weights(ckpt, capsys):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["n_layers"] = 3
    (ckpt / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt", "hi")
    assert_one_line_error(code, err, "missing tensor 'layers.2.")


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ('{"n_heads": 4, "n_kv_heads": 3}', "divisible"),
    ('{"window": 0}', "window must be >= 1"),
    ('{"window": 5000}', "window (5000) must be <= max_seq_len"),
    ('{"loops": 0}', "loops must be >= 1"),
    ('{"colour": "blue"}', "unknown field(s) colour"),
])
def test_bad_config_files(ckpt, capsys, content, needle):
    (ckpt / "config.json").write_text(content)
    code, _, err = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt", "hi")
    assert_one_line_error(code, err, "config.json", needle)


def test_corrupt_weights_file(ckpt, capsys):
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    (ckpt / "model.safetensors").write_bytes(bytes(data[:100]))
    code, _, err = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt", "hi")
    assert_one_line_error(code, err, "model.safetensors", "not a valid safetensors file")


def test_a_flipped_byte_in_the_weights_is_refused(ckpt, capsys):
    """Reported: one byte flipped inside model.safetensors' tensor data loaded silently (generate
    answered as before). save_checkpoint records the data's sha256 in the header; loading checks it.
    A file without the digest (an older checkpoint) still loads."""
    from safetensors.torch import load, save

    path = ckpt / "model.safetensors"
    good = path.read_bytes()
    data = bytearray(good)
    data[-5] ^= 0x01  # inside the last tensor's bytes: still a valid safetensors file
    path.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt", "hi")
    assert_one_line_error(code, err, "model.safetensors: the tensor data does not match the checksum")
    path.write_bytes(save(load(good), metadata={"format": "pt", "producer": "plt-deploy"}))  # no digest
    code, out, err = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt", "hi", "--max-new-tokens", "2")
    assert code == 0, err


def test_impossible_config_values():
    with pytest.raises(ConfigError, match="divisible"):
        PLTConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ConfigError, match="mode"):
        PLTConfig(mode="diagonal")
    with pytest.raises(ConfigError, match="12 / 4 = 3 is the head size, which must be even for RoPE"):
        PLTConfig(d_model=12, n_heads=4, n_kv_heads=2)
    with pytest.raises(ConfigError, match="head_dim must be even"):
        PLTConfig(d_model=12, n_heads=4, n_kv_heads=2, head_dim=5)


def test_cli_flags(tmp_path, capsys):
    code, _, err = run_cli(capsys, "init", "--preset", "nope", "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "nope")
    code, _, err = run_cli(capsys, "init", "--out", str(tmp_path / "x"), "--window", "0")
    assert_one_line_error(code, err, "--window")
    assert not (tmp_path / "x" / "config.json").exists()
    code, _, err = run_cli(capsys, "init", "--out", str(tmp_path / "x"), "--mode", "plt", "--loops", "3")
    assert code == 0
    before = (tmp_path / "x" / "model.safetensors").read_bytes()
    code, _, err = run_cli(capsys, "init", "--out", str(tmp_path / "x"), "--seed", "5")
    assert_one_line_error(code, err, "already holds a checkpoint")
    assert (tmp_path / "x" / "model.safetensors").read_bytes() == before  # nothing lost
    code, _, err = run_cli(capsys, "generate", "--model", str(tmp_path / "x"), "--prompt", "a", "--top-p", "0")
    assert_one_line_error(code, err, "--top-p")


def test_too_long_prompt(ckpt, capsys):
    code, _, err = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt", "x" * 300)
    assert_one_line_error(code, err, "exceeds the model's max_seq_len of 256")


def test_generate_cli_batch_and_stream(ckpt, capsys):
    code, out, _ = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt", "ab", "--prompt", "abcdef",
                           "--max-new-tokens", "5", "--temperature", "0.8", "--top-k", "20", "--seed", "1")
    assert code == 0 and out.count("\n") == 2
    code, out, _ = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt", "ab", "--max-new-tokens", "4",
                           "--stream")
    assert code == 0


def test_hf_tokenizer_json_is_used_when_present(ckpt):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2, "hello": 3, "world": 4, "[UNK]": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(ckpt / "tokenizer.json"))
    loaded = load_tokenizer(ckpt, 259)
    assert isinstance(loaded, HFTokenizer)
    # no post-processor in this tokenizer.json: no BOS, as transformers encodes it
    assert loaded.encode("hello world") == [3, 4] and loaded.bos_id == 0 and loaded.eos_id == 1
    assert isinstance(load_tokenizer(ckpt.parent, 259), ByteTokenizer)
    (ckpt / "tokenizer.json").write_text("garbage")
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        load_tokenizer(ckpt, 259)


def test_init_refuses_a_window_beyond_max_seq_len(tmp_path, capsys):
    """Reported: `init --preset tiny --window 5000` (max_seq_len 256) was written, and its export
    carried rings of 5,000 slots for sequences of at most 256."""
    code, _, err = run_cli(capsys, "init", "--preset", "tiny", "--out", str(tmp_path / "w"), "--window", "5000")
    assert code == 2 and "window (5000) must be <= max_seq_len (256)" in err and "Traceback" not in err, err
    assert not (tmp_path / "w").exists()
    code, _, err = run_cli(capsys, "init", "--preset", "tiny", "--out", str(tmp_path / "w"), "--window", "256")
    assert code == 0, err
