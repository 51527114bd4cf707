"""The TensorRT plugin's project: generated YAML contract, sources agreeing with contract.py, CMake build.

The CMake build always builds the kernels; the plugin library needs TensorRT's headers
(TENSORRT_INCLUDE_DIR or TENSORRT_ROOT in the environment) and then must link without libnvinfer
and export the loadLibrary entry points.
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


def _trt_include_dir() -> Path | None:
    inc = os.environ.get("TENSORRT_INCLUDE_DIR") or (
        str(Path(os.environ["TENSORRT_ROOT"]) / "include") if os.environ.get("TENSORRT_ROOT") else None)
    return Path(inc) if inc and (Path(inc) / "NvInferRuntime.h").exists() else None


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


def test_plugin_sources_follow_contract():
    """Name/version/namespace, input order and attribute fields in the C++ match contract.py."""
    header = (GSWA / "gatedSlidingWindowAttentionPlugin.h").read_text()
    source = (GSWA / "gatedSlidingWindowAttentionPlugin.cpp").read_text()
    assert f'kGSWA_PLUGIN_NAME{{"{contract.OP_NAME}"}}' in header
    assert f'kGSWA_PLUGIN_VERSION{{"{contract.OP_VERSION}"}}' in header
    assert f'kGSWA_PLUGIN_NAMESPACE{{"{contract.PLUGIN_NAMESPACE}"}}' in header
    names = re.search(r"kINPUT_NAMES\[kNB_INPUTS\] = \{(.*?)\};", source, re.S).group(1)
    assert re.findall(r'"(\w+)"', names) == [s.name for s in contract.INPUTS]
    ranks = re.search(r"kRANKS\[kNB_INPUTS\] = \{(.*?)\};", source).group(1)
    assert [int(x) for x in ranks.split(",")] == [len(s.shape) for s in contract.INPUTS]
    field_type = {"INT": "kINT32", "FLOAT": "kFLOAT32"}
    declared = re.findall(r'mFieldNames\.emplace_back\("(\w+)", nullptr, PluginFieldType::(\w+), 1\)', source)
    serialized = re.findall(r'mFields\.emplace_back\("(\w+)", &mAttrs\.\w+, PluginFieldType::(\w+), 1\)', source)
    expected = [(a.name, field_type[a.type]) for a in contract.ATTRIBUTES]
    assert declared == expected and serialized == expected


# ---- CMake build -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cmake_build(tmp_path_factory):
    """Configures and builds plugins/ for one architecture (all architectures: test_kernels.py)."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not found")
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
        pytest.skip("nvcc not found (PATH or /usr/local/cuda/bin)")
    build = tmp_path_factory.mktemp("plugins_build")
    configure = [cmake, "-S", str(PLUGINS), "-B", str(build), "-DCMAKE_CUDA_ARCHITECTURES=90"]
    if shutil.which("nvcc") is None:
        configure.append("-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc")
    for cmd in (configure, [cmake, "--build", str(build), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return build


def test_kernels_library_builds(cmake_build):
    libs = list(cmake_build.rglob("libplt_gswa_kernels.a"))
    assert libs and libs[0].stat().st_size > 0


def test_plugin_library_links_without_libnvinfer(cmake_build):
    if _trt_include_dir() is None:
        pytest.skip("TENSORRT_INCLUDE_DIR / TENSORRT_ROOT not set (or no NvInferRuntime.h there): plugin library not built")
    lib = cmake_build / "libplt_trt_plugins.so"
    assert lib.exists(), "CMake found TensorRT headers in the environment but built no libplt_trt_plugins.so"
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not found")
    defined = subprocess.run([nm, "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    undefined = subprocess.run([nm, "-D", "--undefined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"\bT getCreators$", defined, re.M), defined
    assert re.search(r"\bT setLoggerFinder$", defined, re.M), defined
    assert re.search(r"\bU getPluginRegistry$", undefined, re.M), "static registration should import getPluginRegistry"
    readelf = shutil.which("readelf")
    if readelf:
        needed = subprocess.run([readelf, "-d", str(lib)], capture_output=True, text=True, check=True).stdout
        assert "libnvinfer" not in needed, needed
