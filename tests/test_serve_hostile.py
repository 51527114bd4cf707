"""`plt-deploy serve` (a subprocess on loopback, one for the module) under hostile input: each
request of the corpus gets a 4xx with the OpenAI error body and never disturbs the streams that
run beside it; connection limits (header size, silence, connection count); stop-string caps;
strict types; no traceback in the server's log."""

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

from test_serve_server import checkpoint, free_port, sse_events, wait_healthy  # noqa: F401  (checkpoint is a fixture)

pytest.importorskip("uvicorn")

MAX_CONNECTIONS = 8  # = --slots: every admitted connection streams at once
KEEP_ALIVE = 1.0
MAX_HEADER = 16384


class Serve:
    """`plt-deploy serve` in a subprocess; its stderr (the server's log) goes to a file."""

    def __init__(self, checkpoint, log_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [sys.executable, "-c", "from plt_deploy.cli import main; main()", "serve", "--model", str(checkpoint),
               "--port", str(self.port), "--max-context", "128", "--slots", "8", "--max-queue", "32",
               "--max-connections", str(MAX_CONNECTIONS), "--timeout-keep-alive", str(KEEP_ALIVE),
               "--max-header-bytes", str(MAX_HEADER)]
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=self.log,
                                     stderr=subprocess.STDOUT, text=True)
        if wait_healthy(self.url, 90, lambda: self.proc.poll() is None):
            return
        self.stop()
        raise RuntimeError("server did not become healthy: " + self.read_log())

    def read_log(self) -> str:
        return open(self.log_path).read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def serve(checkpoint, tmp_path_factory):  # noqa: F811
    srv = Serve(checkpoint, tmp_path_factory.mktemp("hostile") / "serve.log")
    yield srv
    srv.stop()


def raw(srv, data: bytes, read: bool = True, timeout: float = 10.0) -> bytes:
    """Send bytes on a fresh connection; the server's whole answer (until it closes or `timeout`)."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as s:
        s.sendall(data)
        if not read:
            return b""
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out:
                    head, _, body = out.partition(b"\r\n\r\n")
                    length = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n")
                                   if ln.lower().startswith(b"content-length:")), None)
                    if length is not None and len(body) >= length:
                        break
        except (ConnectionResetError, socket.timeout):
            pass
        return out


def post_bytes(path: str, body: bytes, extra_headers: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n").encode() + extra_headers + b"\r\n" + body


def partial_post(declared: int, sent: bytes) -> bytes:
    """A request head declaring a body of `declared` bytes, then only `sent`."""
    return (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode() + sent


def status_and_error(answer: bytes) -> tuple[int, dict | None]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1") else 0
    try:
        return status, json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return status, None


STREAM = {"max_tokens": 48, "temperature": 0, "ignore_eos": True, "stream": True}


class Streams:
    """n streaming completions, each read in its own thread; .texts once joined."""

    def __init__(self, srv, prompts, max_tokens: int = STREAM["max_tokens"]):
        self.texts: list = [None] * len(prompts)
        self.started = threading.Barrier(len(prompts) + 1, timeout=60)
        self.threads = [threading.Thread(target=self._read, args=(srv, i, p, max_tokens), daemon=True) for i, p in enumerate(prompts)]
        for t in self.threads:
            t.start()
        self.started.wait()  # every stream has its first token: all are running

    def _read(self, srv, i, prompt, max_tokens):
        body = {**STREAM, "prompt": prompt, "max_tokens": max_tokens}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            got = [next(lines)]
            self.started.wait()
            events = sse_events(got + list(lines))
        assert events[-1] == "[DONE]", events[-3:]
        assert events[-2]["choices"][0]["finish_reason"] == "length", events[-2]
        self.texts[i] = "".join(e["choices"][0]["text"] for e in events[:-1])

    def join(self):
        for t in self.threads:
            t.join(120)
        return self.texts


def alone(srv, prompt) -> str:
    body = {**STREAM, "stream": False, "prompt": prompt}
    return httpx.post(srv.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]


# -- 1. one request's sampling edge fails only that request (and here: none, it is greedy) ----------
def test_underflowing_temperature_and_top_p_beside_six_streams(serve):
    prompts = [f"{i}+{i}=" for i in range(6)]
    want = [alone(serve, p) for p in prompts]
    streams = Streams(serve, prompts)
    greedy = httpx.post(serve.url + "/v1/completions", json={"prompt": "9+9=", "max_tokens": 4, "temperature": 0}).json()
    for extreme in ({"temperature": 1e-300}, {"temperature": 5e-324}, {"temperature": 1.0, "top_p": 1e-300}):
        r = httpx.post(serve.url + "/v1/completions", json={"prompt": "9+9=", "max_tokens": 4, **extreme})
        assert r.status_code == 200, r.text  # the exact request of the report: greedy
        assert r.json()["choices"][0]["text"] == greedy["choices"][0]["text"]
    assert streams.join() == want


# -- 2. client input that made a 500 with a traceback -----------------------------------------------
BAD_BODIES = {  # name: (raw JSON body, the param the error names or None)
    "seed 2**64": (b'{"prompt": "Hi", "max_tokens": 2, "seed": 18446744073709551616}', "seed"),
    "seed -2**63-1": (b'{"prompt": "Hi", "max_tokens": 2, "seed": -9223372036854775809}', "seed"),
    "lone surrogate in a prompt": (b'{"prompt": "ab\\ud800", "max_tokens": 2}', None),
    "lone low surrogate in a prompt": (b'{"prompt": "ab\\udcff", "max_tokens": 2}', None),
    "100,000 nested [": (b"[" * 100_000, None),
    "100,000 nested { values": (b'{"prompt": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}", None),
    "max_tokens of 5,001 digits": (b'{"prompt": "Hi", "max_tokens": 1' + b"0" * 5000 + b"}", None),
}
BAD_CHAT = {
    "lone surrogate in a chat message": (b'{"messages": [{"role": "user", "content": "ab\\ud800"}]}', None),
}


@pytest.mark.parametrize("name", [*BAD_BODIES, *BAD_CHAT])
def test_client_input_gets_400_not_500(serve, name):
    body, param = BAD_BODIES.get(name) or BAD_CHAT[name]
    path = "/v1/chat/completions" if name in BAD_CHAT else "/v1/completions"
    status, err = status_and_error(raw(serve, post_bytes(path, body)))
    assert status == 400 and err is not None and set(err) == {"message", "type", "param", "code"}, (status, err)
    if param:
        assert err["param"] == param
    assert "Traceback" not in serve.read_log()


# -- 3. an abandoned upload is no error of the server's ---------------------------------------------
def test_abandoned_and_stalled_uploads(serve):
    before = serve.read_log()
    raw(serve, partial_post(53, b'{"pro'), read=False)  # 5 of 53 bytes, then the client goes away
    t0 = time.monotonic()  # 5 of 53 bytes, then silence: 408 after the keep-alive timeout
    status, err = status_and_error(raw(serve, partial_post(53, b'{"pro')))
    assert status == 408 and err["code"] == "request_timeout", (status, err)
    assert KEEP_ALIVE - 0.2 < time.monotonic() - t0 < KEEP_ALIVE + 5
    time.sleep(0.3)
    new = serve.read_log()[len(before):]
    assert "Traceback" not in new and "ClientDisconnect" not in new, new
    assert httpx.get(serve.url + "/health").status_code == 200


# -- 4. connection limits -----------------------------------------------------------------------------
def test_oversized_header_gets_431(serve):
    big = b"X-Big: " + b"a" * (2 * MAX_HEADER) + b"\r\n"
    status, err = status_and_error(raw(serve, post_bytes("/v1/completions", b'{"prompt": "Hi"}', big)))
    assert status == 431 and "16384" in err["message"], (status, err)
    small = b"X-Small: " + b"a" * (MAX_HEADER // 2) + b"\r\n"
    status, _ = status_and_error(raw(serve, post_bytes("/v1/completions", b'{"prompt": "Hi", "max_tokens": 1}', small)))
    assert status == 200


@pytest.mark.parametrize("sent", [b"", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"])  # idle; half a head
def test_silent_connection_is_closed_after_the_keep_alive_timeout(serve, sent):
    with socket.create_connection(("127.0.0.1", serve.port), timeout=KEEP_ALIVE + 10) as s:
        s.sendall(sent)
        t0 = time.monotonic()
        assert s.recv(1024) == b""  # closed by the server, with nothing sent
        assert KEEP_ALIVE - 0.2 < time.monotonic() - t0 < KEEP_ALIVE + 5


def test_requests_over_the_limit_get_a_json_503_and_health_still_answers(serve):
    """--max-connections requests inside the server (here: bodies trickling in, a byte every 0.3 s,
    so they stay in whatever the load) -> one more gets the JSON 503 with Retry-After at once,
    /health still answers; once they go, requests are served again. (Counting requests, not
    connections: a stream that has finished no longer holds a place.)"""
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    socks = [socket.create_connection(("127.0.0.1", serve.port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    done = threading.Event()

    def trickle():
        while not done.wait(0.3):
            for s in socks:
                s.sendall(b" ")
    try:
        for s in socks:
            s.sendall(head)
        threading.Thread(target=trickle, daemon=True).start()
        deadline, r = time.monotonic() + 30, None
        while time.monotonic() < deadline:  # until the server has taken them all in
            r = httpx.post(serve.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
            if r.status_code == 503:
                break
            time.sleep(0.1)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"]["code"] == "too_many_connections"  # the error body, not uvicorn's plain text
        assert httpx.get(serve.url + "/health").status_code == 200  # a health check still sees a live server
    finally:
        done.set()
        for s in socks:
            s.close()
    deadline = time.monotonic() + 30
    while httpx.post(serve.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1}).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


# -- 5. stop strings are bounded ---------------------------------------------------------------------
@pytest.mark.parametrize("stop, ok", [(["a", "b", "c", "d"], True), (["x" * 256] * 4, True), ("y" * 256, True),
                                      (["a", "b", "c", "d", "e"], False), ("x" * 257, False), (["ok", "z" * 300], False),
                                      ([""], False), (["a"] * 100_000, False)])
def test_stop_sequences_are_capped(serve, stop, ok):
    r = httpx.post(serve.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 3, "stop": stop})
    if ok:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 400 and r.json()["error"]["param"] == "stop", r.text
        assert "at most 4 stop sequences" in r.json()["error"]["message"]


# -- 6. strict types, neutral values, the context error ---------------------------------------------
@pytest.mark.parametrize("field, value", [("max_tokens", "5"), ("temperature", True), ("stream", "yes"),
                                          ("top_p", "0.5"), ("seed", 1.5), ("max_tokens", 5.0), ("ignore_eos", 1)])
def test_types_are_strict(serve, field, value):
    r = httpx.post(serve.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2, field: value})
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


@pytest.mark.parametrize("route, extra", [("/v1/chat/completions", {"response_format": {"type": "text"}}),
                                          ("/v1/chat/completions", {"tools": []}),
                                          ("/v1/chat/completions", {"tools": [], "tool_choice": "none"}),
                                          ("/v1/completions", {"best_of": 1})])
def test_neutral_values_are_accepted(serve, route, extra):
    body = {"max_tokens": 2, **extra}
    body.update({"messages": [{"role": "user", "content": "Hi"}]} if "chat" in route else {"prompt": "Hi"})
    assert httpx.post(serve.url + route, json=body).status_code == 200


def test_context_error_names_what_is_too_long(serve):
    r = httpx.post(serve.url + "/v1/completions", json={"prompt": "x" * 200, "max_tokens": 1})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "prompt" and err["code"] == "context_length_exceeded"
    assert "201" in err["message"] and "128" in err["message"] and "max_tokens" not in err["message"], err
    r = httpx.post(serve.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 200}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
    r = httpx.post(serve.url + "/v1/completions", json={"prompt": "x" * 100, "max_tokens": 40})
    err = r.json()["error"]
    assert err["param"] == "max_tokens" and all(n in err["message"] for n in ("101", "40", "128")), err


# -- the whole corpus against one server while 4 normal streams run ---------------------------------
def corpus(srv) -> list[tuple[str, bytes]]:
    """(name, raw HTTP request) of every hostile request that must get a 4xx with the error body."""
    out = [(name, post_bytes("/v1/completions", body)) for name, (body, _) in BAD_BODIES.items()]
    out += [(name, post_bytes("/v1/chat/completions", body)) for name, (body, _) in BAD_CHAT.items()]
    as_json = {
        "malformed JSON": b'{"prompt": ',
        "not an object": b'["Hi"]',
        "invalid UTF-8": b'{"prompt": "\xff\xfe"}',
        "wrong type max_tokens": b'{"prompt": "Hi", "max_tokens": "5"}',
        "bool temperature": b'{"prompt": "Hi", "temperature": true}',
        "string stream": b'{"prompt": "Hi", "stream": "yes"}',
        "NaN temperature": b'{"prompt": "Hi", "temperature": NaN}',
        "huge top_k": b'{"prompt": "Hi", "top_k": -1}',
        "unsupported field": b'{"prompt": "Hi", "frobnicate": 1}',
        "n=2": b'{"prompt": "Hi", "n": 2}',
        "five stops": b'{"prompt": "Hi", "stop": ["a", "b", "c", "d", "e"]}',
        "a 0.9 MB stop list": json.dumps({"prompt": "Hi", "stop": ["ab"] * 150_000}).encode(),
        "unknown model": b'{"prompt": "Hi", "model": "gpt-9"}',
        "token id out of range": b'{"prompt": [1, 99999999]}',
        "prompt too long": json.dumps({"prompt": "x" * 500}).encode(),
    }
    out += [(name, post_bytes("/v1/completions", body)) for name, body in as_json.items()]
    chat = {
        "bad role": b'{"messages": [{"role": "wizard", "content": "Hi"}]}',
        "1 MB message": json.dumps({"messages": [{"role": "user", "content": "x" * 1_000_000}]}).encode(),
        "no messages": b'{"messages": []}',
        "image part": b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}',
    }
    out += [(name, post_bytes("/v1/chat/completions", body)) for name, body in chat.items()]
    out.append(("50 MB body (Content-Length)", partial_post(50_000_000, b"x" * 65536)))
    out.append(("oversized header", post_bytes("/v1/completions", b'{"prompt": "Hi"}',
                                                b"X-Big: " + b"a" * (4 * MAX_HEADER) + b"\r\n")))
    out.append(("not HTTP", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n"))
    return out


def test_whole_corpus_beside_four_streams(serve):
    prompts = ["Hello", "1+2=", "abc", "The"]
    want = [alone(serve, p) for p in prompts]
    streams = Streams(serve, prompts)
    failures = []
    for name, request in corpus(serve):
        status, err = status_and_error(raw(serve, request))
        if not (400 <= status < 500 and err is not None and set(err) == {"message", "type", "param", "code"}):
            failures.append((name, status, err))
    # a 50 MB body sent chunked (no Content-Length): refused once it passes the limit
    def chunks():
        for _ in range(50):
            yield b"x" * (1 << 20)
    try:
        r = httpx.post(serve.url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        if r.status_code != 413:
            failures.append(("50 MB chunked", r.status_code, r.text[:200]))
    except httpx.TransportError:  # the server answered 413 and closed while the client was still sending
        pass
    # an abandoned upload
    raw(serve, partial_post(53, b'{"pro'), read=False)
    assert not failures, failures
    assert streams.join() == want
    assert httpx.get(serve.url + "/health").status_code == 200
    log = serve.read_log()
    assert "Traceback" not in log and "Exception" not in log, log[-3000:]


def test_new_request_on_a_kept_alive_connection_during_shutdown_gets_503(serve):
    """The module's last test: it stops the module's server."""
    with httpx.Client(base_url=serve.url, timeout=30) as client:
        assert client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1}).status_code == 200
        streams = Streams(serve, ["Hello"], max_tokens=120)  # keeps the server busy while it drains
        serve.proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1})  # on the kept-alive connection
        assert r.status_code == 503 and r.json()["error"]["type"] == "unavailable", r.text
        assert r.headers["connection"] == "close"
        assert streams.join()[0]
    assert serve.proc.wait(30) == 0
    log = serve.read_log()
    assert "Traceback" not in log and log.rstrip().endswith("stopped"), log[-3000:]
