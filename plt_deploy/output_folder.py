"""Writing an output folder safely (export, triton-repo, init, train): one writer at a time, stale
temporaries from killed runs cleaned, a full disk reported with the path, and `--force` limited
to replacing what the same command made.

Export, triton-repo and init build everything in a hidden `.NAME.*.tmp` folder beside NAME
(`temporary_folder`, which marks it as the tool's with a TEMPORARY_MARKER file) and rename it at
the end (`swap_in`: the marker goes, an old NAME is renamed aside into another marked temporary,
then deleted). `claim_output(out)` holds an exclusive lock (`.NAME.lock`, flock) for the whole
run, so a second run into the same folder is refused at once (naming the first one's pid) instead
of racing to the rename, and, holding it, removes the marked temporaries that only a killed run
can have left (a user's own `.NAME.x.tmp` folder has no marker and is never touched).

`check_replaceable(out, ...)` is the rule for an existing `out`: missing or empty is written into;
a folder the same command made (it holds that command's own marker file: an export's manifest.json,
a repository's plt-deploy-repo.json) is replaced only with --force, and only if everything in it,
subfolders included, is what that command wrote (`owned`: the manifest's file list and engine
files, the repository's files; `not_owned` lists the rest); anything else is refused in one line
naming it, never deleted. The command's source is
never inside what it would replace.

`check_checkpoint_folder(folder, force)` is the same rule for `init` and `train`, which write a
checkpoint's files into the folder itself (config.json, model.safetensors, train_results.json, or
variant subfolders): --force replaces a folder holding only what they wrote (`checkpoint_owned`:
a plt-deploy config, weights whose metadata names plt-deploy); a Hugging Face model folder, or a
folder holding anything else (hidden files included), is refused naming it. `init`, and `train`
over an earlier run, build the new checkpoint in a temporary folder and swap it in when it is
finished (`swap_in`), so an interrupted or failed run leaves the earlier one whole and no stale
file describes another model.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from .errors import ArtifactError, InputError

TEMPORARY_MARKER = ".plt-deploy-temporary"  # inside every temporary folder this tool makes, and only there


@contextmanager
def claim_output(out: Path, log=None, command: str = "export"):
    """Hold `out`'s lock for the with-block; `command` names the run in messages ("export", "train")."""
    out, where = Path(out), _absolute(out)  # `--out .`: the lock goes beside the folder, not into it
    lock_path = where.parent / f".{where.name}.lock"
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # read-only or full: name the user's folder, not our lock file (reported)
        raise ArtifactError(f"--out {out}: cannot write beside it in {where.parent} ({exc.strerror or exc}); "
                            "choose another --out") from None
    try:
        _lock(fd, lock_path, out, command)
        try:
            for stale in sorted(where.parent.glob(f".{where.name}.*.tmp")):
                if _marked_for(stale) != where.name:
                    continue  # a user's folder, or the live temporary of another output (NAME.int8)
                if (stale / "old").is_dir() and not os.path.lexists(where):  # killed between swap_in's renames
                    os.replace(stale / "old", where)  # the earlier output comes back, not deleted
                    if log is not None:
                        log(f"restored {out} from {stale}, left by an interrupted {command}")
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


def current_umask() -> int:
    """The process's umask (reading it means setting it: set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_folder(out: Path, suffix: str = ".tmp") -> Path:
    """A new hidden `.NAME.*.tmp` folder beside `out`, marked as this tool's (claim_output removes
    only marked ones; swap_in removes the marker), with the permissions mkdir would give it (mkdtemp
    makes 0700: a published folder would be unreadable to other users, e.g. a Triton server's)."""
    where = _absolute(out)
    tmp = Path(tempfile.mkdtemp(dir=where.parent, prefix=f".{where.name}.", suffix=suffix))
    tmp.chmod(0o777 & ~current_umask())
    (tmp / TEMPORARY_MARKER).write_text(json.dumps({"written_by": "plt-deploy", "for": where.name,
                                                    "pid": os.getpid()}) + "\n")
    return tmp


def _marked_for(folder: Path) -> str | None:
    """The output name a temporary folder of this tool was made for (its marker), else None."""
    try:
        data = json.loads((folder / TEMPORARY_MARKER).read_text())
        return data.get("for") if data.get("written_by") == "plt-deploy" else None
    except (OSError, ValueError, AttributeError):
        return None


def _absolute(out) -> Path:
    """`out` made absolute and normalised (".", "a/..": a real name and parent)."""
    return Path(os.path.abspath(out))


def publish(tmp: Path, out: Path, recheck) -> Path:
    """Make the finished temporary folder `tmp` readable and rename it to `out` (swap_in)."""
    for f in tmp.iterdir():
        f.chmod(0o644)
    tmp.chmod(0o755)
    return swap_in(tmp, out, recheck)


def swap_in(tmp: Path, out: Path, recheck) -> Path:
    """Rename the folder `tmp` to `out`. An old `out` is renamed aside first and deleted after the
    swap (as a `.NAME.*.old.tmp`; if a crash comes between the two renames, the one moment `out`
    is missing, the next claim_output renames the old folder back). An existing EMPTY `out` is kept and filled instead (`--out .`,
    a mount point, a folder whose owner, mode or bind mount matter). `recheck()` (the command's
    check_replaceable or check_checkpoint_folder) runs again just before an old `out` is moved: a
    file put into it while the command ran is refused, not deleted."""
    (tmp / TEMPORARY_MARKER).unlink(missing_ok=True)
    where = _absolute(out)
    if where.exists():
        recheck()
    if not where.exists():
        os.replace(tmp, where)
        return out
    if where.is_dir() and not any(where.iterdir()):
        for child in sorted(tmp.iterdir()):
            shutil.move(str(child), str(where / child.name))  # a copy across file systems (a mount point)
        tmp.rmdir()
        return out
    here = os.getcwd() == str(where)  # `--out .`: this process then follows the new folder
    old = temporary_folder(where, suffix=".old.tmp")
    os.replace(where, old / "old")
    try:
        os.replace(tmp, where)
    except BaseException:
        os.replace(old / "old", where)
        raise
    if here:
        os.chdir(where)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _lock(fd: int, lock_path: Path, out: Path, command: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        raise ArtifactError(f"{out}: another plt-deploy run into this folder is running (pid {holder}); "
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
    i.e. one whose `owned(out)` (what the command wrote there, read from its marker; default: the
    marker alone) includes `marker` and covers everything in it; refuse any `sources` (the
    command's inputs) inside `out`. `owned` gives paths relative to `out`: a name owns that file or
    folder whole, "a/b" owns a/b only (a user's a/c is then refused, not deleted)."""
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
    ours = set(owned(out)) if owned else {marker}
    if (out / marker).is_file() and marker in ours:
        if not force:
            raise ArtifactError(f"{out}: already exists; pass --force to replace it")
        theirs = not_owned(out, ours)
        if theirs:
            raise ArtifactError(f"{out}: holds files `plt-deploy {command}` did not write ({_shown(theirs)}); "
                                "--force would delete them: move them out or choose another --out")
        return
    why = f"{marker} is not its own" if (out / marker).exists() else f"no {marker}"
    raise ArtifactError(f"{out}: not made by `plt-deploy {command}` ({why}; it holds {_shown(held)}); "
                        f"{'--force replaces only a folder that command made: ' if force else ''}"
                        "choose another --out")


def not_owned(folder: Path, owned) -> list[str]:
    """Paths under `folder` (relative, sorted) that no entry of `owned` covers: an entry covers
    itself and everything below it; a folder above an entry is looked into, not owned."""
    owned = {PurePosixPath(o) for o in owned}
    above = {parent for o in owned for parent in o.parents}

    def walk(path: Path, rel: PurePosixPath):
        for child in sorted(path.iterdir()):
            r = rel / child.name
            if r in owned:
                continue
            if r in above and child.is_dir() and not child.is_symlink():
                yield from walk(child, r)
            else:
                yield r.as_posix()

    return list(walk(Path(folder), PurePosixPath()))


CHECKPOINT_FILES = ("config.json", "model.safetensors", "train_results.json")  # what init/train write
# into a checkpoint folder (checkpoint.CONFIG_FILE, WEIGHTS_FILE, RESULTS_FILE), plus the hidden
# `.NAME.*.tmp` of checkpoint.atomic_write_bytes that a killed run can leave
PRODUCER = "plt-deploy"  # checkpoint.save_checkpoint's safetensors metadata "producer"


def check_checkpoint_folder(folder: str | Path, force: bool, command: str = "init") -> None:
    """`init` / `train` write a checkpoint (config.json, model.safetensors, train_results.json) into
    `folder`, or, for several variants, one checkpoint subfolder each and train_results.json: refuse
    unless `folder` is missing, empty, or (with force) made by init/train and holding nothing else
    (checkpoint_owned). Hidden files count. A Hugging Face model folder, a config.json that is not
    a plt-deploy config, weights plt-deploy did not write, or any other file is refused in one line
    naming it, --force or not; nothing is written or deleted."""
    from . import hf
    from .errors import CheckpointError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder}: exists and is not a folder; choose another --out")
    held = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if not held:
        return
    if hf.is_hf_folder(folder):
        raise CheckpointError(f"{folder}: is a Hugging Face model folder (it holds {_shown(held)}); "
                              f"`plt-deploy {command}` never writes into one (--force included): choose another --out")
    owned = checkpoint_owned(folder)
    theirs = [name for name in held if name not in owned]
    if theirs or not owned:
        what = (f"holds {_shown(held)} but no plt-deploy checkpoint" if not owned else
                f"holds files `plt-deploy init` or `train` did not write ({_shown(theirs)})")
        raise CheckpointError(f"{folder}: {what}; `plt-deploy {command}` writes only into a new or empty folder"
                              f"{' or (with --force) one it wrote' if force else ''}: "
                              "move them out or choose another --out")
    if not force:
        raise CheckpointError(f"{folder}: already holds a checkpoint; pass --force to replace it")


def checkpoint_owned(folder: Path, nested: bool = True) -> set[str]:
    """Names in `folder` that init/train wrote: a checkpoint's files (config.json a plt-deploy config,
    model.safetensors with plt-deploy's producer metadata, train_results.json in train's schema, their
    leftover temporaries) and, when `nested`, variant subfolders holding only such files. Empty when
    the folder holds no checkpoint of ours (nothing else is then taken for ours)."""
    import re

    from .config import VARIANTS

    owned = set()
    if _own_config(folder / "config.json"):
        owned.add("config.json")
        if _own_weights(folder / "model.safetensors"):
            owned.add("model.safetensors")
    if nested:
        for name in VARIANTS:
            sub = folder / name
            if sub.is_dir() and not sub.is_symlink():
                inner = checkpoint_owned(sub, nested=False)
                if inner and inner == {p.name for p in sub.iterdir()}:
                    owned.add(name)
    if owned and _own_results(folder / "train_results.json"):
        owned.add("train_results.json")
    if owned:
        temporary = re.compile(r"\.(%s)\..+\.tmp" % "|".join(map(re.escape, CHECKPOINT_FILES)))
        owned |= {p.name for p in folder.iterdir() if p.is_file() and temporary.fullmatch(p.name)}
    return owned


def _own_config(path: Path) -> bool:
    import json

    from .config import PLTConfig

    try:
        PLTConfig.from_dict(json.loads(path.read_text()))
        return path.is_file() and not path.is_symlink()
    except Exception:  # unreadable, not JSON, not our schema: not ours
        return False


def _own_weights(path: Path) -> bool:
    """The safetensors header (8-byte length + JSON) names plt-deploy as producer; read without torch."""
    import json
    import struct

    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                return False
            meta = json.loads(f.read(n)).get("__metadata__") or {}
        return meta.get("producer") == PRODUCER
    except Exception:
        return False


def _own_results(path: Path) -> bool:
    import json

    try:
        data = json.loads(path.read_text())
        return path.is_file() and not path.is_symlink() and isinstance(data, dict) and isinstance(data.get("results"), list)
    except Exception:
        return False


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


def check_report_path(path: str | Path, flag: str, reads: dict[str, str | Path | None], is_earlier_report) -> None:
    """A report file (`check --report`, `bench --json`) may neither go inside a folder the command
    reads (it replaced a checkpoint's config.json or an export's manifest.json: reported) nor replace
    a file that is not an earlier report of the same command (`is_earlier_report(data)` on its JSON)."""
    try:
        target = Path(path).resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise InputError(f"{flag} {path}: cannot resolve the path ({exc})") from None
    for read_flag, folder in reads.items():
        if folder is not None and target.is_relative_to(Path(folder).resolve()):
            raise InputError(f"{flag} {path}: inside {read_flag} {folder}, which this command reads; "
                             f"write the report elsewhere")
    if not target.exists() and not target.is_symlink() or target.is_file() and target.stat().st_size == 0:
        return  # a new file, or an empty one (`--report "$(mktemp)"`)
    try:
        data = json.loads(target.read_text()) if target.is_file() else None
    except (OSError, ValueError):
        data = None
    if not (isinstance(data, dict) and is_earlier_report(data)):
        raise InputError(f"{flag} {path}: exists and is not an earlier report of this command; "
                         f"remove it or choose another path")
