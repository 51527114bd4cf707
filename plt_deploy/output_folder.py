"""Writing an output folder safely (export, train, triton-repo): one writer at a time, stale
temporaries from killed runs cleaned, a full disk reported with the path, and `--force` limited
to replacing what the same command made.

Export and triton-repo build everything in a hidden `.NAME.*.tmp` folder beside NAME and rename
it at the end. `claim_output(out)` holds an exclusive lock (`.NAME.lock`, flock) for the whole
run, so a second run into the same folder is refused at once (naming the first one's pid) instead
of racing to the rename, and, holding it, removes temporaries that only a killed run can have left.

`check_replaceable(out, ...)` is the rule for an existing `out`: missing or empty is written into;
a folder the same command made (it holds that command's marker file: an export's manifest.json,
a repository's plt-deploy-repo.json) is replaced only with --force, and only if everything in it
is what that command wrote (`owned`: the manifest's file list, the repository's model folder);
anything else is refused in one line naming what it holds, never deleted. The command's source is
never inside what it would replace.

`check_checkpoint_folder(folder, force)` is the same rule for `init` and `train`, which write a
checkpoint's files into the folder itself (config.json, model.safetensors): --force overwrites a
plt-deploy checkpoint only; a Hugging Face model folder or a folder of other files is refused.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import ArtifactError, InputError


@contextmanager
def claim_output(out: Path, log=None, command: str = "export"):
    """Hold `out`'s lock for the with-block; `command` names the run in messages ("export", "train")."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd, lock_path, out, command)
        try:
            for stale in sorted(out.parent.glob(f".{out.name}.*.tmp")):
                shutil.rmtree(stale, ignore_errors=True)
                if log is not None:
                    log(f"removed {stale}, left by an interrupted {command}")
            yield out
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ArtifactError(f"{out.parent}: no space left on device while writing {out.name} ({command}; "
                                    "nothing was replaced); free space or choose another --out") from None
            raise
        finally:
            lock_path.unlink(missing_ok=True)  # removed while still locked; a waiting run re-checks the inode
    finally:
        os.close(fd)


def publish(tmp: Path, out: Path) -> Path:
    """Make the finished temporary folder `tmp` readable and rename it to `out` (replacing an old one)."""
    for f in tmp.iterdir():
        f.chmod(0o644)
    tmp.chmod(0o755)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _lock(fd: int, lock_path: Path, out: Path, command: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        raise ArtifactError(f"{out}: another {command} into this folder is running (pid {holder}); "
                            "wait for it or choose another --out") from None
    try:
        same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:  # the previous holder removed the file between our open and our lock
        raise ArtifactError(f"{out}: another {command} into this folder has just finished or started; retry")
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)


def check_replaceable(out: str | Path, command: str, marker: str, force: bool, sources=(), owned=None) -> None:
    """Refuse to write `out` unless it is missing, empty, or (with force) a folder `command` made,
    i.e. one holding `marker` and nothing but `owned(out)` (names of what the command wrote there;
    default: the marker alone); refuse any `sources` (the command's inputs) inside `out`."""
    out = Path(out)
    for source in sources:
        if source is not None and _inside(Path(source), out):
            raise InputError(f"{source} is inside --out {out}, which this command writes; choose another --out")
    if not out.exists():
        return
    if not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a folder; choose another --out")
    held = sorted(p.name for p in out.iterdir())
    if not held:
        return
    if (out / marker).is_file():
        if not force:
            raise ArtifactError(f"{out}: already exists; pass --force to replace it")
        theirs = [name for name in held if name not in (owned(out) if owned else {marker})]
        if theirs:
            raise ArtifactError(f"{out}: holds files `plt-deploy {command}` did not write ({_shown(theirs)}); "
                                "--force would delete them: move them out or choose another --out")
        return
    raise ArtifactError(f"{out}: not made by `plt-deploy {command}` (no {marker}; it holds {_shown(held)}); "
                        f"{'--force replaces only a folder that command made: ' if force else ''}"
                        "choose another --out")


def check_checkpoint_folder(folder: str | Path, force: bool, command: str = "init") -> None:
    """`init` / `train` write config.json and model.safetensors into `folder`: refuse unless it is
    missing, empty, or (with force) a plt-deploy checkpoint. Other files in a checkpoint folder
    are left alone; a Hugging Face model folder or a folder without a checkpoint is never written."""
    from . import hf
    from .checkpoint import CONFIG_FILE
    from .errors import CheckpointError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder}: exists and is not a folder; choose another --out")
    held = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
    if not held:
        return
    if hf.is_hf_folder(folder):
        raise CheckpointError(f"{folder}: is a Hugging Face model folder; `plt-deploy {command}` never writes into "
                              "one (--force included): choose another --out")
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"{folder}: holds {_shown(held)} but no plt-deploy checkpoint; `plt-deploy {command}` "
                              f"writes only into a new or empty folder{' (--force included)' if force else ''}: "
                              "choose another --out")
    if not force:
        raise CheckpointError(f"{folder}: already holds a checkpoint; pass --force to overwrite it")


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_writable(folder: str | Path, flag: str = "--out") -> None:
    """Create `folder` and write a file in it now, so an unwritable output fails before the work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ArtifactError(f"{flag} {folder}: cannot write there ({exc.strerror or exc}); "
                            f"choose another {flag}") from None
