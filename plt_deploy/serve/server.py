"""`plt-deploy serve` as a library call: load the engine, run the app under uvicorn.

Shutdown (SIGTERM or SIGINT): the engine admits nothing new at once (every new request gets 503,
also on a kept-alive connection) and uvicorn closes the listener; the open streams go on at full
speed and the server returns when they have finished. If some are still open after
`shutdown_timeout` seconds, the engine ends them ("cancelled": an error chunk, then `[DONE]`,
slots freed) and the server returns right after; uvicorn's own cancellation of whatever is still
running comes BACKSTOP_SECONDS later and only matters if the engine is stuck. `serve_forever`
returns the signal; uvicorn would re-raise it (SIGINT as KeyboardInterrupt): the CLI prints
`stopped` and exits 0 after SIGTERM, 130 after SIGINT. A second SIGINT stops at once.
"""

from __future__ import annotations

import os
import sys
import threading

from ..errors import PLTError


BACKSTOP_SECONDS = 5.0  # uvicorn cancels the tasks still running this long after our grace period


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's Server with the shutdown described in the module docstring."""

        def __init__(self, config, engine, grace: float):
            super().__init__(config)
            self.engine, self.grace = engine, grace
            self.stop_signal: int | None = None

        def handle_exit(self, sig, frame):
            if self.stop_signal is None:
                self.stop_signal = sig
                self.engine.close()  # from now on every new request gets 503 (RLock: safe in a handler)
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # returned by serve_forever, not re-raised

        async def shutdown(self, sockets=None):
            import asyncio

            self.engine.close()
            timer = asyncio.get_running_loop().call_later(self.grace, self.engine.close, True)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

    return Server


class QuietCancel:
    """Pure ASGI wrapper: a request task cancelled by uvicorn's backstop ends without the traceback
    uvicorn would log for it (the client sees its connection close)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        import asyncio

        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if scope["type"] != "http":
                raise


def passive_openmp() -> bool:
    """Make OpenMP threads (torch's MKL and ATen kernels, libgomp) sleep while they wait instead of
    spinning, unless OMP_WAIT_POLICY is set. Spinning workers fight the engine thread, the HTTP
    loop and every other process for the cores: with one core busy elsewhere a tiny model's decode
    step went from ~2 ms to ~270 ms (docs/serving.md). libgomp reads the variable when it loads, so
    this works only before torch is imported; returns whether it did."""
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return True


def serve_forever(model: str, backend: str = "torch", slots: int = 4, max_context: int = 256,
                  max_queue: int = 64, max_prefill_tokens: int = 512, host: str = "127.0.0.1", port: int = 8000,
                  api_key: str | None = None, threads: int | None = None, plugin: str | None = None,
                  provider: str | None = None, model_name: str | None = None, max_body_bytes: int = 1 << 20,
                  max_tokens_limit: int | None = None, shutdown_timeout: float = 30.0,
                  log_level: str = "warning", ort_spinning: bool | None = False) -> int | None:
    """Serve until SIGTERM or SIGINT; returns that signal's number once shut down (see above)."""
    import uvicorn

    passive_openmp()  # before anything imports torch (hence the imports here)

    from . import load_engine
    from .app import ServerSettings, api_key_from_env, build_app
    from .metrics import Metrics

    engine = load_engine(model, backend, slots=slots, max_context=max_context, max_queue=max_queue,
                         max_prefill_tokens=max_prefill_tokens, threads=threads, plugin=plugin, provider=provider,
                         model_name=model_name, ort_spinning=ort_spinning)
    engine.metrics = Metrics(engine.model_name)
    settings = ServerSettings(api_key=api_key_from_env(api_key), max_body_bytes=max_body_bytes,
                              max_tokens_limit=max_tokens_limit)
    app = build_app(engine, settings)
    config = uvicorn.Config(QuietCancel(app), host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=shutdown_timeout + BACKSTOP_SECONDS, lifespan="on")
    server = _server_class()(config, engine, shutdown_timeout)

    def announce():  # one line once the engine has warmed up (the app then answers /health with 200)
        try:
            if engine.wait_ready(None):
                print(f"ready on http://{host}:{port}", file=sys.stderr, flush=True)
        except PLTError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
    threading.Thread(target=announce, daemon=True).start()
    server.run()
    if not server.started and server.stop_signal is None:
        raise PLTError(f"could not serve on {host}:{port} (address in use or not allowed)")
    return server.stop_signal
