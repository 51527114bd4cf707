"""Issue 20 (data loss): `--force` replaces only what the same command wrote, never the command's
own input; one `train` run into an --out at a time. Run as a user runs the commands."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, run_cli
from plt_deploy.checkpoint import init_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def cli_popen(*argv):
    return subprocess.Popen([sys.executable, "-c", "from plt_deploy.cli import main; main()", *map(str, argv)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture()
def runs(tmp_path):
    """runs/walk (a checkpoint) and runs/notes.txt: the folder from the report."""
    root = tmp_path / "runs"
    init_checkpoint("tiny", root / "walk", seed=4)
    (root / "notes.txt").write_text("mine")
    return root


def test_export_force_never_deletes_its_source_or_other_files(runs, capsys):
    code, _, err = run_cli(capsys, "export", "--model", str(runs / "walk"), "--out", str(runs), "--force")
    assert_one_line_error(code, err, f"{runs / 'walk'} is inside --out {runs}")
    assert (runs / "walk" / "model.safetensors").is_file() and (runs / "notes.txt").read_text() == "mine"


def test_export_force_refuses_a_folder_it_did_not_write(runs, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "export", "--model", str(runs / "walk"), "--out", str(other), "--force")
    assert_one_line_error(code, err, f"{other}: not made by `plt-deploy export` (no manifest.json; it holds "
                                     "notes.txt)", "--force replaces only")
    assert (other / "notes.txt").read_text() == "mine"


def test_export_force_is_allowed_over_an_export_only(runs, tmp_path, capsys):
    from plt_deploy.output_folder import check_replaceable

    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text('{"format": "plt-deploy.onnx-export"}')
    code, _, err = run_cli(capsys, "export", "--model", str(runs / "walk"), "--out", str(old))
    assert_one_line_error(code, err, f"{old}: already exists; pass --force")
    check_replaceable(old, "export", "manifest.json", force=True, sources=[runs / "walk"])  # what --force passes
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", "export", "manifest.json", force=False)  # empty: written into


def test_triton_repo_force_replaces_only_its_own_repository(runs, tmp_path, capsys):
    import json

    pytest.importorskip("tritonclient", reason="needs the triton extra: pip install 'plt-deploy[triton]'")
    ck = runs / "walk"
    code, _, err = run_cli(capsys, "triton-repo", "--model", str(ck), "--out", str(runs), "--backend", "torch",
                           "--force")
    assert_one_line_error(code, err, f"{ck} is inside --out {runs}")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "data.csv").write_text("1,2")
    code, _, err = run_cli(capsys, "triton-repo", "--model", str(ck), "--out", str(user), "--backend", "torch",
                           "--force")
    assert_one_line_error(code, err, "not made by `plt-deploy triton-repo`", "data.csv")
    assert (user / "data.csv").read_text() == "1,2"
    repo = tmp_path / "repo"
    repo.mkdir()  # an empty existing folder is written into, without --force
    argv = ("triton-repo", "--model", str(ck), "--out", str(repo), "--backend", "torch")
    code, _, err = run_cli(capsys, *argv)
    assert code == 0 and (repo / "plt-deploy-repo.json").is_file(), err
    code, _, err = run_cli(capsys, *argv, "--model", str(repo / "plt" / "1" / "artifact"), "--force")
    assert_one_line_error(code, err, "is inside --out")  # its own copied checkpoint as the source
    assert run_cli(capsys, *argv, "--force")[0] == 0  # its own repository: replaced
    (repo / "NOTES.md").write_text("mine")  # the user's file beside it: --force would delete it
    code, _, err = run_cli(capsys, *argv, "--force")
    assert_one_line_error(code, err, "did not write (NOTES.md)")
    assert (repo / "NOTES.md").read_text() == "mine" and (repo / "plt-deploy-repo.json").is_file()
    (repo / "NOTES.md").unlink()
    (repo / "plt" / "2").mkdir()  # a version the user added beside ours, and notes inside ours
    (repo / "plt" / "2" / "model.py").write_text("mine")
    (repo / "plt" / "1" / "NOTES.md").write_text("mine")
    before = _snapshot(repo)
    code, _, err = run_cli(capsys, *argv, "--force")
    assert_one_line_error(code, err, "did not write (plt/1/NOTES.md, plt/2)")
    assert _snapshot(repo) == before
    shutil.rmtree(repo / "plt" / "2")
    (repo / "plt" / "1" / "NOTES.md").unlink()
    assert run_cli(capsys, *argv, "--force")[0] == 0  # only its own files again: replaced
    marker = json.loads((repo / "plt-deploy-repo.json").read_text())
    (repo / "plt-deploy-repo.json").write_text(json.dumps({**marker, "written_by": "someone else"}))
    code, _, err = run_cli(capsys, *argv, "--force")
    assert_one_line_error(code, err, "not made by `plt-deploy triton-repo` (plt-deploy-repo.json is not its own")


def test_second_train_into_the_same_out_is_refused_at_once(tmp_path):
    out = tmp_path / "run"
    first = cli_popen("train", "--out", out, "--steps", "100000", "--batch", "8", "--save-every", "0")
    try:
        lock = tmp_path / ".run.lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lock.read_text().strip() == str(first.pid), "the first run did not take the lock within 60 s"
        second = subprocess.run([sys.executable, "-c", "from plt_deploy.cli import main; main()", "train", "--out",
                                 str(out), "--task", "reverse", "--steps", "5"], env=ENV, capture_output=True,
                                timeout=60)
    finally:
        first.kill()
        first.communicate()
    err = second.stderr.decode()
    assert second.returncode == 1 and "Traceback" not in err, err
    assert err.strip() == (f"error: {out}: another plt-deploy run into this folder is running (pid {first.pid}); "
                           "wait for it or choose another --out")
    assert not (out / "train_results.json").exists()  # the refused run wrote nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_train_into_a_read_only_out_fails_before_training(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, _, err = run_cli(capsys, "train", "--out", str(out), "--steps", "100000")
    finally:
        out.chmod(0o755)
    assert_one_line_error(code, err, f"--out {out}: cannot write there")


def test_train_into_an_unwritable_out_fails_before_training(tmp_path, capsys):
    """As root (CI containers), a folder under a file stands in for an unwritable place."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    start = time.monotonic()
    code, _, err = run_cli(capsys, "train", "--out", str(blocker / "run"), "--steps", "100000")
    assert_one_line_error(code, err, str(blocker))
    assert time.monotonic() - start < 30  # refused, not trained first (100000 steps take an hour)


def test_export_force_refuses_an_export_holding_the_users_files(runs, tmp_path, capsys):
    import json

    old = tmp_path / "old"
    (old / "sub").mkdir(parents=True)
    (old / "decode.onnx").write_bytes(b"graph")
    (old / "manifest.json").write_text(json.dumps({"format": "plt-deploy.onnx-export", "files": {"decode.onnx": {}}}))
    (old / "NOTES.md").write_text("mine")
    (old / "sub" / "x.txt").write_text("mine too")
    for argv in (("export", "--model", str(runs / "walk")), ("export", "--model", str(runs / "walk"),
                                                              "--weights", "int8", "--block-size", "16")):
        code, _, err = run_cli(capsys, *argv, "--out", str(old), "--force")
        assert_one_line_error(code, err, "did not write (NOTES.md, sub)", "--force would delete them")
    assert sorted(p.name for p in old.iterdir()) == ["NOTES.md", "decode.onnx", "manifest.json", "sub"]
    assert (old / "sub" / "x.txt").read_text() == "mine too"
    (old / "NOTES.md").unlink()
    shutil.rmtree(old / "sub")
    from plt_deploy.export.manifest import owned_names
    from plt_deploy.output_folder import check_replaceable

    check_replaceable(old, "export", "manifest.json", force=True, owned=owned_names)  # only its own files: ok
    (old / "tensorrt").mkdir()  # what `build` writes there is its own, a user's file there is not
    for name in ("decode.plan", "prefill.plan", "timing.cache", ".decode.plan.x1.tmp"):
        (old / "tensorrt" / name).write_bytes(b"plan")
    check_replaceable(old, "export", "manifest.json", force=True, owned=owned_names)
    (old / "tensorrt" / "NOTES.md").write_text("mine")
    code, _, err = run_cli(capsys, "export", "--model", str(runs / "walk"), "--out", str(old), "--force")
    assert_one_line_error(code, err, "did not write (tensorrt/NOTES.md)")
    assert (old / "tensorrt" / "NOTES.md").read_text() == "mine"


def test_a_whole_export_is_its_own(tiny_exports):
    """What --force may replace covers everything `export` writes (else --force over an export is refused)."""
    from plt_deploy.export.manifest import owned_names
    from plt_deploy.output_folder import not_owned

    for _, ex in tiny_exports.values():
        assert not_owned(ex, owned_names(ex)) == [], ex


def test_export_force_refuses_a_manifest_json_it_did_not_write(runs, tmp_path, capsys):
    web = tmp_path / "web"
    web.mkdir()
    (web / "manifest.json").write_text('{"name": "my app", "files": {"index.html": {}}}')
    (web / "index.html").write_text("mine")
    before = _snapshot(web)
    code, _, err = run_cli(capsys, "export", "--model", str(runs / "walk"), "--out", str(web), "--force")
    assert_one_line_error(code, err, "not made by `plt-deploy export` (manifest.json is not its own; it holds "
                                     "index.html, manifest.json)")
    assert _snapshot(web) == before


def _hf_folder(root: Path, model_type: bool = True) -> Path:
    """A Hugging Face model folder as a user downloads it (the bytes are what matters here); without
    model_type, a config.json of some other tool."""
    import json

    root.mkdir(parents=True)
    config = {"architectures": ["SomeModel"], "hidden_size": 64}
    (root / "config.json").write_text(json.dumps({**config, **({"model_type": "iquestloopcoder"} if model_type else {})}))
    (root / "model-00001-of-00002.safetensors").write_bytes(b"weights 1")
    (root / "model.safetensors").write_bytes(b"weights")
    (root / "tokenizer.json").write_text("{}")
    return root


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


INIT_TRAIN = [("init",), ("init", "--force"), ("train", "--force", "--steps", "1"),
              ("train", "--variants", "plt,vanilla", "--steps", "1"),
              ("train", "--variants", "plt,vanilla", "--force", "--steps", "1")]


@pytest.mark.parametrize("model_type", [True, False], ids=["hf", "other-config"])
@pytest.mark.parametrize("argv", INIT_TRAIN)
def test_init_and_train_never_write_into_a_hugging_face_folder(tmp_path, capsys, argv, model_type):
    hf = _hf_folder(tmp_path / "LoopCoder", model_type)
    before = _snapshot(hf)
    code, _, err = run_cli(capsys, argv[0], "--out", str(hf), *argv[1:])
    assert_one_line_error(code, err, str(hf), "config.json")
    assert _snapshot(hf) == before


@pytest.mark.parametrize("argv", INIT_TRAIN)
@pytest.mark.parametrize("hidden", [".git", ".notes"])
def test_init_and_train_count_hidden_files(tmp_path, capsys, argv, hidden):
    mine = tmp_path / "mine"
    (mine / ".git").mkdir(parents=True) if hidden == ".git" else (mine.mkdir(), (mine / hidden).write_text("mine"))
    before = _snapshot(mine)
    code, _, err = run_cli(capsys, argv[0], "--out", str(mine), *argv[1:])
    assert_one_line_error(code, err, f"holds {hidden} but no plt-deploy checkpoint")
    assert _snapshot(mine) == before


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("command", ["init", "train"])
def test_init_and_train_refuse_a_folder_of_other_files(tmp_path, capsys, force, command):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    extra = ("--variants", "plt,vanilla", "--steps", "1") if command == "train" else ()
    code, _, err = run_cli(capsys, command, "--out", str(mine), *extra, *(["--force"] if force else []))
    assert_one_line_error(code, err, "holds notes.txt but no plt-deploy checkpoint")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_init_force_refuses_a_checkpoint_holding_the_users_files(runs, capsys):
    ck = runs / "walk"
    (ck / "NOTES.md").write_text("mine")
    before = _snapshot(ck)
    for force in ((), ("--force",)):
        code, _, err = run_cli(capsys, "init", "--out", str(ck), *force, "--seed", "9")
        assert_one_line_error(code, err, "did not write (NOTES.md)")
        assert _snapshot(ck) == before


def test_init_force_refuses_weights_it_did_not_write(runs, capsys):
    """config.json is a plt-deploy config, but model.safetensors was saved by something else."""
    from safetensors.torch import load_file, save_file

    ck = runs / "walk"
    save_file(load_file(ck / "model.safetensors"), ck / "model.safetensors")  # no producer metadata
    before = _snapshot(ck)
    code, _, err = run_cli(capsys, "init", "--out", str(ck), "--force")
    assert_one_line_error(code, err, "did not write (model.safetensors)")
    assert _snapshot(ck) == before


def test_init_force_replaces_an_earlier_output_whole(runs, capsys):
    """No stale train_results.json, temporary or variant folder of the earlier run survives."""
    import json

    from plt_deploy.config import PLTConfig

    ck = runs / "walk"
    (ck / "train_results.json").write_text(json.dumps({"task": "addition", "results": []}))
    (ck / ".model.safetensors.x1.tmp").write_bytes(b"half")  # left by a killed run
    code, _, err = run_cli(capsys, "init", "--out", str(ck))
    assert_one_line_error(code, err, "already holds a checkpoint; pass --force")
    old = (ck / "model.safetensors").read_bytes()
    code, _, err = run_cli(capsys, "init", "--out", str(ck), "--force", "--seed", "9", "--mode", "vanilla")
    assert code == 0, err
    assert sorted(p.name for p in ck.iterdir()) == ["config.json", "model.safetensors"]
    assert (ck / "model.safetensors").read_bytes() != old and PLTConfig.from_json(ck / "config.json").mode == "vanilla"
    assert sorted(p.name for p in runs.iterdir()) == ["notes.txt", "walk"]  # no lock or temporary left beside it
    parent = runs / "two"  # a several-variant train output: replaced by one checkpoint
    for v in ("plt", "vanilla"):
        init_checkpoint("tiny", parent / v, mode=v)
    (parent / "train_results.json").write_text(json.dumps({"task": "addition", "results": []}))
    code, _, err = run_cli(capsys, "init", "--out", str(parent), "--force")
    assert code == 0 and sorted(p.name for p in parent.iterdir()) == ["config.json", "model.safetensors"], err


def test_train_force_replaces_an_earlier_output_whole(runs, capsys):
    import json

    parent = runs / "two"
    for v in ("plt", "looped", "vanilla"):
        init_checkpoint("tiny", parent / v, mode=v)
    (parent / "train_results.json").write_text(json.dumps({"task": "addition", "results": [{"variant": "looped"}]}))
    (parent / "looped" / "NOTES.md").write_text("mine")  # a user's file inside an earlier variant: refused
    argv = ("train", "--out", str(parent), "--variants", "plt,vanilla", "--steps", "1", "--eval-examples", "1")
    code, _, err = run_cli(capsys, *argv, "--force")
    assert_one_line_error(code, err, "holds files `plt-deploy init` or `train` did not write (looped)")
    assert (parent / "looped" / "NOTES.md").is_file()
    (parent / "looped" / "NOTES.md").unlink()
    code, _, err = run_cli(capsys, *argv, "--force")
    assert code == 0, err
    assert sorted(p.name for p in parent.iterdir()) == ["plt", "train_results.json", "vanilla"]
    results = json.loads((parent / "train_results.json").read_text())["results"]
    assert [r["variant"] for r in results] == ["plt", "vanilla"]


@pytest.mark.parametrize("command", ["export", "init", "triton-repo"])
def test_a_users_hidden_folder_named_like_a_temporary_survives(runs, tmp_path, capsys, command):
    """The tool removes only the temporaries it marked: a user's `.NAME.x.tmp` folder beside --out
    is kept through a run, and what is published carries no marker."""
    from plt_deploy.output_folder import TEMPORARY_MARKER

    out = tmp_path / "out"
    users = tmp_path / ".out.backup.tmp"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    argv = {"export": ["export", "--model", runs / "walk", "--out", out],
            "init": ["init", "--preset", "tiny", "--out", out],
            "triton-repo": ["triton-repo", "--model", runs / "walk", "--out", out, "--backend", "torch"]}[command]
    if command == "triton-repo":
        pytest.importorskip("tritonclient", reason="needs the triton extra: pip install 'plt-deploy[triton]'")
    for force in ([], ["--force"]):  # a new folder, then replacing it (the old one goes aside in a temporary)
        code, _, err = run_cli(capsys, *map(str, argv), *force)
        assert code == 0, err
    assert (users / "notes.txt").read_text() == "mine"
    assert not list(out.rglob(TEMPORARY_MARKER))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")) == [".out.backup.tmp"]


def test_a_file_put_into_out_while_the_command_runs_is_refused_not_deleted(runs, tmp_path, monkeypatch):
    """--force checked `out` before the run; the check runs again just before the old folder is
    swapped out, so a file the user saved there meanwhile stops the command instead of going."""
    from plt_deploy import checkpoint
    from plt_deploy.errors import ArtifactError, CheckpointError
    from plt_deploy.export import exporter

    ex = tmp_path / "ex"
    exporter.export_model(runs / "walk", ex, validate=False, progress=False)
    before = (ex / "manifest.json").read_bytes()

    def user_saves_notes(folder, *args, **kwargs):
        (ex / "NOTES.md").write_text("mine")

    monkeypatch.setattr(exporter, "validate_export", user_saves_notes)
    with pytest.raises(ArtifactError, match="NOTES.md"):
        exporter.export_model(runs / "walk", ex, force=True, progress=False)
    assert (ex / "NOTES.md").read_text() == "mine" and (ex / "manifest.json").read_bytes() == before

    ck = tmp_path / "ck"
    init_checkpoint("tiny", ck, seed=1)
    save = checkpoint.save_checkpoint

    def save_while_user_writes(model, folder):
        save(model, folder)
        (ck / "NOTES.md").write_text("mine")

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_while_user_writes)
    with pytest.raises(CheckpointError, match="NOTES.md"):
        init_checkpoint("tiny", ck, seed=2, force=True)
    assert (ck / "NOTES.md").read_text() == "mine" and (ck / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".ck.", ".ex."))) == []


@pytest.mark.parametrize("variants", [("plt",), ("plt", "vanilla")])
def test_train_force_interrupted_keeps_the_earlier_run(tmp_path, variants):
    """Reported: Ctrl-C in `train --force` over a finished model left step 17's weights in its place.
    The new run is swapped in only when finished; interrupted, the earlier run stays byte for byte."""
    from plt_deploy.training import TrainingInterrupted, train_variants

    out = tmp_path / "add"
    train_variants(out, variants=variants, steps=2, eval_examples=1)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = {"n": 0}

    def stop_after_some_steps():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(TrainingInterrupted, match=f"is not kept: {out} still holds the earlier run"):
        train_variants(out, variants=variants, steps=50, eval_examples=1, force=True, seed=1,
                       should_stop=stop_after_some_steps)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name != "add"] == []  # no temporary left
    results = train_variants(out, variants=variants, steps=2, eval_examples=1, force=True, seed=1)  # finished: replaced
    assert [r["checkpoint"] for r in results] == [str(out if len(variants) == 1 else out / v) for v in variants]
    assert (out / "train_results.json").is_file() and [p.name for p in tmp_path.iterdir() if p.name != "add"] == []


def test_train_interrupted_into_a_new_folder_keeps_its_last_step(tmp_path):
    from plt_deploy.training import TrainingInterrupted, train_variants

    out = tmp_path / "new"
    with pytest.raises(TrainingInterrupted, match=f"is in {out}"):
        train_variants(out, steps=50, eval_examples=1, should_stop=lambda: True)
    assert (out / "model.safetensors").is_file() and (out / "train_results.json").is_file()


def test_init_and_train_into_the_current_folder(tmp_path, monkeypatch, capsys):
    """Review: `init --out .` failed (its lock `./..lock` landed inside the folder and was then
    refused as a file init did not write). The lock and temporaries go beside the folder."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, _, err = run_cli(capsys, "init", "--preset", "tiny", "--out", ".")
    assert code == 0, err
    assert sorted(p.name for p in here.iterdir()) == ["config.json", "model.safetensors"]
    code, _, err = run_cli(capsys, "init", "--preset", "tiny", "--out", ".", "--force", "--seed", "3")
    assert code == 0, err
    assert sorted(p.name for p in here.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]


def test_an_empty_out_folder_is_filled_not_replaced(tmp_path, capsys):
    """Review: an existing empty --out (a mount point, a bind-mounted volume, a setgid folder) was
    renamed aside and replaced: its mode and inode were lost, a mount point failed (EBUSY)."""
    out = tmp_path / "vol"
    out.mkdir()
    out.chmod(0o2770)
    inode = out.stat().st_ino
    code, _, err = run_cli(capsys, "init", "--preset", "tiny", "--out", str(out))
    assert code == 0, err
    assert out.stat().st_ino == inode and out.stat().st_mode & 0o7777 == 0o2770
    assert (out / "model.safetensors").is_file() and not (out / ".plt-deploy-temporary").exists()


def test_a_sibling_outputs_live_temporary_is_not_taken_for_stale(tmp_path):
    """Review: claim_output('model') removed `.model.int8.x.tmp`, the live temporary of a run into
    model.int8 (another lock). A temporary records the output it was made for."""
    from plt_deploy.output_folder import claim_output, temporary_folder

    with claim_output(tmp_path / "model.int8"):
        live = temporary_folder(tmp_path / "model.int8")
        notes = []
        with claim_output(tmp_path / "model", log=notes.append):
            pass
        assert live.is_dir() and notes == []
    stale = temporary_folder(tmp_path / "model")
    with claim_output(tmp_path / "model"):
        assert not stale.exists()


def test_train_refused_at_the_swap_keeps_the_finished_run(tmp_path):
    """Review: when the check before the swap refused (the user saved a file into --out during the
    run), the finished run was deleted with its temporary folder. It is kept and named."""
    from plt_deploy.errors import CheckpointError
    from plt_deploy.training import train_variants

    out = tmp_path / "add"
    train_variants(out, steps=2, eval_examples=1)

    def user_saves_notes(name, step, loss):
        (out / "notes.txt").write_text("mine")

    with pytest.raises(CheckpointError, match="notes.txt.*the finished run is kept in .*add.finished-"):
        train_variants(out, steps=3, eval_examples=1, force=True, progress=user_saves_notes)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("add.finished-")]
    assert len(kept) == 1 and (kept[0] / "model.safetensors").is_file() and (kept[0] / "train_results.json").is_file()
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()
    assert not (kept[0] / ".plt-deploy-temporary").exists()


def test_a_run_killed_between_the_swaps_renames_gets_the_old_output_back(tmp_path):
    """swap_in moves the old folder aside, then the new one in: killed between the two, `out` is
    missing and the old one sits in a marked `.old.tmp`. The next run restores it, not deletes it."""
    from plt_deploy.output_folder import claim_output, temporary_folder

    out = tmp_path / "ex"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    aside = temporary_folder(out, suffix=".old.tmp")
    os.replace(out, aside / "old")  # what swap_in did before it was killed
    notes = []
    with claim_output(out, log=notes.append):
        assert (out / "manifest.json").read_text() == "old" and not aside.exists()
        assert notes and notes[0].startswith(f"restored {out}")
