"""The TensorRT plugin's project: generated YAML contract, sources agreeing with contract.py, CMake build.

Always (CPU CI): the YAML and the C++ sources follow contract.py, the build options (architectures,
link policy, registration) are the documented ones, and CMake builds the kernels.

With TensorRT headers (TENSORRT_INCLUDE_DIR = one include directory, or several separated by
os.pathsep, e.g. a 10.x and an 11.x one; skipped with a one-line reason otherwise, CI has none):
for each header set the plugin library builds with -Wall -Wextra without a warning, exports exactly
getCreators and setLoggerFinder (libplt_trt_plugins_dynamic.so, for loadLibrary) or nothing
(libplt_trt_plugins.so, which registers on dlopen), has no NEEDED libnvinfer or libcudart (and no
RUNPATH), leaves getPluginRegistry weak, and tests/cpp/plugin_load_check.cpp drives them on the CPU:
dlopen without libnvinfer (the self-registering one then says it registered nothing), getCreators,
createPlugin (build and runtime phases), configurePlugin's workspace sizing and failure, enqueue's
dims from inputDesc, its workspace check, and the fallback for plans without a workspace size.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from plt_deploy.ops import contract, plugin_yaml

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
GSWA = PLUGINS / "gatedSlidingWindowAttentionPlugin"
LOAD_CHECK = ROOT / "tests" / "cpp" / "plugin_load_check.cpp"
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
COMMON = PLUGINS / "common"
PLUGIN_CXX = [COMMON / "registerOnLoad.cpp", COMMON / "loadLibraryEntryPoints.cpp", COMMON / "pluginCreators.cpp",
              COMMON / "pluginLogging.cpp", COMMON / "pluginRegistry.cpp", GSWA / "gatedSlidingWindowAttentionPlugin.cpp"]
LIBS = {"on_load": "libplt_trt_plugins.so", "dynamic": "libplt_trt_plugins_dynamic.so"}
BUILD_ARCH = "75-real"  # the oldest default architecture (T4); test_kernels.py compiles the others


def trt_include_dirs() -> list[Path]:
    """TENSORRT_INCLUDE_DIR (one or more, os.pathsep-separated) or TENSORRT_ROOT/include, with NvInferRuntime.h."""
    raw = os.environ.get("TENSORRT_INCLUDE_DIR") or (
        str(Path(os.environ["TENSORRT_ROOT"]) / "include") if os.environ.get("TENSORRT_ROOT") else "")
    return [Path(p) for p in raw.split(os.pathsep) if p and (Path(p) / "NvInferRuntime.h").exists()]


NO_HEADERS = "TENSORRT_INCLUDE_DIR not set (or no NvInferRuntime.h there): plugin library not built"
HEADER_DIRS = trt_include_dirs()
headers = pytest.mark.parametrize("include_dir", HEADER_DIRS or [pytest.param(None, marks=pytest.mark.skip(
    reason=NO_HEADERS))], ids=lambda p: p.name if p else "no-headers")


def _trt_major(include_dir: Path) -> int:
    text = (include_dir / "NvInferVersion.h").read_text()
    m = re.search(r"#define\s+(?:TRT_MAJOR_ENTERPRISE|NV_TENSORRT_MAJOR)\s+(\d+)", text)
    return int(m.group(1))


def _nvcc() -> str:
    nvcc = shutil.which("nvcc") or str(CUDA_HOME / "bin" / "nvcc")
    if not Path(nvcc).exists():
        pytest.skip(f"nvcc not found (PATH or {CUDA_HOME}/bin)")
    return nvcc


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} (binutils) not found")
    return path


# ---- contract ------------------------------------------------------------------------------------------

def test_yaml_is_generated_from_contract():
    committed = plugin_yaml.YAML_PATH.read_text()
    assert committed == plugin_yaml.render(), (
        f"{plugin_yaml.YAML_PATH} is stale: run `python -m plt_deploy.ops.plugin_yaml` and commit it")


def test_yaml_parses_and_lists_contract():
    yaml = pytest.importorskip("yaml", reason="PyYAML not installed (optional; the render test still runs)")
    doc = yaml.safe_load(plugin_yaml.render())
    v = doc["versions"][str(contract.OP_VERSION)]
    assert doc["name"] == contract.OP_NAME and doc["namespace"] == contract.PLUGIN_NAMESPACE
    assert v["inputs"] == [s.name for s in contract.INPUTS]
    assert v["outputs"] == [s.name for s in contract.OUTPUTS]
    assert v["attributes"] == [a.name for a in contract.ATTRIBUTES]
    assert v["input_shapes"]["query"] == list(contract.INPUTS[0].shape)
    assert "key_local_2 == key_global_1" in v["input_dim_constraints"]


FIELD_TYPE = {"INT": "kINT32", "FLOAT": "kFLOAT32"}


def test_plugin_sources_follow_contract():
    """Name/version/namespace, input order and attribute fields in the C++ match contract.py.

    getFieldsToSerialize writes the ONNX attributes plus workspace_bytes (the workspace TensorRT
    allocates, fixed at build time; the creator's field list, which the ONNX parser reads, omits it)."""
    header = (GSWA / "gatedSlidingWindowAttentionPlugin.h").read_text()
    source = (GSWA / "gatedSlidingWindowAttentionPlugin.cpp").read_text()
    assert f'kGSWA_PLUGIN_NAME{{"{contract.OP_NAME}"}}' in header
    assert f'kGSWA_PLUGIN_VERSION{{"{contract.OP_VERSION}"}}' in header
    assert f'kGSWA_PLUGIN_NAMESPACE{{"{contract.PLUGIN_NAMESPACE}"}}' in header
    names = re.search(r"kINPUT_NAMES\[kNB_INPUTS\] = \{(.*?)\};", source, re.S).group(1)
    assert re.findall(r'"(\w+)"', names) == [s.name for s in contract.INPUTS]
    ranks = re.search(r"kRANKS\[kNB_INPUTS\] = \{(.*?)\};", source).group(1)
    assert [int(x) for x in ranks.split(",")] == [len(s.shape) for s in contract.INPUTS]
    declared = re.findall(r'mFieldNames\.emplace_back\("(\w+)", nullptr, PluginFieldType::(\w+), 1\)', source)
    serialized = re.findall(r'mFields\.emplace_back\("(\w+)", &mAttrs\.\w+, PluginFieldType::(\w+), 1\)', source)
    expected = [(a.name, FIELD_TYPE[a.type]) for a in contract.ATTRIBUTES]
    assert declared == expected and serialized == expected
    assert re.search(r"mFields\.emplace_back\(kWORKSPACE_FIELD, &mWorkspaceBytes, PluginFieldType::kINT64, 1\)", source)
    assert 'kWORKSPACE_FIELD{"workspace_bytes"}' in header


# ---- build options (CPU, always) ------------------------------------------------------------------------

def _default_architectures() -> list[str]:
    text = (PLUGINS / "CMakeLists.txt").read_text()
    return re.search(r'set\(CMAKE_CUDA_ARCHITECTURES "([^"]+)"', text).group(1).split(";")


def test_default_architectures_include_t4():
    archs = _default_architectures()
    assert "75-real" in archs, archs  # T4 (sm_75), the commonest cloud inference GPU
    assert {"80-real", "86-real", "89-real"} <= set(archs) and "90" in archs  # + compute_90 PTX for newer GPUs


def _code(path: Path) -> str:
    return re.sub(r"//.*", "", re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S))


def test_registration_is_explicit_and_single():
    """One creator object per plugin (pluginCreators), handed out by two libraries: the dlopen one
    registers it under its own namespace from a static initialiser and exports no entry point; the
    loadLibrary one has no static initialiser and its getCreators always returns the creators (never an
    empty list). No REGISTER_TENSORRT_PLUGIN (it registers under "")."""
    on_load, dynamic, creators = (_code(COMMON / f) for f in ("registerOnLoad.cpp", "loadLibraryEntryPoints.cpp",
                                                               "pluginCreators.cpp"))
    for code in (on_load, dynamic, creators):
        assert "REGISTER_TENSORRT_PLUGIN" not in code
    assert re.search(r"registerCreator\(\*creator, creator->getPluginNamespace\(\)\)", on_load)
    assert "PLT_PLUGIN_EXPORT" not in on_load and "getCreators" not in on_load
    assert "registerCreator" not in dynamic and "struct" not in dynamic  # no static initialiser
    assert re.search(r"return plt::plugin::pluginCreators\(nbCreators\);", dynamic)
    assert creators.count("GatedSlidingWindowAttentionPluginCreator sGswaCreator") == 1  # one creator object
    cmake = (PLUGINS / "CMakeLists.txt").read_text()
    assert re.search(r"add_library\(plt_trt_plugins SHARED common/registerOnLoad.cpp\)", cmake)
    assert re.search(r"add_library\(plt_trt_plugins_dynamic SHARED common/loadLibraryEntryPoints.cpp\)", cmake)
    assert re.search(r'target_link_options\(plt_trt_plugins PRIVATE "LINKER:-z,nodelete"\)', cmake)


def test_every_loading_path_is_documented_and_checked():
    """plugins/README.md lists every loading path with its command, and gpu-check.sh has a stage for each."""
    readme = (PLUGINS / "README.md").read_text()
    script = (ROOT / "scripts" / "gpu-check.sh").read_text()
    for needle in ("ctypes.CDLL", "polygraphy run", "--plugins", "--staticPlugins", "--dynamicPlugins",
                   "--setPluginsToSerialize", "load_library", "backend-config=tensorrt,plugins="):
        assert needle in readme, needle
    stages = set(re.findall(r"stage (plugin-load:[\w-]+)", script))
    assert stages >= {"plugin-load:ctypes", "plugin-load:load_library", "plugin-load:both-libraries",
                      "plugin-load:polygraphy", "plugin-load:trtexec-static", "plugin-load:trtexec-dynamic",
                      "plugin-load:serialized-library", "plugin-load:triton-plugins", "plugin-load:logger"}, stages


def test_link_policy_is_one():
    """Never libnvinfer, always the static CUDA runtime (plugins/README.md, docs/tensorrt.md say the same)."""
    text = (PLUGINS / "CMakeLists.txt").read_text()
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert not re.search(r"find_library\([^)]*nvinfer|target_link_libraries\([^)]*nvinfer", code, re.I | re.S)
    assert "CUDA::cudart_static" in code and not re.search(r"CUDA::cudart\b(?!_)", code)
    sub = (GSWA / "CMakeLists.txt").read_text()
    assert "CUDA::cudart_static" in sub and not re.search(r"CUDA::cudart\b(?!_)", sub)
    for doc in (PLUGINS / "README.md", ROOT / "docs" / "tensorrt.md"):
        text = doc.read_text()
        assert "does not link libnvinfer" in text and "cudart_static" in text, doc
        assert "links it where found" not in text and "where found" not in text, doc


# ---- CMake build -----------------------------------------------------------------------------------------

def _cmake_build(build: Path, include_dir: Path | None) -> tuple[Path, str]:
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not found")
    configure = [cmake, "-S", PLUGINS, "-B", build, f"-DCMAKE_CUDA_ARCHITECTURES={BUILD_ARCH}",
                 f"-DCMAKE_CUDA_COMPILER={_nvcc()}", f"-DTENSORRT_INCLUDE_DIR={include_dir or ''}"]
    out = _run(configure, env={**os.environ, "TENSORRT_ROOT": "", "TENSORRT_INCLUDE_DIR": ""})
    built = _run([cmake, "--build", build, "-j2"])
    return build, out.stdout + built.stdout + built.stderr


@pytest.fixture(scope="module")
def kernels_build(tmp_path_factory):
    """plugins/ without TensorRT headers: the kernels only (what CPU CI builds)."""
    return _cmake_build(tmp_path_factory.mktemp("plugins_kernels"), None)[0]


_PLUGIN_BUILDS: dict[Path, dict[str, Path]] = {}


@pytest.fixture
def plugin_libs(include_dir, tmp_path_factory) -> dict[str, Path]:
    """{"on_load": libplt_trt_plugins.so, "dynamic": libplt_trt_plugins_dynamic.so} built against
    `include_dir` (once per header set)."""
    if include_dir not in _PLUGIN_BUILDS:
        build, _ = _cmake_build(tmp_path_factory.mktemp(f"plugins_{include_dir.parent.name}"), include_dir)
        libs = {kind: build / name for kind, name in LIBS.items()}
        for lib in libs.values():
            assert lib.exists(), f"CMake found {include_dir}/NvInferRuntime.h but built no {lib.name}"
        _PLUGIN_BUILDS[include_dir] = libs
    return _PLUGIN_BUILDS[include_dir]


def test_kernels_library_builds(kernels_build):
    libs = list(kernels_build.rglob("libplt_gswa_kernels.a"))
    assert libs and libs[0].stat().st_size > 0
    assert not [p for p in kernels_build.glob("libplt_trt_plugins*.so")]


@headers
def test_plugin_compiles_without_warnings(include_dir):
    gxx = shutil.which("g++") or pytest.skip("g++ not found")
    for src in PLUGIN_CXX:  # -Werror: any warning fails; TensorRT's headers are system headers, as in CMake
        _run([gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-isystem", include_dir,
              "-isystem", CUDA_HOME / "include", "-I", PLUGINS, "-I", GSWA, src])


@headers
@pytest.mark.parametrize("kind, exports", [("dynamic", ["getCreators", "setLoggerFinder"]), ("on_load", [])])
def test_plugin_library_exports_and_dependencies(plugin_libs, kind, exports):
    nm, readelf = _tool("nm"), _tool("readelf")
    lib = plugin_libs[kind]
    exported = _run([nm, "-D", "--defined-only", lib]).stdout
    functions = sorted(re.findall(r"^\S+ T (\S+)$", exported, re.M))
    assert functions == exports, exported
    undefined = _run([nm, "-D", "--undefined-only", lib]).stdout
    assert re.search(r"^\s+w getPluginRegistry$", undefined, re.M), "getPluginRegistry must be weak:\n" + undefined
    assert not re.search(r"^\s+\w getLogger$", undefined, re.M), "getLogger is looked up in libnvinfer only"
    dynamic = _run([readelf, "-d", lib]).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic)
    assert needed and not [n for n in needed if n.startswith(("libnvinfer", "libcudart"))], needed
    assert "RPATH" not in dynamic and "RUNPATH" not in dynamic, dynamic
    assert ("NODELETE" in dynamic) == (kind == "on_load"), dynamic  # -z nodelete on the self-registering one


@headers
def test_plugin_entry_points_on_cpu(include_dir, plugin_libs, tmp_path):
    gxx = shutil.which("g++") or pytest.skip("g++ not found")
    exe = tmp_path / "plugin_load_check"
    _run([gxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-isystem", include_dir, "-isystem", CUDA_HOME / "include",
          LOAD_CHECK, "-o", exe, "-ldl"])
    proc = subprocess.run([str(exe), str(plugin_libs["dynamic"]), str(plugin_libs["on_load"])], capture_output=True,
                          text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    out = proc.stdout
    assert proc.returncode == 0 and out.rstrip().endswith("all ok"), out + proc.stderr
    # No TensorRT in this process: the self-registering library registered nothing and said why.
    assert "[plt_trt_plugins] no TensorRT runtime is loaded in this process: nothing registered" in proc.stderr
    assert "ok runtime_accepts_missing_workspace" in out and "ok runtime_accepts_unset_workspace" in out, out
    if "skip enqueue_uses_given_workspace" not in out:  # no CUDA driver here: the fallback ran up to the launch
        assert out.count("ok enqueue_unset_trusts_given_workspace") == 2, out
        assert out.count("ok enqueue_unset_null_workspace_no_split") == 2, out
    creator = re.search(r"^creator (\S+) (\S+) (\S+)$", out, re.M).groups()
    assert creator == (contract.OP_NAME, str(contract.OP_VERSION), contract.PLUGIN_NAMESPACE)
    fields = re.search(r"^fields (.*)$", out, re.M).group(1).split()
    assert fields == [f"{a.name}:{FIELD_TYPE[a.type][1:]}" for a in contract.ATTRIBUTES]
    rc, log = re.search(r"^prepare_d256 rc=(-?\d+) log=(.*)$", out, re.M).groups()  # kernel attributes at configure
    assert rc == "0" or (rc == "-1" and "configurePlugin: gswaPrepareKernels(D = 256)" in log), (rc, log)
    if any(a.name == "global_rows" for a in contract.ATTRIBUTES):  # op version 2: key_local holds R-G rows
        assert "ok configure_rejects_local_rows_R" in out and "ok global_rows_required" in out, out
    assert _trt_major(include_dir) >= 10
