"""TensorRT build + runner: the CPU-checkable parts, and the GPU path behind `-m gpu`.

CPU: the one-line errors of `build` and `--backend tensorrt`, plugin-library discovery errors,
the exact creator lookup, the plugin-layer rule (one G-SWA PLUGIN_V3 layer per node, no other
plugin layer), no ENABLE_PLUGIN_OVERRIDE anywhere, the refusal of TensorRT < 10.15 (opset-23 ops),
the plan checks (TensorRT version / compute capability / plugin sha256 / engine files) over
manifest dicts, optimisation-profile shapes, --workspace parsing, the timing-cache reuse rule, the
G-SWA nodes' plugin attributes, the CUDA-major check and stages of gpu-check.sh, the dependency floors and extras, the manifest's
"tensorrt" section round trip and the graph-level feeds on ONNX Runtime. GPU (skipped here with
availability's one-line reason): build engines for a tiny export (exactly the G-SWA plugin
layers), registration in the real registry, parity against ONNX Runtime and torch, CUDA-graph
decode.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from plt_deploy.build import availability, plan_check
from plt_deploy.build.engine import (GSWA_LAYER, PluginLayer, check_plugin_layers, parse_size, profile_axes,
                                     profile_shapes, timing_cache_bytes, write_trt_section)
from plt_deploy.build.plugin import ENV_VAR, creator_registered, find_plugin
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


@pytest.mark.slow
@pytest.mark.skipif(GPU_REASON is None, reason="TensorRT and a GPU are present here")
def test_generate_backend_tensorrt_without_tensorrt_is_one_line(tiny_exports, tmp_path, capsys):
    """An export with engines recorded (the artifact checks pass) on a machine without TensorRT."""
    folder = tmp_path / "export"
    shutil.copytree(tiny_exports["plt"][1], folder)
    write_trt_section(folder, _section())
    code, out, err = run_cli(["generate", "--backend", "tensorrt", "--model", str(folder), "--prompt", "hi"], capsys)
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


class _Registry:
    """Stands in for the duck-typed registry argument of creator_registered (no TensorRT here):
    creators keyed by the (name, version, namespace) they were registered under."""

    def __init__(self, registered: dict, all_creators=()):
        self.registered, self.all_creators = registered, list(all_creators)

    def get_creator(self, name, version, namespace=""):
        return self.registered.get((name, version, namespace))


def test_creator_registered_is_the_exact_lookup():
    from plt_deploy.ops import contract

    key = (contract.OP_NAME, str(contract.OP_VERSION), contract.PLUGIN_NAMESPACE)
    assert creator_registered(_Registry({key: object()}))
    # REGISTER_TENSORRT_PLUGIN's case: registered under "", the creator itself reporting namespace "plt".
    reports_plt = type("Creator", (), {"name": contract.OP_NAME, "plugin_version": str(contract.OP_VERSION),
                                       "plugin_namespace": contract.PLUGIN_NAMESPACE})()
    assert not creator_registered(_Registry({(key[0], key[1], ""): reports_plt}, [reports_plt]))
    assert not creator_registered(_Registry({(key[0], "0", key[2]): object()}))


# -- plugin layers of a parsed network ------------------------------------------------------------
SCATTER = PluginLayer("PLUGIN_V2", "ScatterElements", "1", "")


def test_plugin_layers_exactly_one_gswa_per_node():
    check_plugin_layers([GSWA_LAYER] * 2, 2, "decode.onnx")
    check_plugin_layers([], 0, "vanilla.onnx")
    with pytest.raises(ArtifactError, match=r"1 GatedSlidingWindowAttention plugin layer\(s\) for 2 .*inlined"):
        check_plugin_layers([GSWA_LAYER], 2, "decode.onnx")
    with pytest.raises(ArtifactError, match=r"3 GatedSlidingWindowAttention plugin layer\(s\) for 2"):
        check_plugin_layers([GSWA_LAYER] * 3, 2, "decode.onnx")  # ==, not >=


@pytest.mark.parametrize("other", [
    SCATTER,  # ENABLE_PLUGIN_OVERRIDE + the standard plugin library: ScatterElements as a legacy plugin
    PluginLayer("PLUGIN_V3", GSWA_LAYER.name, GSWA_LAYER.version, ""),  # wrong namespace
    PluginLayer("PLUGIN_V2", GSWA_LAYER.name, GSWA_LAYER.version, GSWA_LAYER.namespace),  # not IPluginV3
    PluginLayer("PLUGIN_V3", GSWA_LAYER.name, "0", GSWA_LAYER.namespace),  # another op version
])
def test_plugin_layers_refuse_any_other_plugin(other):
    with pytest.raises(ArtifactError, match="plugin layers that are not G-SWA") as exc:
        check_plugin_layers([GSWA_LAYER, GSWA_LAYER, other], 2, "decode.onnx")
    assert other.name in str(exc.value) and "\n" not in str(exc.value)


def test_no_parser_plugin_override_flag_anywhere():
    """OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE turns every matching ONNX node into a plugin: never set it."""
    import ast

    root = Path(__file__).resolve().parents[1] / "plt_deploy"
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            assert not (isinstance(node, ast.Attribute) and node.attr == "ENABLE_PLUGIN_OVERRIDE"), path
            assert not (isinstance(node, ast.Constant) and node.value == "ENABLE_PLUGIN_OVERRIDE"), path
            assert not (isinstance(node, ast.Attribute) and node.attr == "set_flag"
                        and "Parser" in ast.unparse(node.value)), path


def test_timing_cache_reused_only_on_the_same_platform(tmp_path):
    cache = tmp_path / "timing.cache"
    logs = []
    assert timing_cache_bytes(cache, None, "10.13.0.35", "8.9", logs.append) == b""
    cache.write_bytes(b"tactics")
    assert timing_cache_bytes(cache, None, "10.13.0.35", "8.9", logs.append) == b"tactics"
    same = {"version": "10.13.0.35", "compute_capability": "8.9"}
    assert timing_cache_bytes(cache, same, "10.13.0.35", "8.9", logs.append) == b"tactics"
    assert timing_cache_bytes(cache, same, "10.14.1.48", "8.9", logs.append) == b""
    assert timing_cache_bytes(cache, same, "10.13.0.35", "9.0", logs.append) == b""
    assert len(logs) == 2 and "ignoring timing cache" in logs[0]


# -- gpu-check.sh's CUDA check, dependencies ------------------------------------------------------
NVCC_13 = "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 13.0, V13.0.48\n"


def test_cuda_toolkit_must_match_tensorrt_cuda_major():
    from plt_deploy.errors import BackendUnavailable

    assert availability.nvcc_cuda_version(NVCC_13) == (13, 0)
    assert availability.trt_cuda_major(["tensorrt", "tensorrt-cu13", "tensorrt_cu13_libs", "numpy"]) == 13
    assert availability.trt_cuda_major(["tensorrt-cu12-libs", "tensorrt-cu13"]) is None  # ambiguous
    assert availability.cuda_toolkit_line(NVCC_13, ["tensorrt-cu13-bindings"]) == \
        "CUDA toolkit 13.0 matches TensorRT's CUDA 13"
    with pytest.raises(BackendUnavailable, match=r"nvcc is CUDA 13.0 but TensorRT is built for CUDA 12") as exc:
        availability.cuda_toolkit_line(NVCC_13, ["tensorrt-cu12"])
    assert "\n" not in str(exc.value)
    assert "unknown" in availability.cuda_toolkit_line(NVCC_13, [])


GPU_CHECK = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check.sh"


def test_gpu_check_script_stages_and_dtypes(tmp_path):
    """gpu-check.sh: valid bash, one PASS/FAIL line per stage, no float32 assumption, CUDA-major stage."""
    bash = shutil.which("bash") or pytest.skip("bash not found")
    subprocess.run([bash, "-n", str(GPU_CHECK)], check=True)
    text = GPU_CHECK.read_text()
    for name in ("install", "tensorrt", "cuda-toolkit", "plugin", '"$name:export"', '"$name:engines"',
                 '"$name:check"', '"KV bytes on device == formula"',
                 '"decode step time flat in T for cache writes"', "pytest-gpu", "generate", "bench"):
        assert re.search(rf"\bstage {re.escape(name)} ", text), name
    assert "cuda_toolkit_line" in text and not re.search(r"-float32\b", text.replace(":-float32", ""))
    proc = subprocess.run([bash, str(GPU_CHECK)], capture_output=True, text=True,
                          env={**os.environ, "DTYPES": "float16 int8", "OUT": str(tmp_path)})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["gpu-check: DTYPES: unknown dtype 'int8' (float32, float16, bfloat16)"]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="Python < 3.11 has no tomllib")

    return tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_polygraphy_floor_has_simple_compare_func():
    """check/ imports SimpleCompareFunc, first in Polygraphy 0.53 (TensorRT's repo and NGC carry 0.49)."""
    from polygraphy.comparator import SimpleCompareFunc  # noqa: F401  (the installed one has it)

    dep = next(d for d in _pyproject()["project"]["dependencies"] if d.startswith("polygraphy"))
    floor = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", dep).group(1).split("."))
    assert floor >= (0, 53), dep


def test_extras_install_what_the_code_imports():
    import ast

    project = _pyproject()["project"]
    gpu = [re.split(r"[<>=!\[ ]", d)[0].lower() for d in project["optional-dependencies"]["gpu"]]
    assert "onnxruntime-gpu" not in gpu  # same module as the core onnxruntime: the two conflict
    module = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "polygraphy": "polygraphy", "torch": "torch",
              "numpy": "numpy", "click": "click", "safetensors": "safetensors", "rich": "rich",
              "tokenizers": "tokenizers", "onnx": "onnx", "onnxscript": "onnxscript"}
    imported = set()
    for path in (Path(__file__).resolve().parents[1] / "plt_deploy").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    for dist in [re.split(r"[<>=!\[ ]", d)[0].lower() for d in project["dependencies"]] + gpu:
        assert dist in module, f"{dist}: add its module name to this test"
        assert module[dist] in imported, f"{dist} is a dependency but plt_deploy never imports {module[dist]}"


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


def test_version_tuple():
    assert availability.version_tuple("10.7.0.23") == (10, 7, 0, 23)
    assert availability.version_tuple("10.8.0.post1") == (10, 8, 0)


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
    assert pre["input_ids"] == [[1, 1], [2, 16], [4, 64]] and pre["lengths"] == pre["start_pos"] == [[1], [2], [4]]
    # the state it extends sits at the fixed cache length (KVCacheUpdate needs it static), like decode's
    assert pre["past_key.0"] == [[b, cfg.n_kv_heads, 64, cfg.head_dim] for b in (1, 2, 4)]
    assert set(pre) == set(specs["prefill"].input_names)
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
    assert axes == {"batch": (1, 2, 2), "prompt": (1, 32, 32), "max_seq": (32, 32, 32)}


# -- with a real (tiny) export: function stripping, manifest section, graph feeds on ORT ----------
@pytest.fixture(scope="module")
def tiny_export(tiny_exports):
    return tiny_exports["plt"][1]


@pytest.mark.slow
def test_gswa_nodes_carry_the_parser_lookup_attributes(tiny_export):
    """The ONNX parser maps a node to the creator (op_type, plugin_version, plugin_namespace)."""
    import onnx

    from plt_deploy.ops import contract

    for graph in ("prefill", "decode"):
        model = onnx.load(str(tiny_export / f"{graph}.onnx"), load_external_data=False)
        nodes = [n for n in model.graph.node if n.op_type == contract.OP_NAME]
        assert nodes, graph
        for n in nodes:
            attrs = {a.name: a.s.decode() for a in n.attribute if a.name.startswith("plugin_")}
            assert attrs == {"plugin_namespace": GSWA_LAYER.namespace, "plugin_version": GSWA_LAYER.version}, attrs


@pytest.mark.slow
def test_parser_support_refuses_opset23_ops_on_old_tensorrt(tiny_exports):
    """Exports use ONNX Attention (TensorRT's parser: 10.14+) and RMSNormalization (10.15+): an older
    TensorRT is refused before parsing, in one line naming the ops and the version to install."""
    import onnx

    from plt_deploy.build.engine import check_parser_support

    cases = [("vanilla", "decode.onnx", "10.13.0.35", "Attention, RMSNormalization, TensorScatter", "10.15"),
             ("plt", "prefill.onnx", "10.13.0.35", "Attention, RMSNormalization, TensorScatter", "10.15"),
             ("plt", "decode.onnx", "10.14.1.48", "RMSNormalization, TensorScatter", "10.15")]  # loop 1: G-SWA row 0
    for mode, graph, version, ops, need in cases:
        model = onnx.load(str(tiny_exports[mode][1] / graph), load_external_data=False)
        with pytest.raises(ArtifactError) as exc:
            check_parser_support(model, version, graph)
        msg = str(exc.value)
        assert f"uses ONNX {ops} (opsets 23-24)" in msg and f"from TensorRT {need}; this is TensorRT {version}" in msg, msg
        assert "\n" not in msg
        check_parser_support(model, "10.15.1.29", graph)
        check_parser_support(model, "11.1.0.5", graph)



@pytest.mark.slow
def test_parser_support_refuses_what_the_parser_cannot_import(tiny_exports):
    """The exports' Attention nodes stay inside onnx-tensorrt's documented subset (no past_key /
    past_value / nonpad_kv_seqlen inputs, one output, no softcap) and their opset <= 24."""
    import onnx

    from plt_deploy.build.engine import check_parser_support

    model = onnx.load(str(tiny_exports["vanilla"][1] / "decode.onnx"), load_external_data=False)
    check_parser_support(model, "10.15.1.29", "decode.onnx")  # what the exporter writes today passes
    node = next(n for n in model.graph.node if n.op_type == "Attention")
    node.input.extend(["", "", "position"])  # nonpad_kv_seqlen
    with pytest.raises(ArtifactError, match=r"Attention node .* uses nonpad_kv_seqlen, which TensorRT's ONNX parser"):
        check_parser_support(model, "10.15.1.29", "decode.onnx")
    del node.input[4:]
    next(o for o in model.opset_import if o.domain == "").version = 25
    with pytest.raises(ArtifactError, match=r"opset 25; TensorRT's ONNX parser imports opsets up to 24"):
        check_parser_support(model, "11.1.0.5", "decode.onnx")


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

    m = read_manifest(tiny_engines)
    sec = plan_check.trt_section(m.data)
    major, minor = torch.cuda.get_device_capability()
    assert sec["compute_capability"] == f"{major}.{minor}"
    assert sec["plugin"]["sha256"]
    for graph, e in sec["engines"].items():  # exactly the G-SWA nodes became plugin layers, nothing else
        assert e["plugin_layers"] == m.data["graphs"][graph]["op_nodes"] > 0, (graph, e)
    assert json.loads((tiny_engines / "manifest.json").read_text())["tensorrt"]["version"] == sec["version"]


@pytest.mark.gpu
@gpu
def test_gpu_plugin_registered_once_under_plt(tiny_engines):
    """dlopen registered exactly one creator, found by the parser's exact lookup; loadLibrary then
    refuses both libraries (the self-registering one has no getCreators; the dynamic one's creator is
    already registered): still one creator."""
    import tensorrt as trt

    from plt_deploy.build.plugin import load_plugin
    from plt_deploy.ops import contract

    loaded = load_plugin(trt)
    registry = trt.get_plugin_registry()
    assert loaded.how in ("dlopen", "already-registered") and creator_registered(registry)
    named = [c for c in registry.all_creators if c.name == contract.OP_NAME]
    assert len(named) == 1 and named[0].plugin_namespace == contract.PLUGIN_NAMESPACE
    assert registry.load_library(str(loaded.path)) is None
    dynamic = loaded.path.with_name("libplt_trt_plugins_dynamic.so")
    if dynamic.is_file():
        assert registry.load_library(str(dynamic)) is None
    assert len([c for c in registry.all_creators if c.name == contract.OP_NAME]) == 1


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
            assert (s._graph is not None) == cuda_graph, s.cuda_graph_error
            outs.append(torch.stack([first, *steps]))
        torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=0)


@pytest.mark.gpu
@gpu
def test_gpu_one_buffer_per_cache_bytes_equal_formula(tiny_engines):
    """Every cache output is aliased by the engine (IKVCacheUpdateLayer) and bound to its input's
    buffer: one device buffer per cache, KV bytes = cache.kv_bytes_formula at the engine's length."""
    from plt_deploy.check.kv_inplace import kv_bytes_on_device

    r = kv_bytes_on_device(tiny_engines)
    assert r["passed"] and r["allocated"] == r["formula"] and not r["not_shared"], r


def test_decode_profile_fixes_the_cache_length(tiny_export):
    """The decode profile fixes max_seq (min = opt = max), which pin_fixed_axes makes static in the
    network: IKVCacheUpdateLayer needs a static cache sequence dim. Prefill keeps its dynamic axes."""
    from plt_deploy.build.engine import profile_axes
    from plt_deploy.export.manifest import read_manifest

    m = read_manifest(tiny_export)
    dec, pre = profile_axes("decode", 4, m.max_seq), profile_axes("prefill", 4, m.max_seq)
    assert dec["max_seq"] == pre["max_seq"] == (m.max_seq,) * 3  # both graphs write the caches in place
    assert all(lo < hi for axis, (lo, _, hi) in pre.items() if axis != "max_seq")
    caches = [t for t in m.graphs["decode"].inputs if t.role in ("key", "value", "local_key", "local_value")]
    assert caches and all(len(t.shape) == 4 and t.shape[2] in ("max_seq", m.config.window) for t in caches)
