"""Run the Triton server that the nvidia-pytriton wheel bundles (2.51, Python backend only) on loopback.

For tests and local trials; production uses an NGC Triton image. What it takes (all measured here):
- the wheel's tritonserver binary, with the wheel's private libraries (`nvidia_pytriton.libs`) and
  the interpreter's own lib folder on LD_LIBRARY_PATH: the Python-backend stub otherwise links the
  system libpython of the same version instead of this interpreter's;
- a backend folder holding libtriton_python.so and the stub built for this Python version;
- numpy < 2 in the stub's Python: the stub expects numpy 1's C layout, and with numpy 2
  it crashes deserializing TYPE_STRING inputs and rejects numeric outputs ("output tensor shape
  does not match size"). The stub's Python is the first `python3` on PATH (PYTHONPATH is not
  used), so when this interpreter has numpy >= 2 a small venv is made once (cached): numpy 1.26.4
  and ml_dtypes 0.5.4 first on its path, then this interpreter's site-packages and plt-deploy.

Every server is started in its own process group, bounded in time, and stopped by `stop()` (also
on context exit): SIGTERM, then SIGKILL of the group after `stop_timeout`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import BackendUnavailable

STUB_NUMPY = ("numpy==1.26.4", "ml_dtypes==0.5.4")  # what the bundled stub's numpy ABI needs


def bundled_server() -> dict[str, Path]:
    """Paths inside the installed nvidia-pytriton wheel (found without importing pytriton)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable("nvidia-pytriton is not installed (it bundles the Triton server): "
                                 "pip install --no-deps nvidia-pytriton")
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    paths = {"binary": root / "bin" / "tritonserver", "python_backend": root / "backends" / "python",
             "stub": root / "python_backend_stubs" / version / "triton_python_backend_stub",
             "caches": root / "caches", "libs": root.parent.parent / "nvidia_pytriton.libs"}
    for key, path in paths.items():
        if not path.exists():
            raise BackendUnavailable(f"{path}: not found in the nvidia-pytriton wheel ({key}; Python {version})")
    return paths


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_dir() -> Path:
    return Path(os.environ.get("PLT_TRITON_CACHE") or Path.home() / ".cache" / "plt-deploy" / "triton")


def _numpy_major() -> int:
    import numpy

    return int(numpy.__version__.split(".")[0])


def stub_python_bin() -> Path:
    """A bin folder whose `python3` the stub should run: this interpreter's, or a numpy-1 venv."""
    if _numpy_major() < 2:
        return Path(sys.executable).parent
    import plt_deploy

    tag = f"stub-py{sys.version_info[0]}{sys.version_info[1]}-" + "-".join(p.replace("==", "") for p in STUB_NUMPY)
    env = cache_dir() / tag
    if not (env / "bin" / "python3").exists():
        env.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=env.parent, prefix=f".{tag}.", suffix=".tmp"))
        try:
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], check=True,
                           capture_output=True, timeout=120)
            site = Path(subprocess.run([str(tmp / "bin" / "python3"), "-c",
                                        "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                       check=True, capture_output=True, text=True, timeout=60).stdout.strip())
            got = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                  "--no-deps", "--target", str(site), *STUB_NUMPY],
                                 capture_output=True, text=True, timeout=600)
            if got.returncode != 0:
                raise BackendUnavailable(f"could not install {' '.join(STUB_NUMPY)} for the Triton stub: "
                                         f"{(got.stderr.strip().splitlines() or ['pip failed'])[-1]}")
            try:
                os.replace(tmp, env)
            except OSError:  # another process made it first
                if not (env / "bin" / "python3").exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    site = next((env / "lib").glob("python3*/site-packages"))
    # Re-written every time: the interpreter's site-packages and this plt-deploy, after numpy 1.
    paths = [*sysconfig.get_paths()["purelib"].split(os.pathsep), sysconfig.get_paths()["platlib"],
             str(Path(plt_deploy.__file__).resolve().parents[1])]
    (site / "zz_plt_deploy.pth").write_text("\n".join(dict.fromkeys(paths)) + "\n")
    return env / "bin"


class LocalTriton:
    """tritonserver --model-repository REPO on free 127.0.0.1 ports (HTTP + metrics; no gRPC)."""

    def __init__(self, repo: str | Path, workdir: str | Path, startup_timeout: float = 180.0,
                 stop_timeout: float = 20.0, extra_args: tuple[str, ...] = ()):
        self.repo, self.workdir = Path(repo), Path(workdir)
        self.startup_timeout, self.stop_timeout, self.extra_args = startup_timeout, stop_timeout, extra_args
        self.proc: subprocess.Popen | None = None
        self.http_port = self.metrics_port = 0
        self.log_path = self.workdir / "tritonserver.log"
        self.shm_prefix = f"plt{os.getpid()}{secrets.token_hex(3)}_"  # this server's /dev/shm regions

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> "LocalTriton":
        paths = bundled_server()
        backends = self.workdir / "backends"
        py = backends / "python"
        py.mkdir(parents=True, exist_ok=True)
        for f in paths["python_backend"].iterdir():
            if f.is_file() and not (py / f.name).exists():
                (py / f.name).symlink_to(f)
        if not (py / "triton_python_backend_stub").exists():
            shutil.copy2(paths["stub"], py / "triton_python_backend_stub")
        env = os.environ.copy()
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (sysconfig.get_config_var("LIBDIR"), str(paths["libs"]), env.get("LD_LIBRARY_PATH")) if p)
        env["PATH"] = os.pathsep.join((str(stub_python_bin()), env.get("PATH", "")))
        self.http_port, self.metrics_port = free_port(), free_port()
        cmd = [str(paths["binary"]), "--model-repository", str(self.repo.resolve()),
               "--backend-directory", str(backends), "--cache-directory", str(paths["caches"]),
               "--http-address", "127.0.0.1", "--http-port", str(self.http_port), "--allow-grpc", "false",
               "--allow-metrics", "true", "--allow-gpu-metrics", "false", "--allow-cpu-metrics", "false",
               "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
               "--exit-on-error", "false", "--exit-timeout-secs", "5",
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
               *self.extra_args]
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        try:
            self._wait_live()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_live(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BackendUnavailable(f"tritonserver exited with code {self.proc.returncode}; "
                                         f"last log line: {self.log_tail(1)}")
            try:
                if self.get("/v2/health/live")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise BackendUnavailable(f"tritonserver not live after {self.startup_timeout:.0f} s; see {self.log_path}")

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        return self._request("GET", self.url + path, None, timeout)

    def post(self, path: str, body: dict | None = None, timeout: float = 120.0) -> tuple[int, str]:
        return self._request("POST", self.url + path, body, timeout)

    @staticmethod
    def _request(method: str, url: str, body: dict | None, timeout: float) -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def models(self) -> dict[str, dict]:
        """Repository index: model name -> {state, reason}."""
        status, text = self.post("/v2/repository/index", {})
        return {m["name"]: m for m in json.loads(text)} if status == 200 else {}

    def metrics(self) -> str:
        return self._request("GET", f"http://127.0.0.1:{self.metrics_port}/metrics", None, 10.0)[1]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self) -> int | None:
        """SIGTERM the server's process group, SIGKILL it after stop_timeout; returns the exit code."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # the Python stubs are in the same group; make sure none outlives the server
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        code = proc.wait(timeout=10)
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):  # left behind only after a kill
            region.unlink(missing_ok=True)
        return code

    def __enter__(self) -> "LocalTriton":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
