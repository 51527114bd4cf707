"""`plt-deploy triton-repo`: the repository it writes, its config.pbtxt checked by Triton's own
ModelConfig proto (tritonclient's model_config_pb2), and its refusals (one line, REPO untouched)."""

import ast
import json
import shutil

import pytest

pytest.importorskip("tritonclient", reason="needs the triton extra: pip install 'plt-deploy[triton]'")

from plt_deploy.cli import main  # noqa: E402
from plt_deploy.triton.config import INPUTS, OUTPUTS, ModelParams, model_config_pb2, parse_config, render_config  # noqa: E402


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 1, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture()
def ckpt(tmp_path):
    from plt_deploy.checkpoint import init_checkpoint

    return init_checkpoint("tiny", tmp_path / "ck", seed=2)


@pytest.mark.parametrize("params, kind", [
    (ModelParams("artifact", "onnxruntime", 4), "KIND_CPU"),
    (ModelParams("artifact", "torch", 2, max_context=128, checkpoint_sha256='{"config.json": "ab"}', threads=2),
     "KIND_CPU"),
    (ModelParams("artifact", "tensorrt", 8, plugin="plugins/libplt_trt_plugins.so", plugin_sha256="cd" * 32),
     "KIND_GPU"),
])
def test_config_parses_into_triton_model_config(params, kind):
    pb2 = model_config_pb2()
    cfg = parse_config(render_config("plt", params))  # text_format refuses unknown fields
    assert cfg.name == "plt" and cfg.backend == "python" and cfg.max_batch_size == 0
    assert cfg.model_transaction_policy.decoupled is True
    assert [(i.name, pb2.DataType.Name(i.data_type), tuple(i.dims), i.optional) for i in cfg.input] == list(INPUTS)
    assert [(o.name, pb2.DataType.Name(o.data_type), tuple(o.dims)) for o in cfg.output] == list(OUTPUTS)
    assert [(g.count, pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == [(1, kind)]
    raw = {k: v.string_value for k, v in cfg.parameters.items()}
    assert ModelParams.from_dict(raw) == params


def test_unknown_config_field_is_refused():
    from plt_deploy.errors import ArtifactError

    text = render_config("plt", ModelParams("artifact", "onnxruntime", 4))
    with pytest.raises(ArtifactError, match="not a valid Triton model config"):
        parse_config(text + "dynamic_batching_x { }\n")


def test_cli_writes_the_repository(ckpt, tmp_path, capsys):
    from plt_deploy.export.manifest import model_identity
    from plt_deploy.triton import repository

    repo = tmp_path / "repo"
    code, out, err = run_cli(capsys, "triton-repo", "--model", ckpt, "--out", repo, "--backend", "torch",
                             "--slots", "3", "--name", "m1")
    assert code == 0, err
    version = repo / "m1" / "1"
    assert (version / "model.py").read_text() == repository.MODEL_TEMPLATE.read_text()
    assert sorted(p.name for p in (version / "artifact").iterdir()) == sorted(p.name for p in ckpt.iterdir())
    cfg = parse_config((repo / "m1" / "config.pbtxt").read_text())
    params = ModelParams.from_dict({k: v.string_value for k, v in cfg.parameters.items()})
    assert (params.backend, params.slots, params.artifact) == ("torch", 3, "artifact")
    assert params.checkpoint_hashes() == model_identity(ckpt)
    readme = (repo / "README.md").read_text()
    assert f"tritonserver --model-repository {repo.resolve()}" in readme
    assert "/v2/models/m1/generate " in readme and "/v2/models/m1/generate_stream" in readme
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_model_py_uses_only_what_runtime_defines():
    from plt_deploy.triton import repository, runtime

    tree = ast.parse(repository.MODEL_TEMPLATE.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "plt_deploy.triton.runtime"
             for a in n.names]
    assert names and all(hasattr(runtime, n) for n in names)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TritonPythonModel")
    assert {"initialize", "execute", "finalize"} <= {f.name for f in cls.body if isinstance(f, ast.FunctionDef)}


def test_existing_repository_is_kept_unless_force(ckpt, tmp_path, capsys):
    repo = tmp_path / "repo"
    argv = ("triton-repo", "--model", ckpt, "--out", repo, "--backend", "torch")
    assert run_cli(capsys, *argv)[0] == 0
    (repo / "keep-me").write_text("x")
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, f"{repo}: already exists; pass --force")
    assert (repo / "keep-me").exists()
    code, _, err = run_cli(capsys, *argv, "--force")  # a file it did not write: --force would delete it
    assert_one_line_error(code, err, "did not write (keep-me)")
    assert (repo / "keep-me").read_text() == "x"
    (repo / "keep-me").unlink()
    cache = repo / "plt" / "1" / "__pycache__"  # what Python writes when Triton has loaded model.py
    cache.mkdir()
    (cache / "model.cpython-311.pyc").write_bytes(b"x")
    assert run_cli(capsys, *argv, "--force")[0] == 0
    assert (repo / "plt" / "config.pbtxt").is_file() and not cache.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_refusals_are_one_line_and_write_nothing(tiny_exports, ckpt, tmp_path, capsys):
    ex = shutil.copytree(tiny_exports["plt"][1], tmp_path / "ex")
    repo = tmp_path / "repo"
    code, _, err = run_cli(capsys, "triton-repo", "--out", repo, "--model", ex, "--backend", "onnx")
    assert code == 2 and "Traceback" not in err and "'onnx' is not one of 'onnxruntime', 'tensorrt', 'torch'" in err
    assert not repo.exists()  # a usage error, like every command's bad flag value
    from plt_deploy.errors import InputError
    from plt_deploy.triton.repository import write_repository

    with pytest.raises(InputError, match="unknown backend 'onnx'; choose one of onnxruntime, tensorrt, torch"):
        write_repository(ex, repo, backend="onnx")  # the library call refuses it too
    assert not repo.exists()
    cases = [
        (("--model", ckpt, "--backend", "onnxruntime"), ["is a checkpoint folder", "plt-deploy export"]),
        (("--model", ex, "--backend", "tensorrt", "--plugin", tmp_path / "missing.so"),
         [f"--plugin {tmp_path / 'missing.so'}: file not found"]),
        (("--model", ex, "--backend", "torch"), ["is an export folder", "--backend onnxruntime"]),
    ]
    for args, needles in cases:
        code, _, err = run_cli(capsys, "triton-repo", "--out", repo, *args)
        assert_one_line_error(code, err, *needles)
        assert not repo.exists()
    victim = ex / "prefill.onnx"
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "triton-repo", "--model", ex, "--out", repo)
    assert_one_line_error(code, err, f"{victim}: sha256 does not match {ex / 'manifest.json'}")
    assert not repo.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_tensorrt_without_engines_names_the_build_step(tiny_exports, tmp_path, capsys):
    """A plugin file is there (any file: only its presence and hash are checked here), no engines."""
    plugin = tmp_path / "libplt_trt_plugins.so"
    plugin.write_bytes(b"not loaded at triton-repo time")
    ex = tiny_exports["plt"][1]
    code, _, err = run_cli(capsys, "triton-repo", "--model", ex, "--out", tmp_path / "repo", "--backend", "tensorrt",
                           "--plugin", plugin)
    assert_one_line_error(code, err, "no TensorRT engines recorded", "plt-deploy build")


def test_slots_and_context_beyond_the_export_refused_at_write_time(tiny_exports, tmp_path, capsys):
    """The repository would load in Triton and then refuse its own --slots: refused now, in serve's words."""
    from plt_deploy.backends.ort_backend import OrtBackend
    from plt_deploy.errors import InputError
    from plt_deploy.serve.engine import Engine
    from plt_deploy.tokenizer import ByteTokenizer

    ex, repo = tiny_exports["plt"][1], tmp_path / "repo"  # --max-batch 4
    code, _, err = run_cli(capsys, "triton-repo", "--model", ex, "--out", repo, "--slots", "5")
    assert_one_line_error(code, err, "--slots 5 exceeds the export's --max-batch 4")
    with pytest.raises(InputError, match="--slots 5 exceeds the export's --max-batch 4"):
        Engine(OrtBackend(ex), ByteTokenizer(), slots=5)  # serve's refusal of the same value
    code, _, err = run_cli(capsys, "triton-repo", "--model", ex, "--out", repo, "--slots", "4",
                           "--max-context", "100000")
    assert_one_line_error(code, err, "--max-context 100000 exceeds")
    assert not repo.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert run_cli(capsys, "triton-repo", "--model", ex, "--out", repo, "--slots", "4")[0] == 0


@pytest.mark.parametrize("name", ["bad/name", "", ".hidden", "a b"])
def test_bad_model_name_is_a_usage_error(tmp_path, capsys, name):
    repo = tmp_path / "repo"  # --model need not exist: refused while parsing, before any file is read
    code, _, err = run_cli(capsys, "triton-repo", "--model", tmp_path / "nope", "--out", repo, "--name", name)
    assert code == 2 and "Traceback" not in err and "Invalid value for '--name'" in err and repr(name) in err, err
    assert not repo.exists()
