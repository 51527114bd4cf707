"""Flags checked where click parses them, and what `init` writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from cli_helpers import run_cli


@pytest.mark.parametrize("dtype, stored", [("bfloat16", "bfloat16"), ("float16", "float16"), ("float32", "float32")])
def test_init_writes_weights_in_the_config_dtype(tmp_path, capsys, dtype, stored):
    code, _, err = run_cli(capsys, "init", "--out", str(tmp_path / "m"), "--dtype", dtype)
    assert code == 0, err
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == dtype
    with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {f"torch.{stored}"}


@pytest.mark.parametrize("args, needle", [(("--mode", "vanilla", "--loops", "3"), "vanilla has one loop"),
                                          (("--mode", "plt", "--loops", "1"), "1 is not in the range x>=2")])
def test_init_loops_follow_the_mode(tmp_path, capsys, args, needle):
    code, _, err = run_cli(capsys, "init", "--out", str(tmp_path / "m"), *args)
    assert code == 2 and needle in err and not (tmp_path / "m").exists()


def _cli(*argv):
    import os
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    return [sys.executable, "-c", "from plt_deploy.cli import main; main()", *argv], env


def test_a_closed_pipe_exits_141_not_1(tiny_exports):
    import shlex
    import subprocess

    ck, ex = tiny_exports["plt"]
    for argv in (("check", "--model", str(ck), "--onnx", str(ex), "--steps", "2", "--new-tokens", "4"),  # rich's table: rich alone would exit 1
                 ("generate", "--model", str(ck), "--prompt", "ab", "--max-new-tokens", "40", "--stream")):
        cmd, env = _cli(*argv)
        # `true` closes the pipe at once: every write of the command meets a closed pipe (a reader such
        # as `head -c 1` would race with output that fits in the pipe's buffer)
        proc = subprocess.run(f"{shlex.join(cmd)} | true; exit ${{PIPESTATUS[0]}}", shell=True, env=env,
                              capture_output=True, timeout=120, executable="/bin/bash")
        assert proc.returncode == 141 and b"Traceback" not in proc.stderr, (argv[0], proc.returncode, proc.stderr)


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    import signal
    import subprocess
    import time

    from plt_deploy.checkpoint import init_checkpoint

    ck = init_checkpoint("tiny", tmp_path / "m", seed=1)
    cmd, env = _cli("export", "--model", str(ck), "--out", str(tmp_path / "ex"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the export is under way (its first stage line)
        line = proc.stderr.readline()
        if not line or line.startswith(b"export: 1/"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.splitlines()[-1:] == [b"interrupted"] and b"\n\n" not in err, err
    assert not (tmp_path / "ex").exists()  # nothing half-written


def test_a_ctrl_c_after_the_command_finished_does_not_fail_it(tmp_path):
    """Reported: `triton-repo` interrupted just after it printed `wrote ...` exited 130 although the
    repository was complete. Once the command has finished, a Ctrl-C no longer changes its exit."""
    code = ("import os, signal, sys; from plt_deploy.cli import main; sys.argv = ['plt-deploy', 'layout', "
            "'--preset', 'tiny']; main(); os.kill(os.getpid(), signal.SIGINT); import time; time.sleep(0.5)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0 and "interrupted" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("args, needle", [
    (["--ray-address", "auto"], "--ray-address goes with --replicas N"),
    (["--max-replicas", "4", "--ray-cpus", "2"], "--max-replicas, --ray-cpus go with --replicas N"),
    (["--replicas", "2", "--ray-address", "auto", "--port", "0"], "0 cannot name a port on a Ray cluster's nodes"),
])
def test_serve_ray_options_without_their_context_are_usage_errors(tiny_exports, capsys, args, needle):
    """Ray options were ignored without --replicas (a single-process server started); --port 0 cannot
    be resolved for a cluster's proxies. Usage errors, before anything loads."""
    pytest.importorskip("fastapi")
    code, _, err = run_cli(capsys, "serve", "--model", str(tiny_exports["plt"][0]), *args)
    assert code == 2 and needle in err, err


def test_decode_takes_one_token_per_row_and_generate_needs_prompts(tiny_exports):
    """A session of 2 rows given 1 token: ONNX Runtime broadcast it to both rows once the binding was
    kept across steps; now every backend refuses it. generate_text with no prompt is an InputError."""
    import torch

    from plt_deploy.backends.ort_backend import OrtBackend
    from plt_deploy.backends.torch_backend import load
    from plt_deploy.errors import InputError
    from plt_deploy.generate import generate_text

    ck, ex = tiny_exports["plt"]
    for be in (OrtBackend(ex, threads=1), load(ck, threads=1)):
        s = be.start(2, 16)
        tok = s.prefill(torch.tensor([[5, 6, 7], [8, 9, 10]]), torch.tensor([3, 3])).argmax(-1)
        s.decode(tok)
        with pytest.raises(InputError, match=r"one token per row, \[2\]; got shape \[1\]"):
            s.decode(tok[:1])
    with pytest.raises(InputError):
        generate_text(str(ck), [], "torch", max_new_tokens=2)
