"""One handler per endpoint of the OpenAI-compatible server, over an engine client.

The handlers know nothing of HTTP transport (bodies, auth, routing: app.py does that): each takes
what its endpoint needs (a parsed JSON body, a disconnect probe) and returns a response or raises
APIError, so a test calls it without a server:

    handler = CompletionsHandler(engine, ServerSettings())
    response = await handler.create({"prompt": "hi", "max_tokens": 4})

`engine` is an Engine or a callable returning it (Ray replicas build theirs after the app exists).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Awaitable, Callable

from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from ..errors import PLTError
from . import protocol
from .api_errors import APIError, error_response, from_engine_error
from .engine import Engine, EngineRequest


@dataclass
class ServerSettings:
    api_key: str | None = None  # every /v1 route requires `Authorization: Bearer KEY` when set
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    body_timeout: float = 5.0  # seconds of silence while a body is being sent -> 408 (half-sent uploads)
    max_tokens_limit: int | None = None  # max_tokens above this get 400 (None: the engine's max_context)
    default_max_tokens: int = 16  # OpenAI's default for completions when max_tokens is absent
    replica_id: str = "0"  # shown as system_fingerprint and the X-Replica-Id header


EngineClient = Engine | Callable[[], Engine]
Disconnected = Callable[[], Awaitable[bool]]


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class Handler:
    """Base: the engine client and the settings."""

    def __init__(self, engine: EngineClient, settings: ServerSettings | None = None):
        self._get_engine = engine if callable(engine) and not isinstance(engine, Engine) else (lambda: engine)
        self.settings = settings or ServerSettings()

    @property
    def engine(self) -> Engine:
        return self._get_engine()


class _GenerationHandler(Handler):
    """What /v1/completions and /v1/chat/completions share: parse, validate, submit, answer whole or
    as server-sent events. Subclasses give the request schema and the prompt's token ids."""

    request_cls: type[protocol._Sampling]
    id_prefix: str
    chat: bool

    def prompt_ids(self, req, engine: Engine) -> list[int]:
        raise NotImplementedError

    def default_max_tokens(self, engine: Engine, n_prompt: int) -> int:
        raise NotImplementedError

    async def create(self, data: dict, is_disconnected: Disconnected | None = None) -> Response:
        """The response to one request body (a JSON object); `is_disconnected` lets a whole
        (non-streamed) answer cancel its request when the client goes away."""
        engine = self.engine
        # Validation, the chat template and tokenizing take ~0.1 s for a 1 MB body of many messages:
        # in a worker thread, not on the event loop that sends every other stream's chunks.
        req, ids, params = await asyncio.to_thread(self.prepare, data, engine)
        rid = protocol.new_id(self.id_prefix)
        handle = self.submit(engine, ids, params, rid)
        model, fp = engine.model_name, self.settings.replica_id
        if not req.stream:
            return await self.whole(handle, rid, model, fp, is_disconnected)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(self.stream(handle, rid, model, fp, req.include_usage, req.continuous_usage),
                                 media_type="text/event-stream", headers=headers)

    def prepare(self, data: dict, engine: Engine):
        """The request, its prompt ids and SamplingParams from a JSON body, or APIError."""
        self.precheck(data, engine)
        req = self.parse(data)
        if req.model is not None and req.model != engine.model_name:
            raise APIError(404, f"model {req.model!r} does not exist; this server serves {engine.model_name!r}",
                           param="model", code="model_not_found")
        ids = self.prompt_ids(req, engine)
        return req, ids, self.sampling_params(req, engine, len(ids))

    def precheck(self, data: dict, engine: Engine) -> None:
        """Refuse, before validating it, a body whose validation alone would take long."""

    def parse(self, data: dict):
        try:
            req = self.request_cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            if err["type"] == "extra_forbidden":
                raise APIError(400, f"unsupported field {param!r}", param=param, code="unsupported_field") from None
            msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for our validators' messages
            raise APIError(400, f"{param}: {msg}", param=param, code="invalid_value") from None
        bad = req.unsupported()
        if bad:
            raise APIError(400, f"{bad}={getattr(req, bad)!r} is not supported by this server (only the default)",
                           param=bad, code="unsupported_field")
        return req

    def sampling_params(self, req, engine: Engine, n_prompt: int):
        """Validate max_tokens; the request's SamplingParams."""
        limit = self.settings.max_tokens_limit or engine.max_context
        requested = getattr(req, "max_completion_tokens", None) if req.max_tokens is None else req.max_tokens
        if requested is not None and requested > limit:
            raise APIError(400, f"max_tokens {requested} exceeds the server's limit of {limit}", param="max_tokens",
                           code="max_tokens_too_large")
        return req.sampling_params(min(self.default_max_tokens(engine, n_prompt), limit), engine.tokenizer.eos_ids)

    @staticmethod
    def submit(engine: Engine, ids: list[int], params, rid: str) -> EngineRequest:
        if not engine.ready:
            raise APIError(503, "the model is not loaded yet; retry when /health returns 200", "unavailable")
        try:
            return engine.submit(ids, params, rid)
        except Exception as exc:
            api = from_engine_error(exc)
            if api is None:
                raise
            raise api from None

    async def whole(self, handle: EngineRequest, rid: str, model: str, fp: str,
                    is_disconnected: Disconnected | None = None) -> JSONResponse:
        parts, last = [], None
        try:
            async for ev in handle.aiter():
                parts.append(ev.text)
                last = ev
                if ev.finish_reason is None and is_disconnected is not None and await is_disconnected():
                    handle.cancel()
        finally:
            if not handle.done:
                handle.cancel()
        if last.finish_reason == "error":
            raise APIError(500, last.error or "generation failed", "server_error")
        if last.finish_reason == "cancelled":
            raise APIError(503, "the request was cancelled (server shutting down or client gone)", "unavailable")
        body = (protocol.chat_body if self.chat else protocol.completion_body)(
            rid, model, "".join(parts), last.finish_reason, last.prompt_tokens, last.completion_tokens, fp,
            last.cached_tokens)
        return JSONResponse(body)

    async def stream(self, handle: EngineRequest, rid: str, model: str, fp: str, include_usage: bool,
                     continuous_usage: bool = False):
        """Server-sent events: chunks, an error chunk if generation fails, the usage chunk, [DONE]."""
        chat = self.chat
        obj = "chat.completion.chunk" if chat else "text_completion"
        last = None
        try:
            if chat:
                first = protocol.chat_chunk(rid, model, {"role": "assistant", "content": ""}, None, fp)
                if continuous_usage:
                    first["usage"] = protocol.usage(len(handle.prompt_ids), 0)
                yield sse(first)
            async for ev in handle.aiter():
                last = ev
                if ev.finish_reason in ("error", "cancelled"):
                    msg = ev.error or "the request was cancelled (server shutting down)"
                    yield sse(protocol.error_body(msg, "server_error" if ev.error else "unavailable"))
                    break
                if not ev.text and ev.finish_reason is None and not continuous_usage:
                    continue  # text held back (an incomplete UTF-8 character, a possible stop string)
                if chat:
                    delta = {"content": ev.text} if ev.text else {}
                    chunk = protocol.chat_chunk(rid, model, delta, ev.finish_reason, fp)
                else:
                    chunk = protocol.completion_chunk(rid, model, ev.text, ev.finish_reason, fp)
                if continuous_usage:
                    chunk["usage"] = protocol.usage(ev.prompt_tokens, ev.completion_tokens, ev.cached_tokens)
                yield sse(chunk)
            if include_usage and last is not None:
                yield sse(protocol.usage_chunk(rid, model, obj, last.prompt_tokens, last.completion_tokens, fp,
                                               last.cached_tokens))
            yield "data: [DONE]\n\n"
        finally:  # also when the client went away (the send failed or the task was cancelled)
            if not handle.done:
                handle.cancel()


class CompletionsHandler(_GenerationHandler):
    """POST /v1/completions."""

    request_cls = protocol.CompletionRequest
    id_prefix = "cmpl"
    chat = False

    def default_max_tokens(self, engine: Engine, n_prompt: int) -> int:
        return self.settings.default_max_tokens  # OpenAI's default for completions

    def prompt_ids(self, req: protocol.CompletionRequest, engine: Engine) -> list[int]:
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


class ChatHandler(_GenerationHandler):
    """POST /v1/chat/completions."""

    request_cls = protocol.ChatCompletionRequest
    id_prefix = "chatcmpl"
    chat = True

    def default_max_tokens(self, engine: Engine, n_prompt: int) -> int:
        return max(1, engine.max_context - n_prompt)  # the rest of the context

    def precheck(self, data: dict, engine: Engine) -> None:
        # Validating a message takes ~8 us with the GIL held (pydantic), so a 1 MB body of 30,000
        # empty messages held every stream's chunks for 0.25 s. A message is at least one token of
        # the prompt, so more messages than the context has tokens cannot fit anyway.
        messages = data.get("messages")
        if isinstance(messages, list) and len(messages) > engine.max_context:
            raise APIError(400, f"{len(messages)} messages cannot fit this server's context of "
                           f"{engine.max_context} tokens", param="messages", code="context_length_exceeded")

    def prompt_ids(self, req: protocol.ChatCompletionRequest, engine: Engine) -> list[int]:
        try:
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        except ValueError as exc:
            raise APIError(400, str(exc), param="messages") from None
        try:
            return engine.tokenizer.encode_chat(messages)
        except PLTError as exc:
            raise APIError(400, str(exc), param="messages") from None


class ModelsHandler(Handler):
    """GET /v1/models."""

    def list(self) -> dict:
        e = self.engine
        return {"object": "list", "data": [{"id": e.model_name, "object": "model", "created": 0,
                                            "owned_by": "plt-deploy", "max_model_len": e.max_context}]}


class HealthHandler(Handler):
    """GET /health: 503 until warmed up, while shutting down, and after a failed load."""

    def check(self) -> Response:
        e = self.engine
        if e.load_error:
            return error_response(503, e.load_error, "unavailable")
        if not e.ready or e.stopping:
            return error_response(503, "shutting down" if e.stopping else "loading and warming up", "unavailable")
        return JSONResponse({"status": "ok", "replica": self.settings.replica_id})


class MetricsHandler(Handler):
    """GET /metrics: Prometheus text (empty when the engine has no metrics)."""

    def render(self) -> Response:
        e = self.engine
        if e.metrics is None:
            return Response("", media_type="text/plain")
        e.metrics.set_state(e.stats())
        body, ctype = e.metrics.render()
        return Response(body, media_type=ctype)
