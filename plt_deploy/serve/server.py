"""`plt-deploy serve` as a library call: load the engine, run the app under uvicorn.

Shutdown (SIGTERM or SIGINT): the engine admits nothing new at once (every new request gets 503,
also on a kept-alive connection) and uvicorn closes the listener; the open streams go on at full
speed and the server returns when they have finished. If some are still open after
`shutdown_timeout` seconds, the engine ends them ("cancelled": an error chunk, then `[DONE]`,
slots freed) and the server returns right after; uvicorn's own cancellation of whatever is still
running comes BACKSTOP_SECONDS later and only matters if the engine is stuck. `serve_forever`
returns the signal; uvicorn would re-raise it (SIGINT as KeyboardInterrupt): the CLI prints
`stopped` and exits 0 after SIGTERM, 130 after SIGINT. A second signal ends the open streams at
once (an error chunk, then `[DONE]`) and the server exits right after; a third exits without
waiting for anything (an engine stuck in a step). Idle
kept-alive connections stay open until the engine has drained, so a request on one gets the 503.

Connection limits (uvicorn's h11 protocol, whatever else is installed: httptools has no header
limit): a request head (request line + headers) above `max_header_bytes` gets 431; a connection
that sends no complete head within `timeout_keep_alive` seconds (idle after connecting, between
requests, or sending its headers slowly) is closed, and so is a body that stalls that long (408,
in the app); over `max_connections` requests in the app at once (streams included), requests get
a JSON 503 with Retry-After at once (RequestLimit; /health and /metrics are still answered), and
uvicorn answers every request, /health too, with its plain 503 while more than twice that many
connections are open (idle kept-alive ones included).
"""

from __future__ import annotations

import json
import os
import sys
import threading

from ..errors import PLTError


BACKSTOP_SECONDS = 5.0  # uvicorn cancels the tasks still running this long after our grace period


def _protocol_class():
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        """uvicorn's h11 protocol with the connection limits described in the module docstring."""

        head_timer = None  # closes the connection unless a whole request head arrives in time

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_timer()

        def _arm_head_timer(self) -> None:
            # uvicorn's keep-alive timer starts only after a response and stops at the first byte
            # received: a connection that never finishes a request head would stay open forever
            if self.head_timer is not None:
                self.head_timer.cancel()
            self.head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_timeout)

        def _head_timeout(self) -> None:
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            limit = self.conn._max_incomplete_event_size  # h11 itself checks only a head still incomplete
            if self.conn.their_state is h11.IDLE:  # a request head is being received
                pending = self.conn.trailing_data[0] + data
                if len(pending) > limit and b"\r\n\r\n" not in pending[:limit]:
                    return self._refuse(431, b"Request Header Fields Too Large",
                                        f"the request head exceeds the limit of {limit} bytes", "header_too_large")
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE and self.head_timer is not None:
                self.head_timer.cancel()

        def send_400_response(self, msg: str) -> None:  # h11 could not parse the request
            self._refuse(400, b"Bad Request", f"{msg.rstrip('.')}: not a valid HTTP/1.1 request", "invalid_http")

        def _refuse(self, status: int, reason: bytes, message: str, code: str) -> None:
            from .protocol import error_body

            body = json.dumps(error_body(message, code=code)).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            for event in (h11.Response(status_code=status, headers=headers, reason=reason), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return Protocol


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's Server with the shutdown described in the module docstring."""

        def __init__(self, config, engine, grace: float):
            super().__init__(config)
            self.engine, self.grace = engine, grace
            self.stop_signal: int | None = None
            self.hurried = False  # a second signal ended the open streams

        def handle_exit(self, sig, frame):
            if self.stop_signal is None:
                self.stop_signal = sig
                self.engine.close()  # from now on every new request gets 503 (RLock: safe in a handler)
            elif not self.hurried:
                # The second signal: end every open stream now (an error chunk, then [DONE]) and exit
                # once they have sent it, without the grace period. uvicorn would force-exit here,
                # cutting streams off mid-body and logging the lifespan's CancelledError; only a
                # third signal (the engine stuck in a step) does that.
                self.hurried = True
                self.engine.close(True)
                self.config.timeout_graceful_shutdown = BACKSTOP_SECONDS
                self._captured_signals.clear()
                return
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # returned by serve_forever, not re-raised

        async def shutdown(self, sockets=None):
            import asyncio

            self.engine.close()
            timer = asyncio.get_running_loop().call_later(self.grace, self.engine.close, True)
            try:
                for listener in self.servers:  # no new connections; the kept-alive ones get 503s
                    listener.close()
                while not self.force_exit and self.engine.busy:
                    await asyncio.sleep(0.05)
                await super().shutdown(sockets)
            finally:
                timer.cancel()

    return Server


class RequestLimit:
    """Pure ASGI wrapper: at most `limit` requests inside the app at once (open streams included);
    one more gets a JSON 503 with Retry-After at once. /health and /metrics are still answered, so a
    load balancer's health check sees a live server during a flood of requests (not during a flood
    of more than twice as many connections: uvicorn's own limit, see the module docstring)."""

    ALWAYS = ("/health", "/metrics")

    def __init__(self, app, limit: int):
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.ALWAYS:
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            from .protocol import error_body

            body = json.dumps(error_body(f"the server is handling its limit of {self.limit} requests; retry "
                                         "shortly", "unavailable", code="too_many_connections")).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                    (b"content-length", str(len(body)).encode())]})
            return await send({"type": "http.response.body", "body": body})
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


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


def serve_forever(model: str, backend: str = "torch", slots: int = 4, max_context: int | None = None,
                  max_queue: int = 64, max_step_tokens: int | None = None, prefix_cache_mb: float = 256, host: str = "127.0.0.1", port: int = 8000,
                  api_key: str | None = None, threads: int | None = None, plugin: str | None = None,
                  provider: str | None = None, model_name: str | None = None, max_body_bytes: int = 1 << 20,
                  max_tokens_limit: int | None = None, shutdown_timeout: float = 30.0,
                  log_level: str = "warning", ort_spinning: bool | None = False, max_connections: int = 256,
                  max_header_bytes: int = 16384, timeout_keep_alive: float = 5.0) -> int | None:
    """Serve until SIGTERM or SIGINT; returns that signal's number once shut down (see above)."""
    import uvicorn

    passive_openmp()  # before anything imports torch (hence the imports here)

    from . import load_engine
    from .app import ServerSettings, api_key_from_env, build_app
    from .metrics import Metrics

    engine = load_engine(model, backend, slots=slots, max_context=max_context, max_queue=max_queue,
                         max_step_tokens=max_step_tokens, prefix_cache_mb=prefix_cache_mb, threads=threads, plugin=plugin, provider=provider,
                         model_name=model_name, ort_spinning=ort_spinning)
    engine.metrics = Metrics(engine.model_name)
    settings = ServerSettings(api_key=api_key_from_env(api_key), max_body_bytes=max_body_bytes,
                              max_tokens_limit=max_tokens_limit, body_timeout=timeout_keep_alive)
    app = build_app(engine, settings)
    config = uvicorn.Config(QuietCancel(RequestLimit(app, max_connections)), host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=shutdown_timeout + BACKSTOP_SECONDS, lifespan="on",
                            http=_protocol_class(), h11_max_incomplete_event_size=max_header_bytes,
                            timeout_keep_alive=timeout_keep_alive,
                            # uvicorn's own (plain-text) limit only backs RequestLimit up: it also
                            # counts idle kept-alive connections, and the new connection itself
                            limit_concurrency=2 * max_connections + 1)
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
