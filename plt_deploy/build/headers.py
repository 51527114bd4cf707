"""Where the plugin build finds TensorRT's headers, offline (scripts/gpu-check.sh's plugin stage).

In order: TENSORRT_INCLUDE_DIR, TENSORRT_ROOT/include, the system folders of Debian/NVIDIA packages,
an `include/` folder inside an installed tensorrt* wheel (where a wheel ships one), and finally a local
git clone of NVIDIA/TensorRT (TENSORRT_OSS_DIR): its newest `release/X.Y` branch not newer than the
installed TensorRT, whose include/ is extracted with `git archive` (no network). Nothing found: None
with the reason, which gpu-check prints as a SKIP line.

    python -m plt_deploy.build.headers OUT_DIR   # prints the include folder, or exits 3 with the reason
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HEADER = "NvInferRuntime.h"
SYSTEM_DIRS = ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/include",
               "/usr/local/tensorrt/include")


def wheel_include_dirs() -> list[Path]:
    """include folders holding NvInferRuntime.h inside installed distributions named tensorrt*."""
    from importlib import metadata

    found = []
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if not name.startswith("tensorrt"):
            continue
        for f in dist.files or []:
            if f.name == HEADER:
                folder = Path(dist.locate_file(f)).parent
                if folder.is_dir() and folder not in found:
                    found.append(folder)
    return found


def header_branch(branches: list[str], trt_version: str) -> str | None:
    """The newest `release/X.Y` branch not newer than TensorRT `trt_version` (same major), or None."""
    have = tuple(int(x) for x in re.findall(r"\d+", trt_version)[:2])
    best = None
    for b in branches:
        m = re.fullmatch(r"(?:.*/)?release/(\d+)\.(\d+)", b.strip())
        if not m:
            continue
        v = (int(m.group(1)), int(m.group(2)))
        if v[0] == have[0] and v <= have and (best is None or v > best[0]):
            best = (v, f"release/{v[0]}.{v[1]}")
    return best[1] if best else None


def _from_clone(clone: Path, trt_version: str, out: Path) -> tuple[Path | None, str]:
    refs = subprocess.run(["git", "-C", str(clone), "for-each-ref", "--format=%(refname:short)", "refs/heads",
                           "refs/remotes"], capture_output=True, text=True)
    if refs.returncode != 0:
        return None, f"TENSORRT_OSS_DIR={clone} is not a git clone of NVIDIA/TensorRT"
    names = refs.stdout.split()
    branch = header_branch(names, trt_version)
    if branch is None:
        return None, f"TENSORRT_OSS_DIR={clone} has no release/X.Y branch for TensorRT {trt_version}"
    ref = next(n for n in names if n == branch or n.endswith("/" + branch))
    target = out / branch.replace("/", "_")
    if not (target / "include" / HEADER).is_file():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(clone), "archive", ref, "include"], capture_output=True)
        untar = subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, capture_output=True)
        if archive.returncode != 0 or untar.returncode != 0 or not (target / "include" / HEADER).is_file():
            return None, f"cannot extract include/ of {ref} from {clone}"
    return (target / "include").resolve(), f"{ref} of {clone} (TensorRT {trt_version})"


def find_headers(trt_version: str, out: Path) -> tuple[Path | None, str]:
    """(include folder, where it came from) or (None, why none was found)."""
    env = os.environ.get("TENSORRT_INCLUDE_DIR") or (
        str(Path(os.environ["TENSORRT_ROOT"]) / "include") if os.environ.get("TENSORRT_ROOT") else "")
    if env:
        p = Path(env)
        return (p, "TENSORRT_INCLUDE_DIR/TENSORRT_ROOT") if (p / HEADER).is_file() else (
            None, f"{p}/{HEADER} not found (TENSORRT_INCLUDE_DIR / TENSORRT_ROOT)")
    for d in SYSTEM_DIRS:
        if (Path(d) / HEADER).is_file():
            return Path(d), "system package"
    wheels = wheel_include_dirs()
    if wheels:
        return wheels[0], "the tensorrt wheel's include folder"
    clone = os.environ.get("TENSORRT_OSS_DIR")
    if clone:
        return _from_clone(Path(clone), trt_version, out)
    return None, ("no TensorRT headers: not in TENSORRT_INCLUDE_DIR / TENSORRT_ROOT, the system folders or the "
                  "tensorrt wheels; set one, or TENSORRT_OSS_DIR to a git clone of NVIDIA/TensorRT")


def main(argv: list[str]) -> int:
    import tensorrt

    include, where = find_headers(tensorrt.__version__, Path(argv[0] if argv else "runs/gpu-check/headers"))
    if include is None:
        print(where)
        return 3
    print(include)
    print(f"TensorRT headers: {include} ({where})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
