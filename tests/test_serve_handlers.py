"""Each endpoint's handler called alone, without a server or HTTP (plt_deploy/serve/handlers.py),
and the one table mapping engine errors to status codes (api_errors.py)."""

import asyncio
import json

import pytest

from plt_deploy.backends.torch_backend import load as load_torch
from plt_deploy.checkpoint import init_checkpoint
from plt_deploy.errors import InputError, ModelError
from plt_deploy.serve.api_errors import APIError, from_engine_error
from plt_deploy.serve.chat import load_serve_tokenizer
from plt_deploy.serve.engine import ContextLengthError, Engine, EngineStoppedError, QueueFullError
from plt_deploy.serve.handlers import (ChatHandler, CompletionsHandler, HealthHandler, MetricsHandler, ModelsHandler,
                                       ServerSettings)
from plt_deploy.serve.metrics import Metrics


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    ckpt = init_checkpoint("tiny", tmp_path_factory.mktemp("handlers") / "tiny", mode="plt", seed=5)
    be = load_torch(ckpt)
    e = Engine(be, load_serve_tokenizer(ckpt, be.config.vocab_size), slots=2, max_context=64, model_name="tiny",
               metrics=Metrics("tiny"))
    yield e
    e.stop(True, 10.0)


def run(coro):
    return asyncio.run(coro)


def body(response) -> dict:
    return json.loads(response.body)


def test_health_is_503_until_started_then_200(engine):
    h = HealthHandler(engine, ServerSettings(replica_id="r7"))
    if not engine.ready:
        r = h.check()
        assert r.status_code == 503 and body(r)["error"]["type"] == "unavailable"
    engine.start().wait_ready(120)
    r = h.check()
    assert r.status_code == 200 and body(r) == {"status": "ok", "replica": "r7"}


def test_models_and_metrics_handlers(engine):
    listed = ModelsHandler(lambda: engine).list()  # an engine client may be a callable (Ray replicas)
    assert [m["id"] for m in listed["data"]] == ["tiny"] and listed["data"][0]["max_model_len"] == 64
    r = MetricsHandler(engine).render()
    assert r.status_code == 200 and b"plt:" in r.body


def test_completion_handler_whole_answer(engine):
    engine.start().wait_ready(120)
    r = run(CompletionsHandler(engine).create({"prompt": [1, 2, 3], "max_tokens": 5, "ignore_eos": True}))
    b = body(r)
    assert b["object"] == "text_completion" and b["choices"][0]["finish_reason"] == "length"
    assert b["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8,
                          "prompt_tokens_details": {"cached_tokens": 0}}


def test_chat_handler_streams_sse_ending_in_done(engine):
    engine.start().wait_ready(120)
    r = run(ChatHandler(engine).create({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                                        "ignore_eos": True, "stream": True,
                                        "stream_options": {"include_usage": True}}))

    async def collect():
        return [part async for part in r.body_iterator]
    events = run(collect())
    assert events[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["usage"]["completion_tokens"] == 3 and chunks[-1]["choices"] == []
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"



@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_inside_a_character_answers_without_a_replacement_char(engine, stream):
    """The tiny model continues this prompt with 0xF0, the first byte of a 4-byte character; cut
    there by max_tokens (finish "length"), the answer drops it, whole or streamed, as `generate` does."""
    from plt_deploy.generate import SamplingParams, visible_text

    engine.start().wait_ready(120)
    prompt = [256, 0xF0, 0x9F]
    ids = [e.token_id for e in engine.submit(prompt, SamplingParams(max_new_tokens=1)) if e.token_id is not None]
    assert ids == [0xF0] and engine.tokenizer.decode(ids) == "\ufffd"
    r = run(CompletionsHandler(engine).create({"prompt": prompt, "max_tokens": 1, "temperature": 0,
                                               "ignore_eos": True, "stream": stream}))
    if stream:
        async def collect():
            return [part async for part in r.body_iterator]
        chunks = [json.loads(e[len("data: "):]) for e in run(collect())[:-1]]
        text = "".join(c["choices"][0]["text"] for c in chunks)
        reason = chunks[-1]["choices"][0]["finish_reason"]
    else:
        text, reason = body(r)["choices"][0]["text"], body(r)["choices"][0]["finish_reason"]
    assert reason == "length" and text == visible_text(engine.tokenizer.decode, ids) == ""

@pytest.mark.parametrize("handler, data, status, code, param", [
    (CompletionsHandler, {"prompt": "x", "n": 2}, 400, "unsupported_field", "n"),
    (CompletionsHandler, {"prompt": "x", "bogus": 1}, 400, "unsupported_field", "bogus"),
    (CompletionsHandler, {"prompt": "x", "max_tokens": "5"}, 400, "invalid_value", "max_tokens"),
    (CompletionsHandler, {"prompt": "x", "max_tokens": 1000}, 400, "max_tokens_too_large", "max_tokens"),
    (CompletionsHandler, {"prompt": [1 << 30]}, 400, None, "prompt"),
    (CompletionsHandler, {"prompt": ["a", "b"]}, 400, "unsupported_field", "prompt"),
    (CompletionsHandler, {"prompt": "x", "model": "other"}, 404, "model_not_found", "model"),
    (CompletionsHandler, {"prompt": list(range(1, 64)), "max_tokens": 40}, 400, "context_length_exceeded",
     "max_tokens"),
    (ChatHandler, {"messages": []}, 400, "invalid_value", "messages"),
    (CompletionsHandler, {"prompt": "x", "stream_options": {"include_usage": True}}, 400, "invalid_value",
     "stream_options"),  # as OpenAI: only with stream true
    (CompletionsHandler, {"prompt": "x", "temperature": float("nan")}, 400, "invalid_value", "temperature"),
    (CompletionsHandler, {"prompt": "x", "top_p": float("nan")}, 400, "invalid_value", "top_p"),
    (ChatHandler, {"messages": [{"role": "user", "content": ""}] * 65}, 400, "context_length_exceeded", "messages"),
    (ChatHandler, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, None, "messages"),
])
def test_handlers_refuse_bad_requests_with_typed_errors(engine, handler, data, status, code, param):
    engine.start().wait_ready(120)
    with pytest.raises(APIError) as err:
        run(handler(engine).create(data))
    assert (err.value.status, err.value.code, err.value.param) == (status, code, param)
    assert err.value.response().status_code == status


def test_engine_errors_map_to_status_codes_in_one_table():
    assert (lambda e: (e.status, e.type, e.code))(from_engine_error(QueueFullError("q"))) == \
        (429, "rate_limit_error", "queue_full")
    stopped = from_engine_error(EngineStoppedError("s"))
    assert stopped.status == 503 and stopped.headers == {"Connection": "close"}
    ctx = from_engine_error(ContextLengthError("too long", "prompt"))
    assert (ctx.status, ctx.code, ctx.param) == (400, "context_length_exceeded", "prompt")
    assert from_engine_error(InputError("bad")).status == 400
    assert from_engine_error(ModelError("nan")) is None  # not a client's fault: the app answers 500
    assert from_engine_error(RuntimeError("bug")) is None


def test_finite_number_messages_name_the_problem(engine):
    with pytest.raises(APIError) as err:
        run(CompletionsHandler(engine).create({"prompt": "x", "temperature": float("nan")}))
    assert err.value.message == "temperature: Input should be a finite number"  # not "... <= 2"


def test_more_messages_than_the_context_are_refused_before_validation(engine, monkeypatch):
    """Validating one message holds the GIL ~8 us: a 1 MB body of 30,000 of them held every stream."""
    def validate(data):
        raise AssertionError("validated")
    monkeypatch.setattr(ChatHandler, "parse", lambda self, data: validate(data))
    with pytest.raises(APIError) as err:
        run(ChatHandler(engine).create({"messages": [{"role": "user", "content": "hi"}] * (engine.max_context + 1)}))
    assert err.value.code == "context_length_exceeded" and f"{engine.max_context + 1} messages" in err.value.message


def test_request_preparation_runs_off_the_event_loop(engine, monkeypatch):
    """Tokenizing a large prompt must not stop the loop that sends every other stream's chunks."""
    import time

    engine.start().wait_ready(120)
    slow = CompletionsHandler(engine)
    real = slow.prompt_ids
    ticks, during = [0], []

    def tokenize_slowly(req, e):  # counts the loop's ticks while it "tokenizes" (load-proof: no timing bound)
        start = ticks[0]
        time.sleep(1.0)
        during.append(ticks[0] - start)
        return real(req, e)
    monkeypatch.setattr(slow, "prompt_ids", tokenize_slowly)

    async def main():
        done = asyncio.Event()

        async def ticker():
            while not done.is_set():
                await asyncio.sleep(0.01)
                ticks[0] += 1
        tick = asyncio.create_task(ticker())
        r = await slow.create({"prompt": "hi", "max_tokens": 2})
        done.set()
        await tick
        return r
    r = run(main())
    assert r.status_code == 200 and during[0] >= 3  # on the loop it would be 0


def test_default_context_is_capped_by_the_model(tmp_path):
    """An export of --max-seq 32 served without --max-context: the context is 32, not a refusal of
    the default 256 the user never gave (reported)."""
    ckpt = init_checkpoint("tiny", tmp_path / "short", mode="plt", seed=5, max_seq_len=32)
    be = load_torch(ckpt)
    e = Engine(be, load_serve_tokenizer(ckpt, be.config.vocab_size), slots=1)
    assert e.max_context == 32
    with pytest.raises(InputError, match="max_context 64 must be in"):  # given explicitly: still refused
        Engine(be, load_serve_tokenizer(ckpt, be.config.vocab_size), slots=1, max_context=64)
