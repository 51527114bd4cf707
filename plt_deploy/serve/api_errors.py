"""HTTP errors of the OpenAI-compatible server, and the one table mapping engine errors to them.

Every error a client sees is `{"error": {message, type, param, code}}` with a status code. The
handlers raise APIError; an engine's typed errors become APIErrors through `from_engine_error`,
the only place that picks a status code for an exception type.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from ..errors import InputError
from . import protocol
from .engine import ContextLengthError, EngineStoppedError, QueueFullError


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code, self.headers)


# exception type -> (status, error type, code, headers); the first matching row wins (subclasses first)
ENGINE_ERRORS: tuple[tuple[type[Exception], int, str, str | None, dict | None], ...] = (
    (QueueFullError, 429, "rate_limit_error", "queue_full", None),
    # and close a kept-alive connection: the server is going away
    (EngineStoppedError, 503, "unavailable", None, {"Connection": "close"}),
    (ContextLengthError, 400, "invalid_request_error", "context_length_exceeded", None),
    (InputError, 400, "invalid_request_error", None, None),
)


def from_engine_error(exc: Exception) -> APIError | None:
    """The APIError for an engine error (param from the exception when it names one), or None
    for an exception the table does not know (a bug: the caller lets it become a 500)."""
    for kind, status, type_, code, headers in ENGINE_ERRORS:
        if isinstance(exc, kind):
            return APIError(status, str(exc), type_, getattr(exc, "param", None), code,
                            dict(headers) if headers else None)
    return None


def error_response(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(protocol.error_body(message, type_, param, code), status_code=status, headers=headers)
