"""The written repository served by a real Triton server (2.51, bundled in nvidia-pytriton) on loopback.

One server for the module, on free 127.0.0.1 ports, stopped by the fixture within a bounded time.
Its repository holds the good model `plt` (the tiny ONNX export, 2 slots) and `plt_bad`, whose
export was damaged after writing: Triton must keep it not ready with the triton-repo message.
"""

import http.client
import importlib.util
import json
import os
import re
import shutil
import time

import pytest

pytest.importorskip("tritonclient", reason="needs the triton extra: pip install 'plt-deploy[triton]'")
if importlib.util.find_spec("pytriton") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must install the bundled Triton server: pip install --no-deps nvidia-pytriton==0.7.0")
    pytest.skip("nvidia-pytriton (bundled Triton server) not installed: pip install --no-deps nvidia-pytriton",
                allow_module_level=True)

PROMPT = "The loop"
N = 12
STOP_WITHIN_S = 40


@pytest.fixture(scope="module")
def server(tiny_exports, tmp_path_factory):
    from plt_deploy.triton.local_server import LocalTriton
    from plt_deploy.triton.repository import write_repository

    root = tmp_path_factory.mktemp("triton")
    ex = tiny_exports["plt"][1]
    repo = write_repository(ex, root / "repo", backend="onnxruntime", slots=2, name="plt")
    bad = write_repository(ex, root / "bad", backend="onnxruntime", slots=1, name="plt_bad")
    victim = bad / "plt_bad" / "1" / "artifact" / "decode.onnx"
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    shutil.move(str(bad / "plt_bad"), str(repo / "plt_bad"))
    srv = LocalTriton(repo, root / "server", startup_timeout=240, stop_timeout=20)
    srv.start()
    try:
        yield srv
    finally:
        group, t0 = srv.proc.pid, time.monotonic()
        srv.stop()
        assert time.monotonic() - t0 < STOP_WITHIN_S
        with pytest.raises(ProcessLookupError):  # neither the server nor a Python stub is left
            os.killpg(group, 0)


def reference(tiny_exports, n=N):
    from plt_deploy.generate import generate_text

    return generate_text(str(tiny_exports["plt"][1]), [PROMPT], backend="onnxruntime", max_new_tokens=n)[0]


def open_stream(srv, body):
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=60)
    conn.request("POST", "/v2/models/plt/generate_stream", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    return conn, resp


def events(resp):
    """The SSE `data:` payloads as dicts, until the server ends the stream."""
    for line in resp:
        line = line.decode().strip()
        if line.startswith("data:"):
            yield json.loads(line[5:])


def metric(srv, name, **labels):
    """The value of metric `name` whose labels include `labels` (model="plt" by default), or None."""
    labels = {"model": "plt", **labels}
    for line in srv.metrics().splitlines():
        m = re.match(rf"^{name}{{(.*)}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1).split(",") for k, v in labels.items()):
            return float(m.group(2))
    return None


def test_generate_equals_plt_deploy_generate(server, tiny_exports):
    status, text = server.post("/v2/models/plt/generate", {"text_input": PROMPT, "max_tokens": N, "temperature": 0})
    assert status == 200, text
    out = json.loads(text)
    assert out["text_output"] == reference(tiny_exports)
    assert out["finish_reason"] in ("stop", "length")
    assert 1 <= len(out["token_ids"]) <= N


def test_stop_strings_as_a_list_or_one_string(server, tiny_exports):
    ref = reference(tiny_exports)
    stop = ref[3:5]  # the text ends where the stop string would begin
    for value in (["never-generated", stop], stop):
        status, text = server.post("/v2/models/plt/generate", {"text_input": PROMPT, "max_tokens": N, "stop": value})
        assert status == 200, text
        out = json.loads(text)
        assert (out["text_output"], out["finish_reason"]) == (ref[:ref.index(stop)], "stop"), (value, out)


def test_generate_stream_equals_plt_deploy_generate(server, tiny_exports):
    conn, resp = open_stream(server, {"text_input": PROMPT, "max_tokens": N, "stream": True})
    try:
        chunks = list(events(resp))
    finally:
        conn.close()
    assert not [c for c in chunks if "error" in c], chunks
    assert len(chunks) >= 2  # one event per token, the last one carries the finish reason
    assert "".join(c["text_output"] for c in chunks) == reference(tiny_exports)
    assert [bool(c["finish_reason"]) for c in chunks] == [False] * (len(chunks) - 1) + [True]


def test_bad_input_is_a_triton_error(server):
    status, text = server.post("/v2/models/plt/generate", {"text_input": PROMPT, "max_tokens": 100000})
    assert status == 400 and "exceeds the context of 256 tokens" in json.loads(text)["error"], text


def test_cancelled_stream_frees_its_slot(server):
    conn, resp = open_stream(server, {"text_input": PROMPT, "max_tokens": 240, "stream": True})
    first = next(events(resp))
    assert "text_output" in first, first
    conn.sock.shutdown(2)  # the client goes away mid-stream
    conn.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if metric(server, "plt_requests_finished_total", reason="cancelled") == 1:
            break
        time.sleep(0.05)
    metrics = server.metrics()
    assert metric(server, "plt_requests_finished_total", reason="cancelled") == 1, metrics
    while metric(server, "plt_slots_in_use") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server, "plt_slots_in_use") == 0
    status, _ = server.post("/v2/models/plt/generate", {"text_input": PROMPT, "max_tokens": 2})
    assert status == 200


def test_damaged_model_is_not_ready_with_the_triton_repo_message(server):
    status, _ = server.get("/v2/models/plt_bad/ready")
    assert status != 200
    assert server.get("/v2/models/plt/ready")[0] == 200
    reason = server.models()["plt_bad"].get("reason", "")
    assert re.search(r"plt_bad/1/artifact/decode\.onnx: sha256 does not match .*manifest\.json", reason), reason
    assert "decode.onnx: sha256 does not match" in server.log_text()
