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


# -- TensorRT headers for the plugin build, offline (gpu-check.sh's plugin stage) ------------------
# NVIDIA/TensorRT's release branches (git branch -a of the repository, 2026-12)
TRT_BRANCHES = ["main", "release/8.6", "release/10.13", "release/10.13.2", "release/10.14", "release/10.15",
                "release/10.16", "release/11.0", "release/11.1", "origin/release/10.9"]


@pytest.mark.parametrize("version, branch", [("10.15.1.29", "release/10.15"), ("11.4.0.106", "release/11.1"),
                                             ("10.16.0.1", "release/10.16"), ("10.13.3.9", "release/10.13"),
                                             ("10.9.0.34", "release/10.9"), ("9.3.0.1", None)])
def test_header_branch_is_the_newest_not_newer_than_tensorrt(version, branch):
    from plt_deploy.build.headers import header_branch

    assert header_branch(TRT_BRANCHES, version) == branch


def _git(*args, cwd):
    import subprocess

    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": "/usr/bin:/bin"})


def test_headers_from_a_local_clone_offline(tmp_path, monkeypatch):
    """No headers anywhere but a local clone: the right branch's include/ is extracted, no network."""
    from plt_deploy.build import headers

    clone = tmp_path / "TensorRT"
    (clone / "include").mkdir(parents=True)
    _git("init", "-q", "-b", "main", cwd=clone)
    for branch in ("release/10.15", "release/10.16", "release/11.1"):
        _git("checkout", "-q", "-b", branch, cwd=clone)
        (clone / "include" / "NvInferRuntime.h").write_text(f"// {branch}\n")
        _git("add", "-A", cwd=clone)
        _git("commit", "-q", "-m", branch, cwd=clone)
    for var in ("TENSORRT_INCLUDE_DIR", "TENSORRT_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(headers, "SYSTEM_DIRS", ())
    monkeypatch.setattr(headers, "wheel_include_dirs", lambda: [])
    monkeypatch.delenv("TENSORRT_OSS_DIR", raising=False)
    include, why = headers.find_headers("10.15.1.29", tmp_path / "out")
    assert include is None and "no TensorRT headers" in why and "TENSORRT_OSS_DIR" in why  # gpu-check's SKIP line
    monkeypatch.setenv("TENSORRT_OSS_DIR", str(clone))
    include, why = headers.find_headers("10.15.1.29", tmp_path / "out")
    assert (include / "NvInferRuntime.h").read_text() == "// release/10.15\n", why
    include, _ = headers.find_headers("11.4.0.106", tmp_path / "out")
    assert (include / "NvInferRuntime.h").read_text() == "// release/11.1\n"
    wheel = tmp_path / "site" / "tensorrt_libs" / "include"
    wheel.mkdir(parents=True)
    monkeypatch.setattr(headers, "wheel_include_dirs", lambda: [wheel])
    assert headers.find_headers("10.15.1.29", tmp_path / "out") == (wheel, "the tensorrt wheel's include folder")


@pytest.mark.slow
def test_trtexec_shapes_for_the_serialized_library_stage(no_engines):
    """gpu-check's plugin-load:serialized-library builds decode.onnx with trtexec --shapes from the manifest."""
    import subprocess
    import sys
    from pathlib import Path

    from plt_deploy.export.manifest import read_manifest

    script = Path(__file__).resolve().parents[1] / "scripts" / "plugin-paths.py"
    proc = subprocess.run([sys.executable, str(script), "trtexec-shapes", str(no_engines)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(no_engines)
    shapes = dict(item.split(":") for item in proc.stdout.strip().split(","))
    assert list(shapes) == [t.name for t in m.graphs["decode"].inputs]
    for t in m.graphs["decode"].inputs:
        assert shapes[t.name] == "x".join(map(str, t.concrete({"batch": 1, "max_seq": m.max_seq})))
