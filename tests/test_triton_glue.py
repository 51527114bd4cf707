"""model.py's logic (plt_deploy.triton.runtime) on the real slot engine, without a Triton server.

Triton hands initialize() the model config as protobuf JSON; the tests build exactly that from the
written config.pbtxt, and feed inputs as the numpy arrays pb_utils' as_numpy() returns.
"""

import threading
import time

import numpy as np
import pytest

pytest.importorskip("tritonclient", reason="needs the triton extra: pip install 'plt-deploy[triton]'")

PROMPT = "The loop"
N = 12


def model_config_json(repo, name="plt"):
    from google.protobuf import json_format

    from plt_deploy.triton.config import parse_config

    cfg = parse_config((repo / name / "config.pbtxt").read_text())
    return json_format.MessageToDict(cfg, preserving_proto_field_name=True)


def inputs(**values):
    """name -> numpy array the way pb_utils returns them (BYTES as object arrays of bytes)."""
    arrays = {}
    for k, v in values.items():
        if isinstance(v, str):
            arrays[k] = np.array([v.encode()], dtype=object)
        elif isinstance(v, list):
            arrays[k] = np.array([s.encode() for s in v], dtype=object)
        elif isinstance(v, bool):
            arrays[k] = np.array([v], dtype=bool)
        elif isinstance(v, float):
            arrays[k] = np.array([v], dtype=np.float32)
        else:
            arrays[k] = np.array([v], dtype=np.int32)
    return arrays.get


@pytest.fixture(scope="module")
def served(tiny_exports, tmp_path_factory):
    from plt_deploy.triton.repository import write_repository
    from plt_deploy.triton.runtime import Served

    ck, ex = tiny_exports["plt"]
    repo = write_repository(ex, tmp_path_factory.mktemp("glue") / "repo", backend="onnxruntime", slots=2)
    s = Served.load(model_config_json(repo), repo / "plt" / "1")
    yield s
    s.close()


def reference(tiny_exports, prompt=PROMPT, n=N):
    from plt_deploy.generate import generate_text

    return generate_text(str(tiny_exports["plt"][1]), [prompt], backend="onnxruntime", max_new_tokens=n)[0]


def test_generate_and_stream_equal_plt_deploy_generate(served, tiny_exports):
    want = reference(tiny_exports)
    one = []
    served.handle(inputs(text_input=PROMPT, max_tokens=N), one.append)
    assert len(one) == 1 and one[0].final and one[0].error is None, one
    assert one[0].text == want and one[0].finish_reason in ("stop", "length")
    chunks = []
    served.handle(inputs(text_input=PROMPT, max_tokens=N, stream=True), chunks.append)
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c.text for c in chunks) == want
    assert sum((c.token_ids for c in chunks), []) == one[0].token_ids


@pytest.mark.parametrize("values, message", [
    ({}, "text_input is required"),
    ({"text_input": PROMPT, "max_tokens": 100000}, "exceeds the context"),
    ({"text_input": PROMPT, "top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"text_input": PROMPT, "temperature": -1.0}, "temperature must be a finite number >= 0"),
])
def test_bad_input_is_one_error_response(served, values, message):
    out = []
    served.handle(inputs(**values), out.append)
    assert len(out) == 1 and out[0].final and message in out[0].error, out


def test_cancel_frees_the_slot(served):
    out, flag = [], threading.Event()

    def is_cancelled():
        return flag.is_set()

    t = threading.Thread(target=served.handle,
                         args=(inputs(text_input=PROMPT, max_tokens=200, stream=True), out.append, is_cancelled))
    t.start()
    deadline = time.monotonic() + 30
    while not out and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served.engine.stats()["slots_in_use"] == 1
    flag.set()
    t.join(30)
    assert not t.is_alive()
    assert out[-1].final and out[-1].finish_reason == "cancelled"
    assert len(out) < 200
    deadline = time.monotonic() + 5
    while served.engine.stats()["slots_in_use"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served.engine.stats()["slots_in_use"] == 0


def test_tampered_repository_fails_to_load_with_the_triton_repo_message(tiny_exports, tmp_path):
    from plt_deploy.errors import ArtifactError
    from plt_deploy.triton.repository import write_repository
    from plt_deploy.triton.runtime import Served

    repo = write_repository(tiny_exports["plt"][1], tmp_path / "repo")
    victim = repo / "plt" / "1" / "artifact" / "decode.onnx"
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="decode.onnx: sha256 does not match"):
        Served.load(model_config_json(repo), repo / "plt" / "1")


# -- GPU: the TensorRT repository (engines + the plugin loaded with ctypes from config.pbtxt's path) --
def _gpu_reason():
    from plt_deploy.build import availability

    return availability.unavailable_reason()


GPU_REASON = _gpu_reason()


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=GPU_REASON or "")
def test_gpu_tensorrt_repository_serves_like_generate(tiny_exports, tmp_path):
    import shutil

    from plt_deploy.build.engine import build_engines
    from plt_deploy.generate import generate_text
    from plt_deploy.triton.config import parse_config
    from plt_deploy.triton.repository import write_repository
    from plt_deploy.triton.runtime import Served

    ex = shutil.copytree(tiny_exports["plt"][1], tmp_path / "export")
    build_engines(ex, log=lambda *_: None)
    repo = write_repository(ex, tmp_path / "repo", backend="tensorrt", slots=2)
    cfg = parse_config((repo / "plt" / "config.pbtxt").read_text())
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    plugin = repo / "plt" / "1" / cfg.parameters["plugin"].string_value
    assert plugin.is_file()
    served = Served.load(model_config_json(repo), repo / "plt" / "1")
    try:
        one = []
        served.handle(inputs(text_input=PROMPT, max_tokens=N), one.append)
        assert one[0].text == generate_text(str(ex), [PROMPT], backend="tensorrt", max_new_tokens=N)[0]
    finally:
        served.close()
