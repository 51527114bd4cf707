"""Issue 8 (first run): what a new user meets, at the CLI, the way they run it.

Each test reproduces one reported failure: tracebacks on bad input, a trained model failing its
own check, nothing readable when piped, work lost or half-done.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from plt_deploy.checkpoint import init_checkpoint
from cli_helpers import assert_one_line_error, run_cli
from plt_deploy.errors import ArtifactError, ModelError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def cli_process(*argv, **kw):
    return subprocess.run([sys.executable, "-c", "from plt_deploy.cli import main; main()", *argv], env=ENV,
                          capture_output=True, timeout=kw.pop("timeout", 120), **kw)


@pytest.fixture()
def ckpt(tmp_path):
    return init_checkpoint("tiny", tmp_path / "m", mode="plt", loops=2, window=4, seed=3)


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


# --- no tracebacks ---------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["d_model", "vocab_size", "max_seq_len"])
@pytest.mark.parametrize("value", [10 ** 9, 10 ** 12])
def test_huge_config_refused_before_allocating(ckpt, capsys, field, value):
    edit_config(ckpt, **{field: value})
    code, _, err = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt", "a")
    assert_one_line_error(code, err, "the model needs about", "this machine has")


@pytest.mark.parametrize("changes, needle", [({"norm_eps": "x"}, "norm_eps must be a number"),
                                             ({"loops": True}, "loops must be an integer"),
                                             ({"n_heads": "4"}, "n_heads must be an integer")])
def test_config_field_types_named(ckpt, capsys, changes, needle):
    edit_config(ckpt, **changes)
    code, _, err = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt", "a")
    assert_one_line_error(code, err, needle)


def test_tiny_temperature_is_greedy_and_nan_logits_are_refused(ckpt, capsys):
    code, hot, _ = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt", "ab", "--temperature", "1e-45",
                           "--max-new-tokens", "8", "--seed", "1")
    code0, greedy, _ = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt", "ab", "--max-new-tokens", "8")
    assert code == 0 and code0 == 0 and hot == greedy
    from plt_deploy.generate import SamplingParams, sample

    logits = torch.zeros(2, 5)
    logits[1, 3] = float("nan")
    with pytest.raises(ModelError, match="NaN"):
        sample(logits, SamplingParams(temperature=0.7), None)


def test_prompt_bytes_that_are_not_utf8(ckpt):
    # Bytes straight from the shell, as `--prompt $'\xff\xfe'` passes them.
    proc = subprocess.run([sys.executable, "-c", "from plt_deploy.cli import main; main()", "generate", "--model",
                           str(ckpt), "--prompt", os.fsdecode(b"x\xff\xfe"), "--max-new-tokens", "3"],
                          env=ENV, capture_output=True, timeout=120)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith("x\ufffd\ufffd".encode())


def test_stream_prints_the_same_text_as_without(ckpt, capsys):
    # A random model emits arbitrary bytes: multi-byte characters split across tokens.
    args = ("generate", "--model", str(ckpt), "--prompt", "é€", "--max-new-tokens", "24", "--temperature", "1",
            "--seed", "3")
    _, plain, _ = run_cli(capsys, *args)
    _, streamed, _ = run_cli(capsys, *args, "--stream")
    assert streamed == plain


def test_stop_text_of_several_tokens_ends_the_output_before_it(ckpt, capsys):
    from plt_deploy.generate import generate_text

    full = generate_text(str(ckpt), ["ab"], max_new_tokens=32)[0]
    k = next(i for i in range(2, len(full) - 1) if "\ufffd" not in full[i:i + 2])
    stop = full[k:k + 2]  # two characters: at least two byte tokens
    assert generate_text(str(ckpt), ["ab"], max_new_tokens=32, stop=(stop,))[0] == full[:full.find(stop)]
    args = ("generate", "--model", str(ckpt), "--prompt", "ab", "--max-new-tokens", "32", "--stop", stop)
    _, plain, _ = run_cli(capsys, *args)
    _, streamed, _ = run_cli(capsys, *args, "--stream")
    assert streamed == plain and plain.rstrip("\n").endswith(full[:full.find(stop)])
    for flag, value, needle in (("--temperature", "nan", "'--temperature': nan is not a finite number"),
                                ("--stop", "", "'--stop': must be non-empty text")):
        code, _, err = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt", "ab", flag, value)
        assert code == 2 and needle in err  # usage errors, before the model loads


def test_stream_decoder_never_splits_a_character():
    from plt_deploy.generate import TextStream
    from plt_deploy.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    ids = list("aé€😀b".encode()) + [0xFF] + list("c".encode())
    dec = TextStream(tok.decode)
    pieces = [dec.push(i)[0] for i in ids] + [dec.flush()]
    assert "".join(pieces) == tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces[:-3])  # complete characters only, until the bad byte


# --- check agrees with itself ---------------------------------------------------------------

def test_check_refuses_nothing_to_compare(tiny_exports, capsys):
    ck, ex = tiny_exports["plt"]
    code, _, err = run_cli(capsys, "check", "--model", str(ck), "--onnx", str(ex), "--backends", "torch")
    assert_one_line_error(code, err, "nothing to compare")


def test_check_adapts_to_a_small_export(tmp_path, capsys):
    from plt_deploy.export.exporter import export_model

    ck = init_checkpoint("tiny", tmp_path / "ck", seed=2)
    ex = export_model(ck, tmp_path / "ex", max_batch=1, max_seq=24, progress=False)
    code, out, err = run_cli(capsys, "check", "--model", str(ck), "--onnx", str(ex), "--report",
                             str(tmp_path / "r.json"))
    assert code == 0, out + err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["backends"]["onnxruntime"]["parity"]["batch"] == 1
    assert any("--max-seq 24" in n for n in report["notes"]) and "PASSED" in out


def test_the_shortest_export_exports_and_checks(tmp_path, capsys):
    ck = init_checkpoint("tiny", tmp_path / "ck", seed=2)
    code, _, err = run_cli(capsys, "export", "--model", str(ck), "--out", str(tmp_path / "ex2"), "--max-seq", "2")
    assert code == 2 and "--max-seq" in err and "Traceback" not in err  # click: 2 is not in the range x>=3
    code, _, err = run_cli(capsys, "export", "--model", str(ck), "--out", str(tmp_path / "ex"), "--max-seq", "3")
    assert code == 0, err
    code, out, err = run_cli(capsys, "check", "--model", str(ck), "--onnx", str(tmp_path / "ex"), "--report",
                             str(tmp_path / "r.json"))
    assert code == 0, out + err
    parity = json.loads((tmp_path / "r.json").read_text())["backends"]["onnxruntime"]["parity"]
    assert parity["prompt_lengths"] == [1, 1] and parity["decode_steps"] == 1


def test_trained_model_passes_check(tmp_path, capsys):
    """The failing case: a trained model's logits (tens in size) against the fp32 rounding floor."""
    from plt_deploy.export.exporter import export_model
    from plt_deploy.training import train_variants

    train_variants(tmp_path / "run", steps=300, eval_examples=16)
    ex = export_model(tmp_path / "run", tmp_path / "ex", max_batch=2, progress=False)
    code, out, err = run_cli(capsys, "check", "--model", str(tmp_path / "run"), "--onnx", str(ex), "--report",
                             str(tmp_path / "r.json"))
    report = json.loads((tmp_path / "r.json").read_text())
    assert code == 0 and report["passed"], out
    parity = report["backends"]["onnxruntime"]["parity"]
    assert max(abs(v) for v in [parity["summary"]["decode_logits"]["max_abs"]]) > 0  # a real comparison
    assert "[E]" not in err and "colored" not in err and "FAIL" not in out
    # The rule still catches a real error: one flipped weight.
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "run" / "model.safetensors")
    name = next(n for n in weights if "mlp" in n or "w1" in n or "up" in n)
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] *= -1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((tmp_path / "run" / "config.json").read_bytes())
    save_file(weights, bad / "model.safetensors")
    from plt_deploy.backends.ort_backend import OrtBackend
    from plt_deploy.backends.torch_backend import load as load_torch
    from plt_deploy.check.parity import compare_backends

    assert not compare_backends(load_torch(bad), OrtBackend(ex), steps=8)["passed"]


# --- edited manifests -----------------------------------------------------------------------

@pytest.mark.parametrize("edit", [("config", "vocab_size", 300), ("config", "window", 3),
                                  ("config", "max_seq_len", 100), ("top", "max_seq", 200)])
def test_edited_manifest_refused(tiny_exports, tmp_path, capsys, edit):
    import shutil

    ck, ex = tiny_exports["plt"]
    copy = tmp_path / "ex"
    shutil.copytree(ex, copy)
    data = json.loads((copy / "manifest.json").read_text())
    where, key, value = edit
    (data["model"]["config"] if where == "config" else data)[key] = value
    (copy / "manifest.json").write_text(json.dumps(data))
    code, _, err = run_cli(capsys, "check", "--model", str(ck), "--onnx", str(copy))
    assert_one_line_error(code, err, "manifest", "re-export")
    code, _, err = run_cli(capsys, "generate", "--backend", "onnxruntime", "--model", str(copy), "--prompt", "a")
    assert_one_line_error(code, err, "re-export")


# --- helpful errors for mix-ups -------------------------------------------------------------

def test_backend_and_folder_mixups(tiny_exports, tmp_path, capsys):
    ck, ex = tiny_exports["plt"]
    code, _, err = run_cli(capsys, "export", "--model", str(ex), "--out", str(tmp_path / "x"))
    assert_one_line_error(code, err, "--model", "is an export folder", "takes a checkpoint folder")
    code, _, err = run_cli(capsys, "check", "--model", str(ex), "--onnx", str(ck))
    assert_one_line_error(code, err, "--model", "is an export folder")
    code, _, err = run_cli(capsys, "generate", "--backend", "onnxruntime", "--model", str(ck), "--prompt", "a")
    assert_one_line_error(code, err, "is a checkpoint folder", "plt-deploy export")
    code, _, err = run_cli(capsys, "generate", "--model", str(ex), "--prompt", "a")
    assert_one_line_error(code, err, "is an export folder", "--backend onnxruntime")


# --- nothing lost, nothing half-done --------------------------------------------------------

def test_one_export_at_a_time_and_stale_temporaries(tmp_path):
    from plt_deploy.output_folder import claim_output, temporary_folder

    out = tmp_path / "ex"
    stale = temporary_folder(out)  # what a killed run leaves
    (stale / "decode.onnx").write_bytes(b"half")
    users = tmp_path / ".ex.mine.tmp"  # the same pattern, not the tool's: kept
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    notes = []
    with claim_output(out, log=notes.append):
        assert not stale.exists() and "interrupted export" in notes[0] and len(notes) == 1
        assert (users / "notes.txt").read_text() == "mine"
        with pytest.raises(ArtifactError, match="another plt-deploy run into this folder is running"):
            with claim_output(out):
                pass
    with claim_output(out):  # released
        pass


def test_full_disk_names_the_path(tmp_path):
    from plt_deploy.output_folder import claim_output

    with pytest.raises(ArtifactError, match=f"{tmp_path}: no space left on device"):
        with claim_output(tmp_path / "ex"):
            raise OSError(errno.ENOSPC, "No space left on device")


def test_repeated_variant_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "t"), "--variants", "plt,plt")
    assert_one_line_error(code, err, "given twice")


def test_ctrl_c_during_train_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", "from plt_deploy.cli import main; main()", "train", "--out",
                             str(out), "--steps", "100000", "--save-every", "10", "--batch", "8"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not (out / "model.safetensors").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "model.safetensors").exists(), "no periodic checkpoint within 90 s"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err and b"interrupted: plt at step" in err, err
    from plt_deploy.checkpoint import load_checkpoint

    load_checkpoint(out)  # complete and loadable
    record = json.loads((out / "train_results.json").read_text())["results"][-1]
    assert record["interrupted"] and record["steps"] >= 10
    again = cli_process("train", "--out", str(out), "--steps", "100000")  # refused before torch loads, naming the step
    assert again.returncode == 1 and again.stderr.decode().strip() == (
        f"error: {out}: already holds the checkpoint of an interrupted run (plt at step {record['steps']} of "
        "100000); training does not resume: pass --force to train again")


# --- readable when piped; fast --help -------------------------------------------------------

def test_progress_is_plain_lines_when_piped(tmp_path):
    proc = cli_process("train", "--out", str(tmp_path / "t"), "--steps", "20", "--batch", "8", "--eval-examples", "4")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    assert "train plt: 0/20" in err and "train plt: 20/20 loss" in err and "\x1b[" not in err
    assert "held-out acc" in proc.stdout.decode()  # the table is not cut to 80 columns


def test_help_does_not_import_heavy_modules():
    code = ("import sys\nfrom plt_deploy.cli import COMMANDS, main\nbad = []\n"
            "for c in [None, *COMMANDS]:\n"
            "    try:\n        main(([c] if c else []) + ['--help'])\n    except SystemExit:\n        pass\n"
            "    bad += [(c, m) for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]\n"
            "print(bad)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.decode().strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr


def test_bad_config_fails_before_torch_loads(ckpt, tmp_path):
    edit_config(ckpt, norm_eps="x")
    code = ("import sys\nfrom plt_deploy.cli import main\n"
            f"for argv in (['generate', '--model', {str(ckpt)!r}, '--prompt', 'a'],\n"
            f"             ['check', '--model', {str(ckpt)!r}, '--onnx', {str(tmp_path)!r}]):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        print(e.code)\n"
            "print('torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, timeout=60)
    assert proc.stdout.decode().split() == ["1", "1", "False"], proc.stdout + proc.stderr
    assert b"norm_eps must be a number" in proc.stderr and b"Traceback" not in proc.stderr


def test_bf16_export_warns_that_onnxruntime_cpu_cannot_run_it(ckpt, tmp_path, capsys):
    code, out, err = run_cli(capsys, "export", "--model", str(ckpt), "--out", str(tmp_path / "bf16"), "--dtype",
                             "bf16", "--no-validate")
    assert code == 0, err
    assert "warning: a bfloat16 export is for TensorRT" in err and "not validated here" in err
    # a bf16 checkpoint (every published LoopCoder) exports bf16 by default: said too (reported: silent)
    from plt_deploy.checkpoint import init_checkpoint

    bf16 = init_checkpoint("tiny", tmp_path / "ck16", seed=3, dtype="bfloat16")
    code, out, err = run_cli(capsys, "export", "--model", str(bf16), "--out", str(tmp_path / "ex16"), "--no-validate")
    assert code == 0 and "warning: a bfloat16 export (the checkpoint's dtype; --dtype picks another)" in err, err


def test_messages_after_a_streamed_line_start_their_own_line(ckpt):
    """generate --stream printed the prompt, then an error (or Ctrl-C's "interrupted") glued to it
    in a file holding both streams (reported: `hello]]interrupted`)."""
    code = "from plt_deploy.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, "generate", "--model", str(ckpt), "--prompt", "hello",
                           "--max-new-tokens", "5000", "--stream"], env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=120)
    assert proc.returncode == 1 and b"\nerror: " in proc.stdout and b"helloerror" not in proc.stdout, proc.stdout


def test_closed_pipe_is_not_a_failure(ckpt):
    code = "from plt_deploy.cli import main; main()"
    proc = subprocess.run(f"{sys.executable} -c '{code}' generate --model {ckpt} --prompt ab --max-new-tokens 40 "
                          "--temperature 1 --seed 1 --stream | head -c 1", shell=True, env=ENV, capture_output=True,
                          timeout=120, executable="/bin/bash")
    assert b"Traceback" not in proc.stderr and b"error" not in proc.stderr, proc.stderr


def test_checkpoint_files_are_readable_like_exports(ckpt):
    mask = os.umask(0)
    os.umask(mask)
    for f in ("config.json", "model.safetensors"):
        assert (ckpt / f).stat().st_mode & 0o777 == 0o666 & ~mask


def test_serve_refuses_a_busy_port_in_one_line(ckpt, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        code, _, err = run_cli(capsys, "serve", "--model", str(ckpt), "--port", str(s.getsockname()[1]))
    assert_one_line_error(code, err, "cannot listen on 127.0.0.1:", "choose another --port")


def _bpe_tokenizer(kind: str):
    """A small trained tokenizers BPE: byte-level (GPT-2 style) or SentencePiece-style Metaspace."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=kind == "metaspace", unk_token=None))
    if kind == "bytelevel":
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Sequence(
            [decoders.ByteFallback(), decoders.Metaspace()])
        alphabet = [f"<0x{b:02X}>" for b in range(256)]
    corpus = ["the quick brown fox jumps over the lazy dog", "déjà vu, naïve café — 😀 ünïcödé", "1 + 2 = 3"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, initial_alphabet=alphabet,
                                                       special_tokens=["<eos>"], show_progress=False))
    return tok


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
def test_text_stream_is_incremental_and_equals_decode(kind):
    import random

    from plt_deploy.generate import TextStream

    tok = _bpe_tokenizer(kind)
    decoded_ids = []

    def decode(ids):
        decoded_ids.append(len(ids))
        return tok.decode(ids, skip_special_tokens=True)

    rng = random.Random(0)
    for trial in range(20):  # random ids: words, pieces of characters (byte fallback), the special token
        ids = [rng.randrange(tok.get_vocab_size()) for _ in range(rng.randrange(1, 60))]
        stream = TextStream(decode)
        shown = "".join(stream.push(i)[0] for i in ids) + stream.flush()
        # equal to decode, but for the U+FFFD a last incomplete character decodes to (flush drops it)
        assert shown == tok.decode(ids, skip_special_tokens=True).rstrip("\ufffd"), (kind, ids)
    decoded_ids.clear()
    stream = TextStream(decode)
    text = "the quick brown fox jumps over the lazy dog " * 40
    for i in tok.encode(text).ids:
        stream.push(i)
    assert stream.flush() == "" and stream.text == tok.decode(tok.encode(text).ids)
    assert sum(decoded_ids) < 8 * len(tok.encode(text).ids)  # O(n): short windows, not the whole sequence


# --- sizes beyond this machine or the artifact: refused before allocating, naming the flag --------

def assert_serve_error(code, err, *needles):
    """serve prints its `loading ...` line first; then exactly one `error:` line, no traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 1 and "Traceback" not in err and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error") for line in lines) == 1 and len(lines) <= 2, err
    for needle in needles:
        assert needle in lines[-1], err


def test_train_batch_beyond_memory_refused_before_any_model(tmp_path, capsys, monkeypatch):
    import plt_deploy.training as training

    def no_model(*a, **k):
        raise AssertionError("a model was built before the memory check")

    monkeypatch.setattr(training, "PLT", no_model)
    out = tmp_path / "x"
    code, _, err = run_cli(capsys, "train", "--out", str(out), "--preset", "base", "--batch", "100000", "--steps", "1")
    assert_one_line_error(code, err, "--batch 100000: training needs about", "TiB", "this machine has", "lower --batch")
    assert code == 1 and not out.exists()


def test_training_estimate_counts_batch_layers_and_loops():
    from plt_deploy.config import PLTConfig

    cfg = PLTConfig.from_name("tiny")
    fixed = cfg.training_bytes(0, 13)
    assert fixed == 16 * cfg.parameter_count()  # weights, gradients, AdamW's two moments
    one = cfg.training_bytes(1, 13) - fixed
    assert cfg.training_bytes(1000, 13) - fixed == 1000 * one  # activations scale with the batch
    assert cfg.replace(n_layers=4).training_bytes(1, 13) - 16 * cfg.replace(n_layers=4).parameter_count() > 1.5 * one
    assert PLTConfig.from_name("tiny", mode="vanilla", loops=1).training_bytes(1, 13) - fixed < 0.6 * one


def test_serve_slots_beyond_memory_refused_before_allocating(ckpt, capsys):
    code, _, err = run_cli(capsys, "serve", "--model", str(ckpt), "--slots", "100000000")
    assert_serve_error(code, err, "--slots 100000000 x --max-context 256: the KV cache needs about",
                       "this machine has", "lower --slots or --max-context")
    from plt_deploy.backends.torch_backend import load
    from plt_deploy.errors import InputError

    with pytest.raises(InputError, match="batch of 100000000 x 256 tokens: the KV cache needs about"):
        load(ckpt).start(10 ** 8, 256)  # generate's many prompts meet the same check


def test_onnxruntime_slots_name_the_flag_and_the_memory(tiny_exports, capsys):
    from plt_deploy.backends.ort_backend import OrtBackend
    from plt_deploy.errors import InputError
    from plt_deploy.serve.engine import Engine
    from plt_deploy.tokenizer import ByteTokenizer

    ex = tiny_exports["plt"][1]  # --max-batch 4
    code, _, err = run_cli(capsys, "serve", "--backend", "onnxruntime", "--model", str(ex), "--slots", "64")
    assert_serve_error(code, err, "--slots 64 exceeds the export's --max-batch 4")
    be = OrtBackend(ex)
    assert be.max_batch == be.limits.max_batch == 4
    be.manifest.max_batch = 10 ** 8  # as `export --max-batch 100000000`, without a 30 s export
    with pytest.raises(InputError, match=f"--slots 1000000 x --max-context {be.max_seq}: the KV cache needs about"):
        Engine(be, ByteTokenizer(), slots=10 ** 6, max_context=be.max_seq)


def test_tensorrt_limits_come_from_the_build_section(tiny_exports):
    """The engines' limits (pure Python: no TensorRT here) refuse what the ONNX Runtime ones would."""
    from plt_deploy.backends.trt_backend import engine_limits
    from plt_deploy.errors import InputError
    from plt_deploy.export.manifest import read_manifest

    manifest = read_manifest(tiny_exports["plt"][1], verify_hashes=False)
    limits = engine_limits(manifest, {"decode_cache_len": 64, "max_batch": 2})
    assert (limits.max_batch, limits.max_seq) == (2, 64)
    limits.check(2, 64, "--slots", "--max-context")
    with pytest.raises(InputError, match="--slots 3 exceeds the engines' --max-batch 2"):
        limits.check(3, 64, "--slots", "--max-context")
    with pytest.raises(InputError, match="--max-context 65 exceeds the engines' --max-seq of 64"):
        limits.check(2, 65, "--slots", "--max-context")
