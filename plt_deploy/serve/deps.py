"""What `plt-deploy serve` needs from the machine, checked before the model loads."""

from __future__ import annotations

import socket
from importlib.util import find_spec

from ..errors import BackendUnavailable, PLTError

SERVE_MODULES = ("fastapi", "uvicorn", "prometheus_client", "pydantic")


def require_serve_packages(ray: bool = False) -> None:
    """One line naming the missing packages and the extra that installs them."""
    missing = [m for m in (*SERVE_MODULES, *(("ray",) if ray else ())) if find_spec(m) is None]
    if missing:
        raise BackendUnavailable(f"plt-deploy serve needs {', '.join(missing)}: pip install -e '.[serve]' "
                                 "(or pip install 'plt-deploy[serve]')")


def claim_port(host: str, port: int) -> int:
    """The port the server will listen on: refuses a busy or forbidden one, resolves 0 to a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise PLTError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port "
                           "(or --host)") from None
        return s.getsockname()[1]
