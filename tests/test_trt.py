"""TensorRT build + runner: the CPU-checkable parts, and the GPU path behind `-m gpu`.

CPU: the one-line errors of `build` and `--backend tensorrt`, plugin-library discovery errors,
the plan checks (TensorRT version / compute capability / plugin sha256 / engine files) over
manifest dicts, optimisation-profile shapes, --workspace parsing, removal of the local function
for TensorRT < 10.7, the manifest's "tensorrt" section round trip, the libnvinfer RTLD_GLOBAL
promotion the plugin loader relies on (with two toy C libraries), and the graph-level feeds on
ONNX Runtime. GPU (skipped here with availability's one-line reason): build engines for a tiny
export, parity against ONNX Runtime and torch, CUDA-graph decode, greedy generation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from plt_deploy.build import availability, plan_check
from plt_deploy.build.engine import (needs_function_strip, parse_size, profile_axes, profile_shapes,
                                     strip_op_function, write_trt_section)
from plt_deploy.build.plugin import ENV_VAR, find_plugin, promote_global
from plt_deploy.cli import main
from plt_deploy.config import PLTConfig
from plt_deploy.errors import ArtifactError, InputError
from plt_deploy.export import io_spec

GPU_REASON = availability.unavailable_reason()


def run_cli(args, capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


# -- one-line errors without TensorRT / GPU -------------------------------------------------------
@pytest.mark.skipif(GPU_REASON is None, reason="TensorRT and a GPU are present here")
def test_build_without_tensorrt_is_one_line(tmp_path, capsys):
    code, out, err = run_cli(["build", "--onnx", str(tmp_path)], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"error: {GPU_REASON}"
    assert "TensorRT" in lines[0] or "CUDA" in lines[0]
    assert "pip install" in lines[0] or "nvidia-smi" in lines[0]


@pytest.mark.skipif(GPU_REASON is None, reason="TensorRT and a GPU are present here")
def test_generate_backend_tensorrt_without_tensorrt_is_one_line(tmp_path, capsys):
    code, out, err = run_cli(["generate", "--backend", "tensorrt", "--model", str(tmp_path), "--prompt", "hi"], capsys)
    assert code == 1
    assert err.strip().splitlines() == [f"error: {GPU_REASON}"]


def test_tensorrt_missing_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_trt(name, *a, **k):
        if name == "tensorrt":
            raise ModuleNotFoundError("No module named 'tensorrt'", name="tensorrt")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_trt)
    with pytest.raises(Exception) as exc:
        availability.require_tensorrt()
    assert str(exc.value) == "TensorRT is not installed: pip install tensorrt (needs an NVIDIA GPU and driver)"


def test_build_help_lists_options(capsys):
    code, out, _ = run_cli(["build", "--help"], capsys)
    assert code == 0
    for opt in ("--onnx", "--plugin", "--max-batch", "--max-seq", "--workspace", "--timing-cache"):
        assert opt in out


# -- plugin discovery -----------------------------------------------------------------------------
def test_plugin_explicit_missing_names_path(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    missing = tmp_path / "nope" / "libplt_trt_plugins.so"
    with pytest.raises(ArtifactError) as exc:
        find_plugin(missing)
    msg = str(exc.value)
    assert str(missing) in msg and "\n" not in msg and "cmake" in msg


def test_plugin_env_missing_names_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "x.so"))
    with pytest.raises(ArtifactError, match=rf"{ENV_VAR}=.*x\.so: file not found"):
        find_plugin(None)


def test_plugin_default_search(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    cands = [tmp_path / "a" / "libplt_trt_plugins.so", tmp_path / "b" / "libplt_trt_plugins.so"]
    with pytest.raises(ArtifactError) as exc:
        find_plugin(None, candidates=cands)
    assert all(str(c) in str(exc.value) for c in cands)
    cands[1].parent.mkdir()
    cands[1].write_bytes(b"\x7fELF")
    assert find_plugin(None, candidates=cands) == cands[1]
    monkeypatch.setenv(ENV_VAR, str(cands[1]))
    assert find_plugin(None, candidates=[]) == cands[1].resolve()


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_rtld_global_promotion_lets_an_unlinked_library_resolve(tmp_path):
    """The plugin library does not link libnvinfer; Python loads libnvinfer RTLD_LOCAL. Re-opening it
    with RTLD_NOLOAD|RTLD_GLOBAL (promote_global) makes its symbols visible to the next dlopen."""
    (tmp_path / "provider.c").write_text("int plt_provided_symbol(void) { return 42; }\n")
    (tmp_path / "consumer.c").write_text(
        "int plt_provided_symbol(void);\nstatic int v;\n__attribute__((constructor)) static void init(void)"
        " { v = plt_provided_symbol(); }\nint consumer_value(void) { return v; }\n")
    tag = hashlib.sha1(str(tmp_path).encode()).hexdigest()[:8]
    provider = tmp_path / f"libpltprov{tag}.so"
    consumer = tmp_path / "libpltcons.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", provider, tmp_path / "provider.c"], check=True)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", consumer, tmp_path / "consumer.c"], check=True)
    script = f"""
import ctypes, os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from plt_deploy.build.plugin import promote_global
ctypes.CDLL({str(provider)!r})  # RTLD_LOCAL, like an extension module's dependency
try:
    ctypes.CDLL({str(consumer)!r}); print("loaded-without-promotion")
except OSError:
    print("unresolved")
print(len(promote_global("libpltprov{tag}")))
print(ctypes.CDLL({str(consumer)!r}).consumer_value())
"""
    out = subprocess.run([os.sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["unresolved", "1", "42"]
    assert promote_global("libdefinitely-not-loaded") == []


# -- plan checks (pure Python) --------------------------------------------------------------------
def _section(**kw) -> dict:
    s = {"format": 1, "version": "10.13.0.35", "compute_capability": "8.9", "device": "NVIDIA L4",
         "plugin": {"path": "/x/libplt_trt_plugins.so", "sha256": "a" * 64},
         "engines": {}, "decode_cache_len": 64, "max_batch": 2}
    s.update(kw)
    return s


def test_plan_check_accepts_matching_platform():
    plan_check.check_platform(_section(), "10.13.0.35", "8.9")
    plan_check.check_plugin(_section(), "a" * 64, "/x/lib.so")
    plan_check.check_plugin(_section(plugin=None), "b" * 64, "/x/lib.so")  # vanilla export: no plugin in the plan


@pytest.mark.parametrize("version,cc,needle", [
    ("10.14.1.48", "8.9", "built with TensorRT 10.13.0.35, this process runs TensorRT 10.14.1.48"),
    ("10.13.0.35", "9.0", "compute capability 8.9 (NVIDIA L4), this GPU is 9.0"),
])
def test_plan_check_refuses_other_platform(version, cc, needle):
    with pytest.raises(ArtifactError) as exc:
        plan_check.check_platform(_section(), version, cc, "export/x/manifest.json")
    msg = str(exc.value)
    assert needle in msg and "plt-deploy build" in msg and "\n" not in msg


def test_plan_check_refuses_other_plugin():
    with pytest.raises(ArtifactError, match="plugin library sha256 aaaaaaaaaaaa.*bbbbbbbbbbbb.*--plugin"):
        plan_check.check_plugin(_section(), "b" * 64, "/y/lib.so")


def test_plan_check_section_missing_or_old():
    with pytest.raises(ArtifactError, match=r"no TensorRT engines recorded; build them with `plt-deploy build --onnx"):
        plan_check.trt_section({}, "export/x/manifest.json")
    with pytest.raises(ArtifactError, match="format 99"):
        plan_check.trt_section({"tensorrt": {"format": 99}})
    with pytest.raises(ArtifactError, match="lacks 'engines'"):
        plan_check.trt_section({"tensorrt": {k: v for k, v in _section().items() if k != "engines"}})


def test_plan_check_engine_files(tmp_path):
    (tmp_path / "tensorrt").mkdir()
    plan = tmp_path / "tensorrt" / "decode.plan"
    plan.write_bytes(b"plan-bytes")
    entry = {"file": "tensorrt/decode.plan", "sha256": hashlib.sha256(b"plan-bytes").hexdigest(), "bytes": 10}
    sec = _section(engines={"decode": entry})
    data = {"tensorrt": sec}
    _, plans = plan_check.check_all(tmp_path, data, "10.13.0.35", "8.9", "a" * 64, "/x/lib.so")
    assert plans == {"decode": plan}
    plan.write_bytes(b"plan-bytez")
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        plan_check.check_engine_files(tmp_path, sec)
    plan.unlink()
    with pytest.raises(ArtifactError, match="engine file not found"):
        plan_check.check_engine_files(tmp_path, sec)


def test_version_tuple_and_function_strip_rule():
    assert availability.version_tuple("10.7.0.23") == (10, 7, 0, 23)
    assert availability.version_tuple("10.8.0.post1") == (10, 8, 0)
    assert needs_function_strip("10.6.0.26") and needs_function_strip("8.6.1")
    assert not needs_function_strip("10.7.0.23") and not needs_function_strip("11.1.0.5")


# -- build options and profiles -------------------------------------------------------------------
def test_parse_size():
    assert parse_size("4G") == 4 << 30 and parse_size("512M") == 512 << 20 and parse_size("1.5GiB") == 3 << 29
    assert parse_size("1024") == 1024
    with pytest.raises(InputError, match="--workspace"):
        parse_size("lots")


def test_profiles_cover_prefill_and_decode():
    cfg = PLTConfig.from_name("tiny")
    specs = io_spec.graph_specs(cfg, 64, "float32")
    pre = profile_shapes(specs["prefill"], profile_axes("prefill", 4, 64, opt_batch=2, opt_prompt=16))
    assert pre == {"input_ids": [[1, 1], [2, 16], [4, 64]], "lengths": [[1], [2], [4]]}
    dec = profile_shapes(specs["decode"], profile_axes("decode", 4, 64))
    assert dec["input_ids"] == [[1], [1], [4]] and dec["position"] == [[1], [1], [4]]
    k0 = dec["past_key.0"]
    assert k0 == [[1, cfg.n_kv_heads, 64, cfg.head_dim], [1, cfg.n_kv_heads, 64, cfg.head_dim],
                  [4, cfg.n_kv_heads, 64, cfg.head_dim]]
    assert set(dec) == set(specs["decode"].input_names)
    for name, (lo, opt, hi) in dec.items():  # only the batch dimension varies in decode
        assert lo[1:] == opt[1:] == hi[1:], name


def test_profile_opt_clamped_to_range():
    axes = profile_axes("prefill", 2, 32, opt_batch=8, opt_prompt=1000)
    assert axes == {"batch": (1, 2, 2), "prompt": (1, 32, 32)}


# -- with a real (tiny) export: function stripping, manifest section, graph feeds on ORT ----------
@pytest.fixture(scope="module")
def tiny_export(tiny_exports):
    return tiny_exports["plt"][1]


@pytest.mark.slow
def test_strip_op_function_leaves_bare_plugin_nodes(tiny_export):
    import onnx

    from plt_deploy.ops import contract

    model = onnx.load(str(tiny_export / "decode.onnx"), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type == contract.OP_NAME]
    assert nodes and all({a.name for a in n.attribute} >= {"plugin_namespace", "plugin_version"} for n in nodes)
    assert strip_op_function(model) == 1
    assert not any(f.name == contract.OP_NAME for f in model.functions)
    assert strip_op_function(model) == 0


@pytest.mark.slow
def test_trt_section_round_trip_keeps_export_valid(tiny_export, tmp_path):
    from plt_deploy.export.manifest import read_manifest

    folder = tmp_path / "copy"
    shutil.copytree(tiny_export, folder)
    (folder / "tensorrt").mkdir()
    (folder / "tensorrt" / "timing.cache").write_bytes(b"mutable")  # a subfolder: not in the export's file list
    write_trt_section(folder, _section())
    m = read_manifest(folder)  # every sha256 still verifies
    assert "tensorrt/timing.cache" not in m.data["files"] and "timing.cache" not in m.data["files"]
    assert plan_check.trt_section(m.data)["compute_capability"] == "8.9"
    (folder / "tensorrt" / "timing.cache").write_bytes(b"changed")
    read_manifest(folder)


@pytest.mark.slow
def test_graph_feeds_run_on_onnxruntime(tiny_export):
    from polygraphy.comparator import Comparator

    from plt_deploy.check.trt import graph_feeds, onnxrt_runners
    from plt_deploy.export.manifest import read_manifest

    m = read_manifest(tiny_export)
    runners = onnxrt_runners(tiny_export)
    for graph in m.graphs:
        feeds = graph_feeds(m, graph, batch=2, cache_len=m.max_seq, prompt=5, iterations=1)
        results = Comparator.run([runners[graph]], data_loader=feeds)
        (_, iters), = results.items()
        assert set(iters[0].keys()) == set(m.graphs[graph].output_names)


# -- GPU ------------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(GPU_REASON is not None, reason=GPU_REASON or "")


@pytest.fixture(scope="module")
def tiny_engines(tiny_export, tmp_path_factory):
    from plt_deploy.build.engine import build_engines

    folder = tmp_path_factory.mktemp("trt-engines") / "export"
    shutil.copytree(tiny_export, folder)
    build_engines(folder, log=lambda *_: None)
    return folder


@pytest.mark.gpu
@gpu
def test_gpu_build_records_platform(tiny_engines):
    import torch

    from plt_deploy.export.manifest import read_manifest

    sec = plan_check.trt_section(read_manifest(tiny_engines).data)
    major, minor = torch.cuda.get_device_capability()
    assert sec["compute_capability"] == f"{major}.{minor}"
    assert sec["plugin"]["sha256"] and all(e["plugin_layers"] > 0 for e in sec["engines"].values())
    assert json.loads((tiny_engines / "manifest.json").read_text())["tensorrt"]["version"] == sec["version"]


@pytest.mark.gpu
@gpu
def test_gpu_graphs_match_onnxruntime(tiny_engines):
    from plt_deploy.check.trt import compare_graphs

    report = compare_graphs(tiny_engines)
    assert report["passed"], {g: [r for r in v["results"] if not r["passed"]][:3] for g, v in report["graphs"].items()}


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("reference", ["torch", "onnxruntime"])
def test_gpu_backend_matches(tiny_engines, reference, monkeypatch):
    from plt_deploy.backends import load_backend
    from plt_deploy.check.parity import compare_backends
    from plt_deploy.export.manifest import read_manifest

    m = read_manifest(tiny_engines)
    ref = load_backend(reference, m.data["model"]["source"] if reference == "torch" else str(tiny_engines))
    with load_backend("tensorrt", str(tiny_engines)) as trt_be:
        report = compare_backends(ref, trt_be, steps=12, batch=2, dtype="float32")
    assert report["passed"], report["summary"]


@pytest.mark.gpu
@gpu
def test_gpu_decode_is_graph_captured_and_deterministic(tiny_engines):
    import torch

    from plt_deploy.backends import load_backend

    with load_backend("tensorrt", str(tiny_engines)) as be:
        outs = []
        for cuda_graph in (True, False):
            be.cuda_graph = cuda_graph
            s = be.start(2, 32)
            first = s.prefill(torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]]), torch.tensor([4, 2]))
            steps = [s.decode(torch.tensor([11, 12])) for _ in range(6)]
            assert (s._graphs is not None) == cuda_graph, s.cuda_graph_error
            outs.append(torch.stack([first, *steps]))
        torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=0)


def test_decode_outputs_pair_with_inputs_for_ping_pong():
    """Every decode output but logits has an input of the same shape the runner alternates it with."""
    from plt_deploy.backends.trt_backend import _past_name, _shape

    cfg = PLTConfig.from_name("tiny")
    spec = io_spec.graph_specs(cfg, 64, "float16")["decode"]
    inputs = {t.name: t for t in spec.inputs}
    outs = [o for o in spec.outputs if o.role != "logits"]
    assert outs and len({_past_name(o) for o in outs}) == len(outs)
    for o in outs:
        past = inputs[_past_name(o)]
        assert _shape(past, 3, 64) == _shape(o, 3, 64) and past.dtype == o.dtype
    assert any(o.role == "carry" and o.alias_of is None for o in outs)  # the carry is never in place
