"""The HTTP server on loopback (uvicorn in a thread, free ports): endpoints, SSE, errors, auth, limits,
disconnects, metrics, and `plt-deploy serve` as a subprocess stopped by SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch

from plt_deploy.backends.torch_backend import load as load_torch
from plt_deploy.generate import SamplingParams, generate
from plt_deploy.serve.app import ServerSettings, build_app
from plt_deploy.serve.chat import load_serve_tokenizer
from plt_deploy.serve.engine import Engine
from plt_deploy.serve.metrics import Metrics

pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, seconds: float, alive=lambda: True) -> bool:
    """Whether url/health answered 200 within `seconds` (giving up early once `alive()` is false)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return False


class ServerThread:
    """uvicorn serving `app` on a free loopback port in a daemon thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        if not wait_healthy(self.url, 30):
            raise RuntimeError("server did not become healthy in 30 s")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from plt_deploy.checkpoint import save_checkpoint
    from plt_deploy.checkpoint import init_checkpoint

    root = tmp_path_factory.mktemp("serve_server")
    model = load_torch(init_checkpoint("tiny", root / "init", mode="plt", seed=5)).model
    with torch.no_grad():  # context-dependent greedy tokens (see test_serve_engine)
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.mul_(6.0)
    return save_checkpoint(model, root / "tiny")


def make_engine(checkpoint, **kw):
    be = load_torch(checkpoint)
    tok = load_serve_tokenizer(checkpoint, be.config.vocab_size)
    kw.setdefault("max_context", 128)
    return Engine(be, tok, model_name="tiny", metrics=Metrics("tiny"), **kw)


@pytest.fixture(scope="module")
def server(checkpoint):
    engine = make_engine(checkpoint, slots=4, max_queue=16)
    srv = ServerThread(build_app(engine, ServerSettings(max_body_bytes=4096)))
    srv.engine = engine
    yield srv
    srv.stop()


def sse_events(lines):
    """data payloads of an SSE stream, [DONE] included as the string."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_health_models_and_greedy_completion_equals_generate(server, checkpoint):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    models = httpx.get(server.url + "/v1/models").json()
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_model_len"] == 128
    tok = server.engine.tokenizer
    want = generate(load_torch(checkpoint), [tok.encode("Hello")], SamplingParams(max_new_tokens=12))[0]
    r = httpx.post(server.url + "/v1/completions",
                   json={"prompt": "Hello", "max_tokens": 12, "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["text"] == tok.decode(want) and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 12, "total_tokens": 18,
                             "prompt_tokens_details": {"cached_tokens": 0}}  # first request: nothing cached
    assert r.headers["x-replica-id"] == "0"


def test_streaming_completion_and_usage(server):
    req = {"prompt": "Hello", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    whole = httpx.post(server.url + "/v1/completions", json=req).json()["choices"][0]["text"]
    with httpx.stream("POST", server.url + "/v1/completions", json={**req, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        events = sse_events(r.iter_lines())
    assert events[-1] == "[DONE]" and all("usage" not in e for e in events[:-1])
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == whole
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    with httpx.stream("POST", server.url + "/v1/completions",
                      json={**req, "stream": True, "stream_options": {"include_usage": True}}) as r:
        events = sse_events(r.iter_lines())
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 12 and events[-1] == "[DONE]"


def test_chat_stream_and_whole(server):
    req = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    whole = httpx.post(server.url + "/v1/chat/completions", json=req).json()
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"]["role"] == "assistant"
    # the plain template: "user: Hi\nassistant:" after <bos>
    assert whole["usage"]["prompt_tokens"] == 1 + len("user: Hi\nassistant:")
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**req, "stream": True}) as r:
        events = sse_events(r.iter_lines())
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == whole["choices"][0]["message"]["content"] and events[-1] == "[DONE]"


@pytest.mark.parametrize("chat", [False, True])
def test_stream_never_sends_a_chunk_without_text_or_finish_reason(server, chat):
    """A stop string's first character is held back until the next token shows it is not a stop:
    that token's event has no text, and no chunk is sent for it. With continuous usage every token
    gets a chunk (its text empty when held back) saying how many tokens are done."""
    req = {"max_tokens": 20, "temperature": 0, "ignore_eos": True}
    if chat:
        route, req = "/v1/chat/completions", {**req, "messages": [{"role": "user", "content": "Hi"}]}
    else:
        route, req = "/v1/completions", {**req, "prompt": "123+456="}
    whole = httpx.post(server.url + route, json=req).json()["choices"][0]
    text = whole["message"]["content"] if chat else whole["text"]
    stop = text[0] + "\x00never"  # its prefix text[0] is held back every time it is generated
    whole = httpx.post(server.url + route, json={**req, "stop": stop}).json()["choices"][0]
    def streamed(options):
        with httpx.stream("POST", server.url + route, json={**req, "stop": stop, "stream": True,
                                                            "stream_options": options}) as r:
            events = sse_events(r.iter_lines())[:-1]
        if chat:
            assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            events = events[1:]
        pieces = [e["choices"][0]["delta"].get("content", "") if chat else e["choices"][0]["text"] for e in events]
        assert "".join(pieces) == (whole["message"]["content"] if chat else whole["text"])
        return events, pieces

    events, pieces = streamed({})
    assert all(p or e["choices"][0]["finish_reason"] for p, e in zip(pieces, events)), pieces
    assert len(events) < 20  # held-back text joined the next chunk
    events, pieces = streamed({"continuous_usage_stats": True})
    assert [e["usage"]["completion_tokens"] for e in events] == list(range(1, 21))  # a chunk per token
    assert "" in pieces


@pytest.mark.parametrize("body, status, param, words", [
    ({"prompt": "x" * 120, "max_tokens": 20}, 400, "max_tokens", ["121", "20", "128"]),
    ({"prompt": "Hi", "max_tokens": 500}, 400, "max_tokens", ["500", "128"]),
    ({"prompt": "Hi", "n": 2}, 400, "n", ["n=2"]),
    ({"prompt": "Hi", "logit_bias": {"5": 1.0}}, 400, "logit_bias", ["logit_bias"]),
    ({"prompt": "Hi", "frobnicate": True}, 400, "frobnicate", ["frobnicate"]),
    ({"prompt": "Hi", "max_tokens": "many"}, 400, "max_tokens", ["integer"]),
    ({"prompt": "Hi", "temperature": -1}, 400, "temperature", ["temperature"]),
    ({"max_tokens": 3}, 400, "prompt", ["prompt"]),
    ({"prompt": "Hi", "model": "other"}, 404, "model", ["other"]),
    ({"prompt": ["a", "b"]}, 400, "prompt", ["several prompts"]),
])
def test_bad_requests_get_openai_errors(server, body, status, param, words):
    r = httpx.post(server.url + "/v1/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    assert all(w in err["message"] for w in words), err["message"]


def test_malformed_json_body_limit_and_unknown_route(server):
    r = httpx.post(server.url + "/v1/completions", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "a" * 5000})
    assert r.status_code == 413 and "4096" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["type"] == "not_found_error"
    assert httpx.get(server.url + "/health").status_code == 200  # still serving


def test_bad_requests_do_not_disturb_a_running_stream(server):
    req = {"prompt": "Hello", "max_tokens": 40, "temperature": 0, "ignore_eos": True}
    alone = httpx.post(server.url + "/v1/completions", json=req).json()["choices"][0]["text"]
    with httpx.stream("POST", server.url + "/v1/completions", json={**req, "stream": True}) as r:
        lines = r.iter_lines()
        first = [next(lines) for _ in range(2)]
        for bad in ({"prompt": "x" * 200}, {"prompt": "Hi", "n": 3}, {"prompt": []}):
            assert httpx.post(server.url + "/v1/completions", json=bad).status_code == 400
        events = sse_events(first + list(lines))
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == alone


def test_client_disconnect_frees_its_slot_within_one_step(server):
    engine = server.engine
    before = len(engine.cancel_lags)
    with httpx.stream("POST", server.url + "/v1/completions",
                      json={"prompt": "Hello", "max_tokens": 120, "stream": True, "ignore_eos": True}) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        assert engine.stats()["slots_in_use"] == 1
    # the response is closed: the server notices on its next send, cancels, the engine frees the slot
    deadline = time.monotonic() + 10
    while (engine.stats()["slots_in_use"] or len(engine.cancel_lags) == before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats()["slots_in_use"] == 0
    assert len(engine.cancel_lags) == before + 1 and engine.cancel_lags[-1] <= 1
    text = httpx.get(server.url + "/metrics").text
    assert 'plt:request_success_total{finished_reason="cancelled",model_name="tiny",replica="0"} 1.0' in text


def test_error_after_stream_started_is_a_chunk_then_done(server):
    engine = server.engine
    with httpx.stream("POST", server.url + "/v1/completions",
                      json={"prompt": "Hi", "max_tokens": 100, "stream": True, "ignore_eos": True}) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(2)]
        session = engine.session

        def broken(tokens, hold=None):
            raise RuntimeError("injected decode failure")
        session.decode = broken  # the engine ends the batch's requests and starts a clean session
        events = sse_events(got + list(lines))
    assert events[-1] == "[DONE]" and "injected decode failure" in events[-2]["error"]["message"]
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 3})
    assert r.status_code == 200 and engine.session is not session


def test_metrics_names_and_counts(server):
    text0 = httpx.get(server.url + "/metrics").text

    def value(text, name):
        line = next(ln for ln in text.splitlines() if ln.startswith(name + "{"))
        return float(line.rsplit(" ", 1)[1])
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "abc", "max_tokens": 5, "ignore_eos": True})
    assert r.status_code == 200
    text = httpx.get(server.url + "/metrics").text
    for name in ("num_requests_running", "num_requests_waiting", "num_slots_in_use", "kv_cache_usage_perc",
                 "prompt_tokens_total", "generation_tokens_total", "request_success_total",
                 "time_to_first_token_seconds_bucket", "inter_token_latency_seconds_bucket",
                 "e2e_request_latency_seconds_bucket", "request_queue_time_seconds_bucket",
                 "decode_step_seconds_bucket"):
        assert f"plt:{name}{{" in text, name
    assert value(text, "plt:prompt_tokens_total") - value(text0, "plt:prompt_tokens_total") == 4
    assert value(text, "plt:generation_tokens_total") - value(text0, "plt:generation_tokens_total") == 5
    assert value(text, "plt:inter_token_latency_seconds_count") - value(text0, "plt:inter_token_latency_seconds_count") == 4


def test_api_key_and_queue_full(checkpoint):
    engine = make_engine(checkpoint, slots=1, max_queue=1)
    srv = ServerThread(build_app(engine, ServerSettings(api_key="s3cret")))
    try:
        req = {"prompt": "Hi", "max_tokens": 3}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.post(srv.url + "/v1/completions", json=req, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        assert httpx.get(srv.url + "/health").status_code == 200  # health and metrics stay open
        auth = {"Authorization": "Bearer s3cret"}
        assert httpx.post(srv.url + "/v1/completions", json=req, headers=auth).status_code == 200
        decode = engine.session.decode

        def slow_decode(tokens, hold=None):  # 20 ms a step, so the slot stays busy while the test looks
            time.sleep(0.02)
            return decode(tokens, hold)
        engine.session.decode = slow_decode
        long = {"prompt": "Hi", "max_tokens": 120, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", srv.url + "/v1/completions", json=long, headers=auth) as r1:
            lines1 = r1.iter_lines()  # keep the iterator: dropping it closes the stream
            next(lines1)  # r1 holds the one slot
            with httpx.stream("POST", srv.url + "/v1/completions", json=long, headers=auth) as r2:
                deadline = time.monotonic() + 10
                while engine.stats()["waiting"] < 1 and time.monotonic() < deadline:
                    time.sleep(0.005)
                t0 = time.monotonic()
                r3 = httpx.post(srv.url + "/v1/completions", json=req, headers=auth)
                assert r3.status_code == 429 and r3.json()["error"]["code"] == "queue_full"
                assert time.monotonic() - t0 < 2  # at once, not after the queue drains
                assert r2.status_code == 200
    finally:
        srv.stop()


@pytest.mark.parametrize("sig, grace, code, signals", [(signal.SIGTERM, 20, 0, 1), (signal.SIGINT, 0, 130, 1),
                                                      (signal.SIGINT, 20, 130, 2)])
def test_cli_serve_signal_mid_stream(checkpoint, sig, grace, code, signals):
    """SIGTERM with time to spare: the stream finishes normally, exit 0. SIGINT with no grace left,
    or a second SIGINT (Ctrl-C twice): the server ends the stream itself (a cancelled error chunk,
    then [DONE]) at once, before uvicorn's own cancellation, prints `stopped` (not `aborted`) and no
    traceback, exit 130. (uvicorn alone force-exits on a second SIGINT: streams cut off mid-body,
    the lifespan's CancelledError logged.)"""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PLT_API_KEY": "k"}
    cmd = [sys.executable, "-c", "from plt_deploy.cli import main; main()", "serve", "--model", str(checkpoint),
           "--port", str(port), "--max-context", "256", "--slots", "2", "--shutdown-timeout", str(grace)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("server did not become healthy in 60 s: " + proc.stderr.read() if proc.poll() else "")
        auth = {"Authorization": "Bearer k"}
        assert httpx.get(url + "/v1/models").status_code == 401  # the key came from $PLT_API_KEY
        body = {"prompt": "Hello", "max_tokens": 240, "stream": True, "ignore_eos": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url + "/v1/completions", json=body, headers=auth, timeout=30) as r:
            lines = r.iter_lines()
            got = [next(lines)]
            t_signal = time.monotonic()
            for _ in range(signals):  # mid-stream
                proc.send_signal(sig)
                time.sleep(0.2)
            events = sse_events(got + list(lines))
        t_end = time.monotonic() - t_signal
        assert events[-1] == "[DONE]"
        done = events[-2]["usage"]["completion_tokens"]
        if grace and signals == 1:
            assert events[-3]["choices"][0]["finish_reason"] == "length" and done == 240
        else:  # ended by the server at once, not by uvicorn 5 s later
            assert "cancelled" in events[-3]["error"]["message"] and done < 240 and t_end < 3
        assert proc.wait(timeout=30) == code
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    err = proc.stderr.read()
    assert err.rstrip().endswith("stopped") and "aborted" not in err, err
    assert "Traceback" not in err and "ERROR" not in err, err


def test_signal_closes_admission_at_once(checkpoint):
    """The first SIGTERM/SIGINT makes the engine refuse new requests right away (the app answers 503,
    also on a kept-alive connection), not at uvicorn's next tick; uvicorn does not re-raise it."""
    import uvicorn

    from plt_deploy.serve.engine import EngineStoppedError
    from plt_deploy.serve.server import _server_class

    engine = make_engine(checkpoint, slots=1)
    server = _server_class()(uvicorn.Config(build_app(engine)), engine, 1.0)
    server._captured_signals = []
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit and server.stop_signal == signal.SIGTERM and server._captured_signals == []
    assert engine.stopping
    with pytest.raises(EngineStoppedError):
        engine.submit([1, 2, 3], SamplingParams(max_new_tokens=2))


def test_passive_openmp_before_torch_is_imported():
    """`plt-deploy serve` makes OpenMP workers sleep instead of spin (they starved the engine under
    CPU contention), and importing the server module does not import torch first."""
    code = ("import os, sys; from plt_deploy.serve import server; import plt_deploy.cli.serve_cmd; "
            "print('torch' in sys.modules, server.passive_openmp(), os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "True", "PASSIVE"], out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the user's choice wins
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "True", "ACTIVE"], out.stderr


def test_bounded_load_test_against_the_server(server):
    from plt_deploy.serve.loadtest import LoadSpec, format_report, run_load

    spec = LoadSpec(url=server.url, requests=12, concurrency=4, prompt_lens=(4, 30), output_lens=(5, 17), seed=1,
                    max_seconds=60)
    r = run_load(spec)
    assert r["errors"] == 0 and r["requests_ok"] == 12 and r["not_sent"] == 0, r["error_examples"]
    assert r["generated_tokens"] == 6 * 5 + 6 * 17  # every output generated in full
    assert 0 < r["tokens_per_s"] and r["busy_tokens_per_s"] > 0 and r["ttft_ms_p50"] <= r["ttft_ms_p99"] and r["tbt_ms_p50"] is not None
    assert r["rss_mib_before"] > 0 and r["rss_mib_after"] > 0
    assert "0 errors" in format_report(r)


def test_load_test_clients_and_http_error_messages(server):
    from plt_deploy.serve.loadtest import LoadSpec, format_report, run_load

    r = run_load(LoadSpec(url=server.url, requests=2, concurrency=8, prompt_lens=(4,), output_lens=(3,)))
    assert r["clients"] == 2 and r["errors"] == 0 and r["busy_tokens_per_s"] > 0
    assert "(2 clients," in format_report(r) and "all 2 clients busy" in format_report(r)
    r = run_load(LoadSpec(url=server.url, requests=2, concurrency=1, prompt_lens=(4,), output_lens=(500,)))
    assert r["errors"] == 2
    assert r["error_examples"][0] == "HTTP 400: max_tokens 500 exceeds the server's limit of 128"
