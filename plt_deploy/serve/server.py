"""`plt-deploy serve` as a library call: load the engine, run the app under uvicorn.

SIGTERM (handled by uvicorn): the listener closes, open streams get up to `shutdown_timeout`
seconds to finish, then they are cancelled; the engine stops; exit code 0. SIGINT does the same,
then uvicorn re-raises it (KeyboardInterrupt: the CLI exits 130).
"""

from __future__ import annotations

import signal
import sys
import threading

from ..errors import PLTError

from .app import ServerSettings, api_key_from_env, build_app


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises a captured SIGTERM after its graceful shutdown (so the process dies of
        the signal); a server stopped by SIGTERM here has finished cleanly and exits 0."""

        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM and hasattr(self, "_captured_signals"):
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    return Server


def serve_forever(model: str, backend: str = "torch", slots: int = 4, max_context: int = 256,
                  max_queue: int = 64, max_prefill_tokens: int = 512, host: str = "127.0.0.1", port: int = 8000,
                  api_key: str | None = None, threads: int | None = None, plugin: str | None = None,
                  provider: str | None = None, model_name: str | None = None, max_body_bytes: int = 1 << 20,
                  max_tokens_limit: int | None = None, shutdown_timeout: float = 30.0,
                  log_level: str = "warning", ort_spinning: bool | None = False) -> None:
    """Serve until SIGTERM (then return) or SIGINT (then KeyboardInterrupt)."""
    import uvicorn

    from . import load_engine
    from .metrics import Metrics

    engine = load_engine(model, backend, slots=slots, max_context=max_context, max_queue=max_queue,
                         max_prefill_tokens=max_prefill_tokens, threads=threads, plugin=plugin, provider=provider,
                         model_name=model_name, ort_spinning=ort_spinning)
    engine.metrics = Metrics(engine.model_name)
    settings = ServerSettings(api_key=api_key_from_env(api_key), max_body_bytes=max_body_bytes,
                              max_tokens_limit=max_tokens_limit)
    app = build_app(engine, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=shutdown_timeout, lifespan="on")
    server = _server_class()(config)

    def announce():  # one line once the engine has warmed up (the app then answers /health with 200)
        try:
            if engine.wait_ready(None):
                print(f"ready on http://{host}:{port}", file=sys.stderr, flush=True)
        except PLTError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
    threading.Thread(target=announce, daemon=True).start()
    server.run()
    if not server.started:
        raise PLTError(f"could not serve on {host}:{port} (address in use or not allowed)")
