"""The OpenAI-compatible HTTP app (FastAPI) over an Engine: routing, auth and request bodies; each
endpoint's work is its handler's (handlers.py), status codes for engine errors are api_errors.py's.

Routes: POST /v1/completions, POST /v1/chat/completions (both with `stream: true` as server-sent
events ending in `data: [DONE]`), GET /v1/models, GET /health (503 until warmed up and while
shutting down), GET /metrics (Prometheus text). Every error is `{"error": {message, type, param,
code}}`; an error after a stream began is one error chunk, then `[DONE]`. A stream whose client
goes away cancels its request, which frees its slot at the engine's next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re

from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect

from .api_errors import APIError, error_response
from .handlers import (ChatHandler, CompletionsHandler, EngineClient, HealthHandler, MetricsHandler, ModelsHandler,
                       ServerSettings)

API_KEY_ENV = "PLT_API_KEY"
log = logging.getLogger("plt_deploy.serve")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # JSON's \ud800..\udfff: maybe a lone surrogate


class ReplicaHeader:
    """Pure ASGI middleware adding X-Replica-Id to every response (Starlette's BaseHTTPMiddleware
    would pass each streamed chunk through an extra task and memory stream)."""

    def __init__(self, app, replica_id: str):
        self.app, self.header = app, (b"x-replica-id", replica_id.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)
        await self.app(scope, receive, send_with_header)


def check_auth(request: Request, settings: ServerSettings) -> None:
    if not settings.api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), settings.api_key.encode()):
        raise APIError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                       "authentication_error", None, "invalid_api_key")


async def read_json(request: Request, settings: ServerSettings) -> dict:
    """The request body as a JSON object: 413 over max_body_bytes, 408 after body_timeout seconds of
    silence, 400 for anything that is not one JSON object of valid Unicode text."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > settings.max_body_bytes:
        raise APIError(413, f"request body of {size} bytes exceeds the limit of {settings.max_body_bytes}",
                       code="body_too_large")
    body = bytearray()
    try:
        async with asyncio.timeout(settings.body_timeout) as silence:
            async for chunk in request.stream():
                silence.reschedule(asyncio.get_running_loop().time() + settings.body_timeout)
                body += chunk
                if len(body) > settings.max_body_bytes:
                    raise APIError(413, f"request body exceeds the limit of {settings.max_body_bytes} bytes",
                                   code="body_too_large")
    except TimeoutError:
        raise APIError(408, f"the client sent no part of the body for {settings.body_timeout:g} s",
                       code="request_timeout") from None
    except ClientDisconnect:  # a client going away is normal: no traceback, nobody to answer
        log.debug("%s %s: the client closed the connection before sending the whole body",
                  request.method, request.url.path)
        raise APIError(400, "the client closed the connection before sending the whole body") from None
    # a large body takes milliseconds to decode: in a worker thread, off the loop serving every stream
    return await asyncio.to_thread(parse_json, body) if len(body) > 65536 else parse_json(body)


def parse_json(body: bytes) -> dict:
    """One JSON object of valid Unicode text, else APIError 400."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise APIError(400, "the body is not valid JSON (nested too deeply)", code="invalid_json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the body is not valid JSON ({exc})", code="invalid_json") from None
    except ValueError:  # int() refusing an integer literal of more than sys.get_int_max_str_digits() digits
        raise APIError(400, "the body is not valid JSON (a number has too many digits)", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the body must be a JSON object", code="invalid_json")
    if _SURROGATE_ESCAPE.search(body):
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, "the body holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its "
                           "pair): not valid Unicode text", code="invalid_json") from None
    return data


def build_app(engine: EngineClient, settings: ServerSettings | None = None, manage_engine: bool = True):
    """The FastAPI app: routes, auth, body reading and error bodies around one handler per endpoint
    (handlers.py). `engine` is an Engine or a callable returning it (Ray replicas build theirs
    after the app exists). manage_engine: start it on startup and stop it on shutdown."""
    from contextlib import asynccontextmanager

    settings = settings or ServerSettings()
    completions_h, chat_h = CompletionsHandler(engine, settings), ChatHandler(engine, settings)
    models_h, health_h, metrics_h = (ModelsHandler(engine, settings), HealthHandler(engine, settings),
                                     MetricsHandler(engine, settings))

    @asynccontextmanager
    async def lifespan(app):
        if manage_engine:
            health_h.engine.start()
        yield
        if manage_engine:
            await asyncio.to_thread(health_h.engine.stop, True, 30.0)

    app = FastAPI(title="plt-deploy serve", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(APIError)
    async def on_api_error(request, exc: APIError):
        log.info("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message[:200])
        return exc.response()

    @app.exception_handler(Exception)
    async def on_bug(request, exc: Exception):  # a bug: still one error body, and the server goes on
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    @app.exception_handler(404)
    async def on_not_found(request, exc):
        return error_response(404, f"no route {request.method} {request.url.path}", "not_found_error")

    @app.exception_handler(405)
    async def on_bad_method(request, exc):
        return error_response(405, f"{request.method} is not allowed on {request.url.path}", "invalid_request_error")

    app.add_middleware(ReplicaHeader, replica_id=settings.replica_id)

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_auth(request, settings)
        return await completions_h.create(await read_json(request, settings), request.is_disconnected)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_auth(request, settings)
        return await chat_h.create(await read_json(request, settings), request.is_disconnected)

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request, settings)
        return models_h.list()

    @app.get("/health")
    async def health():
        return health_h.check()

    @app.get("/metrics")
    async def metrics():
        return metrics_h.render()

    return app


def api_key_from_env(given: str | None) -> str | None:
    return given or os.environ.get(API_KEY_ENV) or None


__all__ = ["APIError", "ServerSettings", "api_key_from_env", "build_app", "check_auth", "read_json"]
