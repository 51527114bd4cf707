"""Writing an export folder safely: one writer at a time, stale temporaries from killed runs
cleaned, a full disk reported with the path.

The exporter builds everything in a hidden `.NAME.*.tmp` folder beside NAME and renames it at
the end. `claim_output(out)` holds an exclusive lock (`.NAME.lock`, flock) for the whole run, so
a second export into the same folder is refused at once instead of racing to the rename, and,
holding it, removes temporaries that only a killed run can have left.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from ..errors import ArtifactError


@contextmanager
def claim_output(out: Path, log=None):
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd, lock_path, out)
        try:
            for stale in sorted(out.parent.glob(f".{out.name}.*.tmp")):
                shutil.rmtree(stale, ignore_errors=True)
                if log is not None:
                    log(f"removed {stale}, left by an interrupted export")
            yield out
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ArtifactError(f"{out.parent}: no space left on device while writing the export "
                                    f"{out.name} (nothing was replaced); free space or choose another --out") from None
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


def _lock(fd: int, lock_path: Path, out: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        raise ArtifactError(f"{out}: another export into this folder is running (pid {holder}); "
                            "wait for it or choose another --out") from None
    try:
        same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:  # the previous holder removed the file between our open and our lock
        raise ArtifactError(f"{out}: another export into this folder has just finished or started; retry")
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
