"""The OpenAI-compatible HTTP app (FastAPI) over an Engine.

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
from dataclasses import dataclass
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from ..errors import InputError, PLTError
from . import protocol
from .engine import ContextLengthError, Engine, EngineStoppedError, QueueFullError

API_KEY_ENV = "PLT_API_KEY"
log = logging.getLogger("plt_deploy.serve")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # JSON's \ud800..\udfff: maybe a lone surrogate


@dataclass
class ServerSettings:
    api_key: str | None = None  # every /v1 route requires `Authorization: Bearer KEY` when set
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    body_timeout: float = 5.0  # seconds of silence while a body is being sent -> 408 (half-sent uploads)
    max_tokens_limit: int | None = None  # max_tokens above this get 400 (None: the engine's max_context)
    default_max_tokens: int = 16  # OpenAI's default for completions when max_tokens is absent
    replica_id: str = "0"  # shown as system_fingerprint and the X-Replica-Id header


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers


def _error_response(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None,
                    headers: dict | None = None):
    return JSONResponse(protocol.error_body(message, type_, param, code), status_code=status, headers=headers)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


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


def build_app(engine: Engine | Callable[[], Engine], settings: ServerSettings | None = None,
              manage_engine: bool = True):
    """The FastAPI app. `engine` is an Engine or a callable returning it (Ray replicas build theirs
    after the app exists). manage_engine: start it on startup and stop it on shutdown."""
    from contextlib import asynccontextmanager

    settings = settings or ServerSettings()
    get_engine = engine if callable(engine) and not isinstance(engine, Engine) else (lambda: engine)

    @asynccontextmanager
    async def lifespan(app):
        if manage_engine:
            get_engine().start()
        yield
        if manage_engine:
            import asyncio

            await asyncio.to_thread(get_engine().stop, True, 30.0)

    app = FastAPI(title="plt-deploy serve", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(APIError)
    async def on_api_error(request, exc: APIError):
        log.info("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message[:200])
        return _error_response(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(Exception)
    async def on_bug(request, exc: Exception):  # a bug: still one error body, and the server goes on
        return _error_response(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    @app.exception_handler(404)
    async def on_not_found(request, exc):
        return _error_response(404, f"no route {request.method} {request.url.path}", "not_found_error")

    @app.exception_handler(405)
    async def on_bad_method(request, exc):
        return _error_response(405, f"{request.method} is not allowed on {request.url.path}", "invalid_request_error")

    app.add_middleware(ReplicaHeader, replica_id=settings.replica_id)

    def check_auth(request: Request) -> None:
        if not settings.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send `Authorization: Bearer <key>`",
                           "authentication_error", None, "invalid_api_key")

    async def read_json(request: Request) -> dict:
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
        try:
            data = json.loads(body)
        except RecursionError:
            raise APIError(400, "the body is not valid JSON (nested too deeply)", code="invalid_json") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
            why = "a number has too many digits" if "digits" in str(exc) else exc
            raise APIError(400, f"the body is not valid JSON ({why})", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
        if _SURROGATE_ESCAPE.search(body):
            try:
                json.dumps(data, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(400, "the body holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its "
                               "pair): not valid Unicode text", code="invalid_json") from None
        return data

    def parse(model_cls, data: dict):
        try:
            req = model_cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            if err["type"] == "extra_forbidden":
                raise APIError(400, f"unsupported field {param!r}", param=param, code="unsupported_field") from None
            raise APIError(400, f"{param}: {err['msg']}", param=param, code="invalid_value") from None
        bad = req.unsupported()
        if bad:
            raise APIError(400, f"{bad}={getattr(req, bad)!r} is not supported by this server (only the default)",
                           param=bad, code="unsupported_field")
        return req

    def prepare(req, engine: Engine, n_prompt: int):
        """Validate the model name and max_tokens; SamplingParams for the request. Without
        max_tokens: 16 for completions (OpenAI's default), the rest of the context for chat."""
        limit = settings.max_tokens_limit or engine.max_context
        requested = getattr(req, "max_completion_tokens", None) if req.max_tokens is None else req.max_tokens
        if requested is not None and requested > limit:
            raise APIError(400, f"max_tokens {requested} exceeds the server's limit of {limit}", param="max_tokens",
                           code="max_tokens_too_large")
        default = settings.default_max_tokens if isinstance(req, protocol.CompletionRequest) else \
            max(1, engine.max_context - n_prompt)
        return req.sampling_params(min(default, limit), engine.tokenizer.eos_id)

    def submit(engine: Engine, ids: list[int], params, rid: str):
        if not engine.ready:
            raise APIError(503, "the model is not loaded yet; retry when /health returns 200", "unavailable")
        try:
            return engine.submit(ids, params, rid)
        except QueueFullError as exc:
            raise APIError(429, str(exc), "rate_limit_error", code="queue_full") from None
        except EngineStoppedError as exc:  # and close a kept-alive connection: the server is going away
            raise APIError(503, str(exc), "unavailable", headers={"Connection": "close"}) from None
        except ContextLengthError as exc:
            raise APIError(400, str(exc), param=exc.param, code="context_length_exceeded") from None
        except InputError as exc:
            raise APIError(400, str(exc)) from None

    def completion_ids(req: protocol.CompletionRequest, engine: Engine) -> list[int]:
        p = req.prompt
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
            p = p[0]  # a batch of one prompt
        if isinstance(p, str):
            try:
                return engine.tokenizer.encode(p)
            except PLTError as exc:
                raise APIError(400, str(exc), param="prompt") from None
        if p and all(isinstance(t, int) for t in p):
            vocab = engine.backend.config.vocab_size
            if any(not 0 <= t < vocab for t in p):
                raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
            return list(p)
        if not p:
            raise APIError(400, "the prompt is empty", param="prompt")
        raise APIError(400, "several prompts in one request are not supported: send one request each",
                       param="prompt", code="unsupported_field")

    def chat_ids(req: protocol.ChatCompletionRequest, engine: Engine) -> list[int]:
        try:
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        except ValueError as exc:
            raise APIError(400, str(exc), param="messages") from None
        try:
            return engine.tokenizer.encode(engine.tokenizer.apply_chat_template(messages))
        except PLTError as exc:
            raise APIError(400, str(exc), param="messages") from None

    async def run(request: Request, kind: str):
        check_auth(request)
        engine = get_engine()
        chat = kind == "chat"
        req = parse(protocol.ChatCompletionRequest if chat else protocol.CompletionRequest, await read_json(request))
        if req.model is not None and req.model != engine.model_name:
            raise APIError(404, f"model {req.model!r} does not exist; this server serves {engine.model_name!r}",
                           param="model", code="model_not_found")
        ids = chat_ids(req, engine) if chat else completion_ids(req, engine)
        params = prepare(req, engine, len(ids))
        rid = protocol.new_id("chatcmpl" if chat else "cmpl")
        handle = submit(engine, ids, params, rid)
        model, fp = engine.model_name, settings.replica_id
        if not req.stream:
            return await whole(request, handle, chat, rid, model, fp)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(handle, chat, rid, model, fp, req.include_usage, req.continuous_usage),
                                 media_type="text/event-stream", headers=headers)

    async def whole(request: Request, handle, chat: bool, rid: str, model: str, fp: str):
        parts, last = [], None
        try:
            async for ev in handle.aiter():
                parts.append(ev.text)
                last = ev
                if ev.finish_reason is None and await request.is_disconnected():
                    handle.cancel()
        finally:
            if not handle.done:
                handle.cancel()
        if last.finish_reason == "error":
            raise APIError(500, last.error or "generation failed", "server_error")
        if last.finish_reason == "cancelled":
            raise APIError(503, "the request was cancelled (server shutting down or client gone)", "unavailable")
        body = (protocol.chat_body if chat else protocol.completion_body)(
            rid, model, "".join(parts), last.finish_reason, last.prompt_tokens, last.completion_tokens, fp)
        return JSONResponse(body)

    async def stream(handle, chat: bool, rid: str, model: str, fp: str, include_usage: bool,
                     continuous_usage: bool = False):
        obj = "chat.completion.chunk" if chat else "text_completion"
        last = None
        try:
            if chat:
                first = protocol.chat_chunk(rid, model, {"role": "assistant", "content": ""}, None, fp)
                if continuous_usage:
                    first["usage"] = protocol.usage(len(handle.prompt_ids), 0)
                yield _sse(first)
            async for ev in handle.aiter():
                last = ev
                if ev.finish_reason in ("error", "cancelled"):
                    msg = ev.error or "the request was cancelled (server shutting down)"
                    yield _sse(protocol.error_body(msg, "server_error" if ev.error else "unavailable"))
                    break
                if not ev.text and ev.finish_reason is None and not continuous_usage:
                    continue  # text held back (an incomplete UTF-8 character, a possible stop string)
                if chat:
                    delta = {"content": ev.text} if ev.text else {}
                    chunk = protocol.chat_chunk(rid, model, delta, ev.finish_reason, fp)
                else:
                    chunk = protocol.completion_chunk(rid, model, ev.text, ev.finish_reason, fp)
                if continuous_usage:
                    chunk["usage"] = protocol.usage(ev.prompt_tokens, ev.completion_tokens)
                yield _sse(chunk)
            if include_usage and last is not None:
                yield _sse(protocol.usage_chunk(rid, model, obj, last.prompt_tokens, last.completion_tokens, fp))
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away (the send failed or the task was cancelled)
            if not handle.done:
                handle.cancel()

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await run(request, "completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await run(request, "chat")

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        e = get_engine()
        return {"object": "list", "data": [{"id": e.model_name, "object": "model", "created": 0,
                                            "owned_by": "plt-deploy", "max_model_len": e.max_context}]}

    @app.get("/health")
    async def health():
        e = get_engine()
        if e.load_error:
            return _error_response(503, e.load_error, "unavailable")
        if not e.ready or e.stopping:
            return _error_response(503, "shutting down" if e.stopping else "loading and warming up", "unavailable")
        return {"status": "ok", "replica": settings.replica_id}

    @app.get("/metrics")
    async def metrics():
        e = get_engine()
        if e.metrics is None:
            return Response("", media_type="text/plain")
        e.metrics.set_state(e.stats())
        body, ctype = e.metrics.render()
        return Response(body, media_type=ctype)

    return app


def api_key_from_env(given: str | None) -> str | None:
    return given or os.environ.get(API_KEY_ENV) or None
