"""Loading an export on TensorRT, the CPU-checkable parts (issue 16, defects 2, 5 and 6).

- A runtime loader never builds engines: `--backend tensorrt` on an export without engines fails in
  one line naming `plt-deploy build`, before TensorRT is even needed (CLI, Python, triton-repo and
  Triton's initialize through plt_deploy.triton.runtime.Served.load).
- Engines whose outputs keep a -1 dimension once every input shape is set are refused at load
  (`dynamic_outputs` on the shapes an execution context reports).
- A Triton GPU instance runs on the device Triton names in initialize()'s args.
The GPU halves (a real engine, a real second GPU) are stages of scripts/gpu-check.sh.
"""

from __future__ import annotations

import copy
import shutil

import pytest

from plt_deploy.errors import ArtifactError

from cli_helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def no_engines(tiny_exports, tmp_path_factory):
    """A valid export that `plt-deploy build` never ran on."""
    folder = tmp_path_factory.mktemp("no-engines") / "export"
    shutil.copytree(tiny_exports["plt"][1], folder)
    return folder


@pytest.mark.slow
def test_generate_on_export_without_engines_names_build(no_engines, capsys):
    code, out, err = run_cli(capsys, "generate", "--backend", "tensorrt", "--model", str(no_engines), "--prompt", "hi")
    assert_one_line_error(code, err, "no TensorRT engines recorded", f"plt-deploy build --onnx {no_engines}")
    assert not (no_engines / "tensorrt").exists()  # nothing was built or written


@pytest.mark.slow
def test_backend_load_never_builds(no_engines):
    from plt_deploy.backends import load_backend

    before = (no_engines / "manifest.json").read_bytes()
    with pytest.raises(ArtifactError, match=r"no TensorRT engines recorded; build them with `plt-deploy build"):
        load_backend("tensorrt", str(no_engines), device=0)
    assert (no_engines / "manifest.json").read_bytes() == before


@pytest.mark.slow
def test_triton_initialize_on_export_without_engines_names_build(no_engines, tmp_path):
    pytest.importorskip("tritonclient", reason="needs the triton extra: pip install 'plt-deploy[triton]'")
    from plt_deploy.triton.repository import write_repository
    from plt_deploy.triton.runtime import Served

    from test_triton_glue import model_config_json

    with pytest.raises(ArtifactError, match=r"no TensorRT engines recorded; build them with `plt-deploy build"):
        write_repository(no_engines, tmp_path / "trt-repo", backend="tensorrt")
    # A repository whose config says tensorrt but whose artifact has no engines (e.g. copied by hand):
    # initialize() fails in the same line, it does not start a build inside the server.
    repo = write_repository(no_engines, tmp_path / "repo", backend="onnxruntime")
    config = copy.deepcopy(model_config_json(repo))
    config["parameters"]["backend"]["string_value"] = "tensorrt"
    with pytest.raises(ArtifactError, match=r"no TensorRT engines recorded; build them with `plt-deploy build"):
        Served.load(config, repo / "plt" / "1", device=1)


def test_dynamic_outputs_are_the_ones_with_minus_one():
    from plt_deploy.backends.trt_backend import dynamic_outputs

    shapes = {"logits": (2, 512), "present_key_0": (2, 2, 64, 16), "nonzero": (-1, 2)}
    assert dynamic_outputs(shapes) == ["nonzero"]
    assert dynamic_outputs({k: v for k, v in shapes.items() if k != "nonzero"}) == []


@pytest.mark.parametrize("args, device", [
    ({"model_instance_kind": "GPU", "model_instance_device_id": "3", "model_instance_name": "plt_0_3"}, 3),
    ({"model_instance_kind": "GPU", "model_instance_device_id": "0"}, 0),
    ({"model_instance_kind": "CPU", "model_instance_device_id": "0"}, None),
    ({}, None),
])
def test_instance_device_from_triton_args(args, device):
    from plt_deploy.triton.runtime import instance_device

    assert instance_device(args) == device


def test_instance_device_refuses_a_non_ordinal():
    from plt_deploy.triton.runtime import instance_device

    with pytest.raises(ArtifactError, match="model_instance_device_id='gpu1'"):
        instance_device({"model_instance_kind": "GPU", "model_instance_device_id": "gpu1"})


def test_load_engine_hands_the_device_to_the_backend(monkeypatch, tmp_path):
    """load_engine passes device= to the tensorrt loader (and only when given)."""
    import plt_deploy.backends as backends
    from plt_deploy.serve import load_engine

    seen = []

    def fake_load_backend(name, path, **options):  # stops before any model is loaded
        seen.append(options)
        raise ArtifactError("stop")

    monkeypatch.setattr(backends, "load_backend", fake_load_backend)
    for device in (2, None):
        with pytest.raises(ArtifactError, match="stop"):
            load_engine(str(tmp_path), backend="tensorrt", device=device)
    assert seen[0]["device"] == 2 and "device" not in seen[1]
