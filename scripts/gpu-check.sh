#!/usr/bin/env bash
# The whole TensorRT path on a machine with an NVIDIA GPU, TensorRT 10.x/11.x and a CUDA toolkit:
#   1. build the G-SWA plugin (plugins/ -> plugins/build/libplt_trt_plugins.so)
#   2. install plt-deploy with the gpu extra
#   3. for the tiny and small presets, fp32 and fp16: init, export, `plt-deploy build`, and
#      `plt-deploy check --backends torch,onnxruntime,tensorrt` (TensorRT vs ONNX Runtime per graph
#      through Polygraphy's TrtRunner: fp32 1e-4, fp16 1e-2 relative; TensorRT vs torch on prefill,
#      decode steps and greedy generations: check/parity.py's tolerances)
#   4. pytest -m gpu, generate with --backend tensorrt, bench --backend tensorrt --preset small
# Fails fast, with one line saying what is missing, when there is no GPU or no TensorRT.
#
# Environment: TENSORRT_ROOT or TENSORRT_INCLUDE_DIR (headers; else /usr/include or the NVIDIA/TensorRT
# GitHub release branch matching the installed wheel), PYTHON (default python3), OUT (default runs/gpu-check),
# PRESETS (default "tiny small"), DTYPES (default "float32 float16"), SKIP_INSTALL=1, SKIP_BENCH=1.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=${OUT:-runs/gpu-check}
PRESETS=${PRESETS:-tiny small}
DTYPES=${DTYPES:-float32 float16}

die() { echo "gpu-check: $*" >&2; exit 1; }
step() { echo; echo "=== $* ==="; }
plt() { "$PYTHON" -m plt_deploy "$@"; }  # works with or without the console script on PATH

# -- fail fast --------------------------------------------------------------------------------
command -v nvidia-smi >/dev/null 2>&1 \
  || die "nvidia-smi not found: this script needs an NVIDIA GPU with its driver installed"
nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi cannot talk to the driver (no GPU visible? check the driver)"
command -v cmake >/dev/null 2>&1 || die "cmake not found: install cmake >= 3.24 (pip install cmake)"
command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ] \
  || die "nvcc not found: install the CUDA toolkit (or put /usr/local/cuda/bin on PATH)"
export PATH="$PATH:/usr/local/cuda/bin"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  step "install plt-deploy[gpu,test]"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[gpu,test]"
fi
"$PYTHON" - <<'EOF' || exit 1
import sys
from plt_deploy.build.availability import require
from plt_deploy.errors import BackendUnavailable
try:
    trt = require()
except BackendUnavailable as exc:
    sys.exit(f"gpu-check: {exc}")
import torch
print(f"TensorRT {trt.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()} "
      f"(sm {'.'.join(map(str, torch.cuda.get_device_capability()))})")
EOF

# -- 1. plugin ----------------------------------------------------------------------------------
step "build the plugin library"
TRT_VERSION=$("$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)')
if [ -z "${TENSORRT_INCLUDE_DIR:-}" ]; then
  if [ -n "${TENSORRT_ROOT:-}" ]; then
    TENSORRT_INCLUDE_DIR="$TENSORRT_ROOT/include"
  else
    for d in /usr/include/x86_64-linux-gnu /usr/include/aarch64-linux-gnu /usr/include /usr/local/tensorrt/include; do
      if [ -f "$d/NvInferRuntime.h" ]; then TENSORRT_INCLUDE_DIR=$d; break; fi
    done
  fi
fi
if [ -z "${TENSORRT_INCLUDE_DIR:-}" ]; then
  # The pip wheels ship no headers; the public headers are in NVIDIA/TensorRT's release branches.
  branch="release/$(echo "$TRT_VERSION" | cut -d. -f1-2)"
  hdrs="$OUT/tensorrt-oss"
  if [ ! -f "$hdrs/include/NvInferRuntime.h" ]; then
    echo "no TensorRT headers found: fetching include/ of NVIDIA/TensorRT $branch"
    rm -rf "$hdrs"
    git clone --quiet --depth 1 --branch "$branch" https://github.com/NVIDIA/TensorRT.git "$hdrs" \
      || die "cannot fetch TensorRT headers for $TRT_VERSION; set TENSORRT_ROOT or TENSORRT_INCLUDE_DIR"
  fi
  TENSORRT_INCLUDE_DIR="$(cd "$hdrs/include" && pwd)"
fi
echo "TensorRT headers: $TENSORRT_INCLUDE_DIR (runtime $TRT_VERSION)"
cmake -S plugins -B plugins/build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=native \
  -DTENSORRT_INCLUDE_DIR="$TENSORRT_INCLUDE_DIR" >/dev/null
cmake --build plugins/build -j "$(nproc)"
PLT_TRT_PLUGIN="$(pwd)/plugins/build/libplt_trt_plugins.so"
[ -f "$PLT_TRT_PLUGIN" ] || die "$PLT_TRT_PLUGIN was not built (did CMake find NvInferRuntime.h?)"
export PLT_TRT_PLUGIN

# -- 2..3. presets x dtypes: init, export, build, check ----------------------------------------------
mkdir -p "$OUT"
for preset in $PRESETS; do
  for dtype in $DTYPES; do
    name="$preset-$dtype"
    step "$name: init, export, build, check"
    plt init --preset "$preset" --dtype "$dtype" --out "$OUT/ckpt-$name" --force
    plt export --model "$OUT/ckpt-$name" --out "$OUT/export-$name" --max-batch 4 --max-seq 256 --force
    plt build --onnx "$OUT/export-$name" --plugin "$PLT_TRT_PLUGIN" --max-batch 4
    plt check --model "$OUT/ckpt-$name" --onnx "$OUT/export-$name" \
      --backends torch,onnxruntime,tensorrt --report "$OUT/check-$name.json"
  done
done

# -- 4. tests, generate, bench ----------------------------------------------------------------------
step "pytest -m gpu"
"$PYTHON" -m pytest -m gpu -q tests

step "generate on TensorRT"
first_preset=${PRESETS%% *}
plt generate --backend tensorrt --model "$OUT/export-$first_preset-float32" --prompt "Hello" \
  --max-new-tokens 16

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  step "bench on TensorRT (small preset)"
  plt bench --backend tensorrt --preset small --workdir "$OUT/bench" --json "$OUT/bench.json"
fi

echo
echo "gpu-check: all steps passed (reports in $OUT)"
