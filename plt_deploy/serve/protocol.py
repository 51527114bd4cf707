"""OpenAI request and response schemas (pydantic), and the request -> SamplingParams mapping.

Fields OpenAI defines that this server does not implement are accepted only at their neutral
value (n=1, echo=false, no logprobs, zero penalties, ...); anything else is a 400 naming the
field. Unknown fields are refused the same way (extra="forbid"). Types are strict, as in
OpenAI's API: `"max_tokens": "5"`, `"temperature": true` or `"stream": "yes"` are 400s naming the
field. Extensions (as in vLLM): `top_k`, `ignore_eos`, `stream_options.continuous_usage_stats`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..generate import SEED_MAX, SEED_MIN, SamplingParams

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_STOP_CHARS = 256  # per stop sequence: matching holds back at most this many characters
STRICT = ConfigDict(extra="forbid", strict=True)
ALSO_NEUTRAL = {"logit_bias": ({},), "logprobs": (False,), "best_of": (1,), "tools": ([],),  # values that mean
                "tool_choice": ("none",), "response_format": ({"type": "text"},)}  # "nothing special" too


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False
    continuous_usage_stats: bool = False  # extension (vLLM's name): usage in every chunk, and a chunk for
    # every token, also one whose text is held back (empty text): clients see each token's arrival


class _Sampling(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = STRICT
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int = Field(default=0, ge=0)  # extension: 0 = off
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)  # what the sampler's generator takes
    stop: str | list[str] | None = None  # at most MAX_STOP_SEQUENCES of 1..MAX_STOP_CHARS characters
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # extension: keep generating past EOS (load tests with fixed lengths)
    user: str | None = None  # accepted and ignored
    # Defined by OpenAI, supported only at the neutral value (checked by unsupported()).
    n: int = 1
    presence_penalty: float = Field(default=0.0, allow_inf_nan=False)
    frequency_penalty: float = Field(default=0.0, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None

    @field_validator("stop")
    @classmethod
    def _bounded_stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_SEQUENCES or any(not 0 < len(s) <= MAX_STOP_CHARS for s in stops):
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences of 1 to {MAX_STOP_CHARS} characters "
                             f"each (got {len(stops)}, of up to {max(map(len, stops), default=0)} characters)")
        return stop

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, options, info: ValidationInfo):
        if options is not None and not info.data.get("stream"):  # as OpenAI and vLLM
            raise ValueError("only allowed when stream is true")
        return options

    def unsupported(self) -> str | None:
        """The first field set to a value this server does not implement, else None."""
        neutral = {"n": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0, "logit_bias": None, "logprobs": None}
        neutral.update(self._neutral_extra())
        for name, value in neutral.items():
            got = getattr(self, name)
            if got != value and got not in ALSO_NEUTRAL.get(name, ()):
                return name
        return None

    def _neutral_extra(self) -> dict:
        return {}

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def sampling_params(self, default_max_tokens: int, eos_ids: tuple[int, ...]) -> SamplingParams:
        stops = () if self.ignore_eos else tuple(eos_ids)  # any eos id stops
        max_tokens = self.max_tokens if self.max_tokens is not None else default_max_tokens
        return SamplingParams(max_new_tokens=max_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, seed=self.seed, stop_tokens=stops, stop_strings=self.stop_list())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def _neutral_extra(self) -> dict:
        return {"echo": False, "best_of": None, "suffix": None}


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: Any = None

    def _neutral_extra(self) -> dict:
        return {"tools": None, "tool_choice": None, "response_format": None}

    def sampling_params(self, default_max_tokens: int, eos_ids: tuple[int, ...]) -> SamplingParams:
        if self.max_completion_tokens is not None and self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return super().sampling_params(default_max_tokens, eos_ids)


# -- responses ---------------------------------------------------------------------------------------
class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens whose state came from the prefix cache


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


def usage(prompt: int, completion: int, cached: int = 0) -> dict:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached)).model_dump()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def completion_body(rid: str, model: str, text: str, finish: str | None, prompt: int, completion: int,
                    fingerprint: str, cached: int = 0) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            "usage": usage(prompt, completion, cached)}


def completion_chunk(rid: str, model: str, text: str, finish: str | None, fingerprint: str) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}


def chat_body(rid: str, model: str, text: str, finish: str | None, prompt: int, completion: int,
              fingerprint: str, cached: int = 0) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                         "logprobs": None}],
            "usage": usage(prompt, completion, cached)}


def chat_chunk(rid: str, model: str, delta: dict, finish: str | None, fingerprint: str) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "system_fingerprint": fingerprint,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}


def usage_chunk(rid: str, model: str, obj: str, prompt: int, completion: int, fingerprint: str,
                cached: int = 0) -> dict:
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "system_fingerprint": fingerprint,
            "choices": [], "usage": usage(prompt, completion, cached)}


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
