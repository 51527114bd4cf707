"""Issue 20 (a new user's third pass): wrong answers without an error, crashes and hangs, output.
Each test runs the command as a user does (in-process run_cli or a subprocess)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, run_cli
from plt_deploy.checkpoint import init_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture()
def ckpt(tmp_path):
    return init_checkpoint("tiny", tmp_path / "ck", seed=5)


def truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])


def add_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file
    import torch

    weights = load_file(folder / "model.safetensors")
    save_file({**weights, "layers.0.attn.extra.weight": torch.zeros(4, 4)}, folder / "model.safetensors")


# --- 3, 4: damaged checkpoints named as such ------------------------------------------------

@pytest.mark.parametrize("damage, needle", [(truncate, "not a valid safetensors file"),
                                            (add_tensor, "unexpected tensor 'layers.0.attn.extra.weight'")])
def test_triton_repo_refuses_a_damaged_checkpoint(ckpt, tmp_path, capsys, damage, needle):
    pytest.importorskip("tritonclient", reason="needs the triton extra: pip install 'plt-deploy[triton]'")
    damage(ckpt)
    repo = tmp_path / "tr"
    code, _, err = run_cli(capsys, "triton-repo", "--model", str(ckpt), "--out", str(repo), "--backend", "torch")
    assert_one_line_error(code, err, "model.safetensors", needle)
    assert not repo.exists()


def test_check_names_a_truncated_checkpoint(ckpt, tmp_path, capsys):
    export = tmp_path / "ex"  # never read: the checkpoint is refused first, for what it is
    export.mkdir()
    (export / "manifest.json").write_text("{}")
    truncate(ckpt)
    code, _, err = run_cli(capsys, "check", "--model", str(ckpt), "--onnx", str(export))
    assert_one_line_error(code, err, f"{ckpt / 'model.safetensors'}: not a valid safetensors file")
    assert "sha256" not in err and "another model" not in err


# --- 5: a shape match is not an architecture match ------------------------------------------

def test_layout_says_shapes_do_not_prove_the_architecture(ckpt, capsys):
    code, out, err = run_cli(capsys, "layout", "--model", str(ckpt))
    assert code == 0, err
    assert "matches its config in names and shapes" in out
    assert "do not prove the architecture matches" in out and "compare logits" in out
    readme = (ROOT / "README.md").read_text()
    assert "A shape match does not prove the architecture matches" in readme and "load_checkpoint(" in readme


# --- 6: config errors name what the user wrote ----------------------------------------------

@pytest.mark.parametrize("fields, needle", [
    ({"n_heads": 3, "n_kv_heads": 1}, "d_model (64) is not divisible by n_heads (3)"),
    ({"n_heads": 6, "n_kv_heads": 2}, "d_model (64) is not divisible by n_heads (6)"),
    ({"d_model": 36, "n_heads": 4}, "d_model / n_heads = 36 / 4 = 9 is the head size, which must be even"),
])
def test_config_errors_name_the_fields_written(tmp_path, capsys, fields, needle):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(fields))
    code, _, err = run_cli(capsys, "layout", "--config", str(cfg))
    assert_one_line_error(code, err, needle)


def test_explicit_head_dim_is_honoured(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"n_heads": 6, "n_kv_heads": 2, "head_dim": 10}))
    code, out, err = run_cli(capsys, "layout", "--config", str(cfg))
    assert code == 0 and "head_dim=10" in out, err


# --- 7: seeds in range ----------------------------------------------------------------------

@pytest.mark.parametrize("argv", [("generate", "--model", "m", "--prompt", "a", "--temperature", "1"),
                                  ("train", "--out", "t"), ("init", "--out", "i"), ("bench", "--preset", "tiny")])
def test_seed_out_of_range_is_a_usage_error(capsys, argv):
    code, _, err = run_cli(capsys, *argv, "--seed", "99999999999999999999")
    assert code == 2 and "Traceback" not in err, err
    assert "Invalid value for '--seed'" in err and "-9223372036854775808<=x<=9223372036854775807" in err, err


# --- 8: Ctrl-C is an interrupt whenever it comes ---------------------------------------------

def test_ctrl_c_while_tracing_the_export_is_an_interrupt(ckpt, tmp_path):
    out = tmp_path / "ex"
    proc = subprocess.Popen([sys.executable, "-c", "from plt_deploy.cli import main; main()", "export", "--model",
                             str(ckpt), "--out", str(out)], env=ENV, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal's foreground job
    try:
        seen = ""
        while "trace prefill" not in seen:
            line = proc.stderr.readline()
            assert line, seen
            seen += line
        time.sleep(3)  # inside torch.export (which, unhelped, reported the Ctrl-C as a failed export)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        err = seen + proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
    assert "failed" not in err and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# --- 9, 10: bench sizes checked before allocating, clipping leaves room for every run ------

def test_bench_refuses_a_batch_that_cannot_fit_before_allocating(capsys):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, _, err = run_cli(capsys, "bench", "--preset", "tiny", "--no-peer", "--batch", "100000", "--no-progress")
    assert_one_line_error(code, err, "--batch 100000: a ", "but this machine has", "lower --batch")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: nothing big allocated


def test_bench_with_few_new_tokens_leaves_room_for_the_warm_up(capsys, tmp_path):
    code, out, err = run_cli(capsys, "bench", "--preset", "tiny", "--no-peer", "--new-tokens", "4", "--no-contexts",
                             "--repeats", "1", "--variants", "plt-2,vanilla", "--bandwidth-mib", "8", "--no-progress",
                             "--json", str(tmp_path / "bench.json"))
    assert code == 0, err
    assert "note: prompt and new tokens clipped to 247 + 4 to fit max_seq_len 256" in out

    # 13: the report keeps [brackets] (rich markup) and flags a run whose spread swamps its ratios
    import io

    from plt_deploy.bench import targets
    from plt_deploy.bench.report import print_report
    from plt_deploy.progress import console

    result = json.loads((tmp_path / "bench.json").read_text())
    result["peer"]["reason"] = "transformers is not installed; pip install 'plt-deploy[bench]'"
    plt2 = next(r for r in result["rows"] if r["variant"] == "plt-2")
    plt2["decode_ms_p90"] = 2 * plt2["decode_ms_median"]  # one outlier in a short run
    result["targets"] = targets.check_targets(result)
    shown = console(width=200)
    shown.file = io.StringIO()
    print_report(result, shown)
    text = shown.file.getvalue()
    assert "pip install 'plt-deploy[bench]'" in text
    assert "warning: plt-2 batch 1: decode p90 is 2.0x its median" in text, text
    latency = next(c for c in result["targets"] if c["id"] == "plt2_latency_vs_vanilla")
    assert latency["passed"] is None and latency["noisy"] and "too noisy" in latency["note"]
    assert "│ noisy  │" in text


# --- 11: tables in a terminal never cut numbers ---------------------------------------------

def run_in_terminal(columns: int, *argv, term: str = "xterm", stderr: bool = False) -> str:
    """stdout (and stderr) of `plt-deploy ARGV` on a pseudo-terminal COLUMNS wide, colours removed."""
    import pty
    import re

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", "from plt_deploy.cli import main; main()", *map(str, argv)],
                            env={**ENV, "COLUMNS": str(columns), "TERM": term}, stdout=slave,
                            stderr=slave if stderr else subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode()).replace("\r", "")


@pytest.mark.parametrize("columns", [80, 100])
def test_a_wide_table_switches_to_one_line_per_row_in_a_narrow_terminal(columns):
    out = run_in_terminal(columns, "bench", "--preset", "tiny", "--no-peer", "--prompt-len", "8", "--new-tokens", "2",
                          "--warmup-tokens", "1", "--repeats", "1", "--no-contexts", "--variants", "plt-2,vanilla",
                          "--bandwidth-mib", "8", "--no-progress")
    assert "…" not in out and all(len(line) <= columns for line in out.splitlines()), out
    flat = " ".join(out.split())  # the narrow layout wraps between words, never inside one
    assert "- variant: plt-2; backend: torch; batch: 1; prompt: 8;" in flat and "KV ratio: 1.0000" in flat, out


def test_a_table_that_fits_stays_a_table(tmp_path):
    out = run_in_terminal(80, "layout", "--preset", "tiny")
    assert "…" not in out and "┃ tensor" in out and "[259, 64]" in out, out
    assert all(len(line) <= 80 for line in out.splitlines()), out


# --- 12: TERM=dumb gets plain progress lines -------------------------------------------------

def test_progress_on_a_dumb_terminal_is_plain_lines(tmp_path):
    out = run_in_terminal(100, "train", "--out", tmp_path / "t", "--steps", "20", "--batch", "8", "--eval-examples",
                          "4", term="dumb", stderr=True)
    assert "train plt: 0/20" in out and "train plt: 20/20 loss" in out, out


# --- 13: the smaller ones ----------------------------------------------------------------------

def test_generate_needs_new_tokens_and_reads_prompts_from_files_and_stdin(ckpt, tmp_path, capsys):
    code, _, err = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt", "a", "--max-new-tokens", "0")
    assert code == 2 and "0 is not in the range x>=1" in err, err
    code, _, err = run_cli(capsys, "generate", "--model", str(ckpt))
    assert code == 2 and "--prompt-file" in err, err
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("12+34=")
    code, out, err = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt-file", str(prompt),
                             "--max-new-tokens", "2")
    assert code == 0 and out.startswith("12+34="), err
    huge = subprocess.run([sys.executable, "-c", "from plt_deploy.cli import main; main()", "generate", "--model",
                           str(ckpt), "--prompt-file", "-"], input=b"7" * (1 << 20), env=ENV, capture_output=True,
                          timeout=120)  # 1 MB: more than a shell's argument limit allows on one --prompt
    assert huge.returncode == 1 and b"Traceback" not in huge.stderr, huge.stderr
    assert huge.stderr.startswith(b"error: prompt of 1048577 tokens") and huge.stderr.count(b"\n") == 1, huge.stderr


def test_check_report_into_an_unwritable_place_fails_first(ckpt, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    export = tmp_path / "ex"
    export.mkdir()
    (export / "manifest.json").write_text("{}")
    code, _, err = run_cli(capsys, "check", "--model", str(ckpt), "--onnx", str(export), "--report",
                           str(blocker / "r.json"))
    assert_one_line_error(code, err, f"--report {blocker}: cannot write there")


def test_report_files_never_replace_inputs_or_other_files(tiny_exports, tmp_path, capsys):
    """check --report CKPT/config.json replaced the checkpoint's config (reported: data loss); bench
    --json and loadtest --json overwrote any file. Refused before any work, nothing changed; an
    earlier report of the same command is replaced."""
    ck, ex = tiny_exports["plt"]
    before = {p: p.read_bytes() for p in [*ck.iterdir(), *ex.iterdir()] if p.is_file()}
    for target, words in ((ck / "config.json", "inside --model"), (ex / "manifest.json", "inside --onnx"),
                          (ex / "new.json", "inside --onnx")):
        code, _, err = run_cli(capsys, "check", "--model", str(ck), "--onnx", str(ex), "--report", str(target))
        assert_one_line_error(code, err, words)
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    for argv in (("check", "--model", str(ck), "--onnx", str(ex), "--report", str(mine)),
                 ("bench", "--preset", "tiny", "--json", str(mine)),
                 ("bench", "--model", str(ck), "--json", str(ck / "r.json")),
                 ("loadtest", "--url", "http://127.0.0.1:1", "--json", str(mine))):
        code, _, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, "--")
        assert "exists and is not an earlier report" in err or "inside --model" in err, err
    assert mine.read_text() == '{"my": "notes"}' and not (ck / "r.json").exists()
    assert {p: p.read_bytes() for p in before} == before
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    code, _, err = run_cli(capsys, "loadtest", "--url", "http://127.0.0.1:1", "--json", str(loop))
    assert_one_line_error(code, err, "cannot resolve the path")
    report = tmp_path / "check.json"
    report.write_text("")  # an empty file (`--report "$(mktemp)"`) is taken
    for _ in range(2):  # a second run replaces the first run's report
        code, out, err = run_cli(capsys, "check", "--model", str(ck), "--onnx", str(ex), "--report", str(report),
                                 "--steps", "1", "--new-tokens", "1")
        assert code == 0, out + err
    assert json.loads(report.read_text())["written_by"] == "plt-deploy check"


def test_export_and_triton_repo_check_the_tokenizer_files_they_copy(ckpt, tmp_path, capsys):
    """A tokenizer.json with more tokens than the vocabulary, or not valid JSON, was copied into an
    export (and a Triton repository) that then failed in its first generate (reported)."""
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({f"w{i}": i for i in range(500)}, unk_token="w0")).save(str(ckpt / "tokenizer.json"))
    for argv in (("export", "--model", str(ckpt), "--out", str(tmp_path / "ex")),
                 ("triton-repo", "--model", str(ckpt), "--backend", "torch", "--out", str(tmp_path / "repo"))):
        code, _, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, "500 tokens do not fit the model's vocab_size 259")
    (ckpt / "tokenizer.json").write_text("{bad")
    code, _, err = run_cli(capsys, "export", "--model", str(ckpt), "--out", str(tmp_path / "ex"))
    assert_one_line_error(code, err, "not a valid tokenizer.json")
    assert not (tmp_path / "ex").exists() and not (tmp_path / "repo").exists()


def test_hugging_face_text_needs_its_tokenizer(tmp_path, capsys):
    """A LoopCoder folder without tokenizer.json generated with the byte tokenizer, silently (reported)."""
    from test_hf_loopcoder import random_loopcoder

    from plt_deploy import hf

    folder = hf.save_hf_checkpoint(random_loopcoder(), tmp_path / "lc")
    code, _, err = run_cli(capsys, "generate", "--model", str(folder), "--prompt", "def hello")
    assert_one_line_error(code, err, "tokenizer.json: not found; a Hugging Face model's text needs its own tokenizer")
    code, _, err = run_cli(capsys, "triton-repo", "--model", str(folder), "--backend", "torch", "--out",
                           str(tmp_path / "repo"))  # its model load would refuse it: refused now
    assert_one_line_error(code, err, f"{folder / 'tokenizer.json'}: not found")
    code, _, err = run_cli(capsys, "export", "--model", str(folder), "--out", str(tmp_path / "ex"), "--no-validate")
    assert code == 0 and "has no tokenizer.json: generate, serve and triton-repo will refuse this export" in err
    code, _, err = run_cli(capsys, "triton-repo", "--model", str(tmp_path / "ex"), "--out", str(tmp_path / "repo"))
    assert_one_line_error(code, err, f"{tmp_path / 'ex' / 'tokenizer.json'}: not found")
    assert not (tmp_path / "repo").exists()


def test_check_refuses_tensorrt_before_comparing_anything(tiny_exports, capsys):
    """--backends ...,tensorrt on an export without engines ran the ONNX Runtime comparison first (reported)."""
    ck, ex = tiny_exports["plt"]
    code, out, err = run_cli(capsys, "check", "--model", str(ck), "--onnx", str(ex), "--backends",
                             "torch,onnxruntime,tensorrt")
    assert_one_line_error(code, err, "no TensorRT engines recorded")
    assert "check onnxruntime" not in out + err


def test_layout_loops_range_matches_init(capsys):
    for command in (("layout", "--preset", "tiny"), ("init", "--out", "x")):
        code, _, err = run_cli(capsys, *command, "--loops", "1")
        assert code == 2 and "1 is not in the range x>=2" in err, err
    code, _, err = run_cli(capsys, "layout", "--preset", "tiny", "--mode", "vanilla", "--loops", "2")
    assert code == 2 and "vanilla has one loop" in err, err


def test_top_level_help_shows_whole_descriptions(capsys, monkeypatch):
    from plt_deploy.cli import COMMANDS

    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli(capsys, "--help")
    commands = out.split("Commands:")[1]
    assert code == 0 and "..." not in commands, out
    flat = " ".join(commands.split())
    for name, description in COMMANDS.items():
        assert f"{name} {description}" in flat, (name, out)


def test_prompt_file_drops_one_trailing_newline_and_refuses_bytes_that_are_not_utf8(ckpt, tmp_path, capsys):
    def generate(*argv, stdin=None):
        return subprocess.run([sys.executable, "-c", "from plt_deploy.cli import main; main()", "generate", "--model",
                               str(ckpt), "--max-new-tokens", "1", *argv], input=stdin, env=ENV, capture_output=True,
                              timeout=120)

    piped = generate("--prompt-file", "-", stdin=b"12+34=\n")  # what `echo 12+34= | plt-deploy generate` sends
    plain = generate("--prompt", "12+34=")
    assert piped.returncode == 0 and piped.stdout == plain.stdout, (piped.stdout, plain.stdout, piped.stderr)
    kept = generate("--prompt-file", "-", stdin=b"12+34=\n\n")  # only one newline is dropped
    assert kept.returncode == 0 and kept.stdout.startswith(b"12+34=\n"), kept.stdout
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    code, _, err = run_cli(capsys, "generate", "--model", str(ckpt), "--prompt-file", str(bad))
    assert_one_line_error(code, err, "not UTF-8 text (byte 3")
    assert code == 2


def test_check_unknown_backend_is_a_usage_error(ckpt, tmp_path, capsys):
    code, _, err = run_cli(capsys, "check", "--model", str(ckpt), "--onnx", str(tmp_path), "--backends", "torch,foo")
    assert code == 2 and "unknown backend 'foo'" in err and "Traceback" not in err, err


@pytest.mark.parametrize("value", ["torch", "", " , ", "torch,torch"])
def test_check_backends_naming_nothing_to_compare_is_a_usage_error(tmp_path, capsys, value):
    code, _, err = run_cli(capsys, "check", "--model", str(tmp_path / "no-model"), "--onnx", str(tmp_path),
                           "--backends", value)
    assert_one_line_error(code, err, "Invalid value for '--backends'", "nothing to compare")
    assert code == 2


def test_a_ctrl_c_that_torch_swallows_while_tracing_still_stops_the_export(ckpt, tmp_path, monkeypatch):
    """Seen in CI: torch's fake tensors caught the KeyboardInterrupt of a Ctrl-C during tracing,
    logged it as an error with a traceback and went on, and the export finished (exit 0). The
    exporter remembers the Ctrl-C and stops after the trace; nothing is written."""
    import os
    import signal

    import torch

    from plt_deploy.export import exporter

    def export_that_swallows(*args, **kwargs):  # as torch did: the Ctrl-C caught inside, the trace goes on
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler runs here, raising KeyboardInterrupt
        except KeyboardInterrupt:
            pass
        return None

    monkeypatch.setattr(torch.onnx, "export", export_that_swallows)
    with pytest.raises(KeyboardInterrupt):
        exporter.export_model(ckpt, tmp_path / "ex", progress=False)
    assert not (tmp_path / "ex").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_export_refuses_a_checkpoint_replaced_while_it_was_exported(tmp_path, monkeypatch):
    """train --force into --model during an export: the graphs held the old weights, the manifest
    named the new file (reported). Now the export fails and writes nothing."""
    from plt_deploy.checkpoint import load_checkpoint, save_checkpoint
    from plt_deploy.errors import ArtifactError
    from plt_deploy.export import manifest as manifest_lib
    from plt_deploy.export.exporter import export_model

    ck = init_checkpoint("tiny", tmp_path / "ck", seed=5)
    real = manifest_lib.model_identity

    def replaced_meanwhile(model_dir):
        other = load_checkpoint(init_checkpoint("tiny", tmp_path / "other", seed=6))
        save_checkpoint(other, ck)  # what a concurrent `train --force --out ck` does at its end
        return real(model_dir)
    monkeypatch.setattr(manifest_lib, "model_identity", replaced_meanwhile)
    with pytest.raises(ArtifactError, match="its files changed while they were exported"):
        export_model(ck, tmp_path / "ex", progress=False, validate=False)
    assert not (tmp_path / "ex").exists()
