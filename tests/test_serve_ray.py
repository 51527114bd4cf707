"""Ray Serve for real: `plt-deploy serve --replicas 2` on a local Ray bound to 127.0.0.1 (no
dashboard, 2 CPUs), requests spread over both replicas, streaming, SIGTERM shuts down cleanly."""

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytest.importorskip("ray.serve")

from test_serve_server import checkpoint, sse_events  # noqa: E402,F401  (shared fixture)


def test_two_replicas_spread_stream_and_shut_down(checkpoint):  # noqa: F811
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-c", "from plt_deploy.cli import main; main()", "serve", "--model", str(checkpoint),
           "--port", "0", "--max-context", "128", "--slots", "2", "--replicas", "2", "--ray-cpus", "2",
           "--threads", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, stderr_tail, urls = threading.Event(), [], []

    def drain_stderr():  # `serve` prints "ready on URL" once serve.run returned: every replica RUNNING.
        for line in proc.stderr:  # Never let Ray's stderr fill the pipe; keep the end for a failure message.
            if line.startswith("ready on http://"):
                urls.append(line.split()[2])
                ready.set()
            stderr_tail[:] = (stderr_tail + [line])[-20:]

    threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
    threading.Thread(target=drain_stderr, daemon=True).start()
    try:
        # Not /health: the proxy answers it as soon as the FIRST replica is up, while the second
        # may still be loading its engine (then every request lands on the first).
        deadline = time.monotonic() + 180
        while not ready.wait(0.5) and proc.poll() is None and time.monotonic() < deadline:
            pass
        if not ready.is_set():
            pytest.fail(f"Ray Serve did not print ready in 180 s (exit {proc.poll()}): {''.join(stderr_tail)[-2000:]}")
        url = urls[0]  # --port 0: the ready line names the port the proxy really listens on
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0"), url
        replicas, texts = set(), set()
        deadline = time.monotonic() + 60
        while len(replicas) < 2 and time.monotonic() < deadline:  # Ray's router picks between the two
            r = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 4, "temperature": 0,
                                                          "ignore_eos": True}, timeout=30)
            assert r.status_code == 200, r.text
            replicas.add(r.headers["x-replica-id"])
            assert r.json()["system_fingerprint"] == r.headers["x-replica-id"]
            texts.add(r.json()["choices"][0]["text"])
        assert len(replicas) == 2 and len(texts) == 1  # two replicas, the same greedy answer
        with httpx.stream("POST", url + "/v1/completions", timeout=30,
                          json={"prompt": "Hi", "max_tokens": 8, "stream": True, "ignore_eos": True,
                                "stream_options": {"include_usage": True}}) as r:
            events = sse_events(r.iter_lines())
        assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 8
        assert sum(1 for e in events[:-2] if e["choices"][0]["text"] or e["choices"][0]["finish_reason"]) >= 2
        metrics = httpx.get(url + "/metrics", timeout=10).text
        assert 'replica="' in metrics and "plt:generation_tokens_total" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        time.sleep(0.5)  # drain_stderr reads the last lines
        assert stderr_tail and stderr_tail[-1].strip() == "stopped", stderr_tail  # as without --replicas
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
