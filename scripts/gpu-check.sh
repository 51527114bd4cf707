#!/usr/bin/env bash
# The whole TensorRT path on a fresh machine with an NVIDIA GPU, TensorRT 10.x/11.x and a CUDA toolkit.
# Prints one line per stage, "PASS <stage>", "FAIL <stage> (log: FILE)" or "SKIP <stage> (why)",
# then "gpu-check: PASS" or "gpu-check: FAIL (N stages)" and exits 0 / 1. Stage logs: $OUT/logs/.
#
#   prerequisites  nvidia-smi sees a GPU, cmake and nvcc exist (fails fast with one line)
#   install        pip install -e ".[gpu,test]" (SKIP_INSTALL=1 skips)
#   tensorrt       TensorRT (>= 10.15, whose ONNX parser imports the exports' opset-23 ops) imports and
#                  torch sees a CUDA device
#   cuda-toolkit   nvcc's CUDA major version = the one the installed TensorRT was built for (the plugin
#                  links the CUDA runtime statically, so it must match)
#   plugin         cmake build of plugins/ -> plugins/build/libplt_trt_plugins.so
#   per preset x dtype (PRESETS, DTYPES):
#     <p>-<d>:export  init + export (validated against torch on ONNX Runtime)
#     <p>-<d>:engines plt-deploy build (exactly one G-SWA plugin layer per node)
#     <p>-<d>:check   plt-deploy check --backends torch,onnxruntime,tensorrt (graphs through Polygraphy,
#                     sequences and greedy tokens against torch)
#     <p>-<d>-<w>:quantize|engines|check  for w in WEIGHTS (default "int8 int4"): the float export
#                     quantized (export --model EXPORT --weights w; block 16, tiny's mlp_hidden is 176),
#                     built (TensorRT's weight-only block quantization: IDequantizeLayer -> MatMul), and
#                     checked by quantization error against torch (top-1 agreement bound per format)
#   pytest-gpu     pytest -m gpu
#   generate       generate --backend tensorrt on the first preset and first dtype that exported
#   bench          bench --backend tensorrt --preset small (SKIP_BENCH=1 skips)
#
# Environment: TENSORRT_ROOT or TENSORRT_INCLUDE_DIR (headers; else /usr/include or the NVIDIA/TensorRT
# GitHub release branch matching the installed wheel), PYTHON (default python3), OUT (default
# runs/gpu-check), PRESETS (default "tiny small"), DTYPES (default "float32 float16"; any of float32,
# float16, bfloat16), WEIGHTS (default "int8 int4"; "" skips), SKIP_INSTALL=1, SKIP_BENCH=1.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
OUT=${OUT:-runs/gpu-check}
WEIGHTS=${WEIGHTS-int8 int4}
PRESETS=${PRESETS:-tiny small}
DTYPES=${DTYPES:-float32 float16}
LOGS="$OUT/logs"
mkdir -p "$LOGS"
FAILED=0

die() { echo "gpu-check: $*" >&2; exit 1; }
plt() { "$PYTHON" -m plt_deploy "$@"; }  # works with or without the console script on PATH

# stage NAME CMD...: run CMD with its output in $LOGS/NAME.log; one PASS/FAIL line; returns its status.
stage() {
  local name=$1; shift
  local log="$LOGS/${name//[:\/]/_}.log"
  if "$@" >"$log" 2>&1; then
    echo "PASS $name"
  else
    echo "FAIL $name (log: $log)"; tail -n 3 "$log" | sed 's/^/    /'
    FAILED=$((FAILED + 1)); return 1
  fi
}
skip() { echo "SKIP $1 ($2)"; }

# -- prerequisites: fail fast with one line ---------------------------------------------------------
for d in $DTYPES; do
  case "$d" in float32|float16|bfloat16) ;; *) die "DTYPES: unknown dtype '$d' (float32, float16, bfloat16)";; esac
done
command -v nvidia-smi >/dev/null 2>&1 \
  || die "nvidia-smi not found: this script needs an NVIDIA GPU with its driver installed"
nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi cannot talk to the driver (no GPU visible? check the driver)"
command -v cmake >/dev/null 2>&1 || die "cmake not found: install cmake >= 3.24 (pip install cmake)"
export PATH="$PATH:/usr/local/cuda/bin"
command -v nvcc >/dev/null 2>&1 || die "nvcc not found: install the CUDA toolkit (or put its bin/ on PATH)"
echo "PASS prerequisites"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  stage install "$PYTHON" -m pip install --disable-pip-version-check -e ".[gpu,test]" \
    || die "cannot install plt-deploy[gpu,test] (see the log above)"
else
  skip install "SKIP_INSTALL=1"
fi

tensorrt_ready() {
  "$PYTHON" - <<'EOF'
import sys
from plt_deploy.build.availability import require
from plt_deploy.errors import BackendUnavailable
try:
    trt = require()
except BackendUnavailable as exc:
    sys.exit(f"gpu-check: {exc}")
from plt_deploy.build.availability import version_tuple
from plt_deploy.build.engine import PARSER_OP_MIN
need = max(PARSER_OP_MIN.values())
if version_tuple(trt.__version__)[:2] < need:
    sys.exit(f"gpu-check: TensorRT {trt.__version__} cannot parse the exports (opset-23 ops): "
             f"pip install 'tensorrt>={'.'.join(map(str, need))}'")
import torch
print(f"TensorRT {trt.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()} "
      f"(sm {'.'.join(map(str, torch.cuda.get_device_capability()))})")
EOF
}
stage tensorrt tensorrt_ready || die "$(tail -n 1 "$LOGS/tensorrt.log")"
sed 's/^/    /' "$LOGS/tensorrt.log"

cuda_toolkit() {
  nvcc --version | "$PYTHON" -c '
import sys
from plt_deploy.build.availability import cuda_toolkit_line
from plt_deploy.errors import BackendUnavailable
try:
    print(cuda_toolkit_line(sys.stdin.read()))
except BackendUnavailable as exc:
    sys.exit(f"gpu-check: {exc}")'
}
stage cuda-toolkit cuda_toolkit || die "$(tail -n 1 "$LOGS/cuda-toolkit.log")"
sed 's/^/    /' "$LOGS/cuda-toolkit.log"

# -- plugin -------------------------------------------------------------------------------------------
build_plugin() {
  local trt_version inc="${TENSORRT_INCLUDE_DIR:-}"
  trt_version=$("$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)')
  if [ -z "$inc" ] && [ -n "${TENSORRT_ROOT:-}" ]; then inc="$TENSORRT_ROOT/include"; fi
  if [ -z "$inc" ]; then
    for d in /usr/include/x86_64-linux-gnu /usr/include/aarch64-linux-gnu /usr/include /usr/local/tensorrt/include; do
      if [ -f "$d/NvInferRuntime.h" ]; then inc=$d; break; fi
    done
  fi
  if [ -z "$inc" ]; then
    # The pip wheels ship no headers; the public headers are in NVIDIA/TensorRT's release branches.
    local branch hdrs="$OUT/tensorrt-oss"
    branch="release/$(echo "$trt_version" | cut -d. -f1-2)"
    if [ ! -f "$hdrs/include/NvInferRuntime.h" ]; then
      echo "no TensorRT headers found: fetching include/ of NVIDIA/TensorRT $branch"
      rm -rf "$hdrs"
      git clone --quiet --depth 1 --branch "$branch" https://github.com/NVIDIA/TensorRT.git "$hdrs" || {
        echo "cannot fetch TensorRT headers for $trt_version; set TENSORRT_ROOT or TENSORRT_INCLUDE_DIR"; return 1; }
    fi
    inc="$(cd "$hdrs/include" && pwd)"
  fi
  echo "TensorRT headers: $inc (runtime $trt_version)"
  cmake -S plugins -B plugins/build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=native \
    -DTENSORRT_INCLUDE_DIR="$inc" && cmake --build plugins/build -j "$(nproc)" \
    && [ -f plugins/build/libplt_trt_plugins.so ]
}
stage plugin build_plugin || die "the plugin did not build (log: $LOGS/plugin.log)"
export PLT_TRT_PLUGIN="$(pwd)/plugins/build/libplt_trt_plugins.so"

# -- presets x dtypes: export, engines, check -------------------------------------------------------
first_export=""
for preset in $PRESETS; do
  for dtype in $DTYPES; do
    name="$preset-$dtype"
    ck="$OUT/ckpt-$name" ex="$OUT/export-$name"
    export_one() {
      plt init --preset "$preset" --dtype "$dtype" --out "$ck" --force \
        && plt export --model "$ck" --out "$ex" --max-batch 4 --max-seq 256 --force
    }
    if ! stage "$name:export" export_one; then
      skip "$name:engines" "needs $name:export"; skip "$name:check" "needs $name:export"; continue
    fi
    if ! stage "$name:engines" plt build --onnx "$ex" --plugin "$PLT_TRT_PLUGIN" --max-batch 4; then
      skip "$name:check" "needs $name:engines"; continue
    fi
    first_export=${first_export:-$ex}
    stage "$name:check" plt check --model "$ck" --onnx "$ex" --backends torch,onnxruntime,tensorrt \
      --report "$OUT/check-$name.json"
    [ "$dtype" = bfloat16 ] && continue  # ONNX Runtime cannot run bf16: check's reference comparison needs it
    for w in $WEIGHTS; do
      qx="$OUT/export-$name-$w"
      if ! stage "$name-$w:quantize" plt export --model "$ex" --out "$qx" --weights "$w" --block-size 16 --force; then
        skip "$name-$w:engines" "needs $name-$w:quantize"; skip "$name-$w:check" "needs $name-$w:quantize"; continue
      fi
      if ! stage "$name-$w:engines" plt build --onnx "$qx" --plugin "$PLT_TRT_PLUGIN" --max-batch 4; then
        skip "$name-$w:check" "needs $name-$w:engines"; continue
      fi
      stage "$name-$w:check" plt check --model "$ck" --onnx "$qx" --backends torch,onnxruntime,tensorrt \
        --report "$OUT/check-$name-$w.json"
    done
  done
done

# -- tests, generate, bench ---------------------------------------------------------------------------
stage pytest-gpu "$PYTHON" -m pytest -m gpu -q tests
if [ -n "$first_export" ]; then
  stage generate plt generate --backend tensorrt --model "$first_export" --prompt "Hello" --max-new-tokens 16
else
  skip generate "no export built engines"
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  stage bench plt bench --backend tensorrt --preset small --workdir "$OUT/bench" --json "$OUT/bench.json"
else
  skip bench "SKIP_BENCH=1"
fi

if [ "$FAILED" -eq 0 ]; then
  echo "gpu-check: PASS (reports and logs in $OUT)"
else
  echo "gpu-check: FAIL ($FAILED stage(s); logs in $LOGS)"; exit 1
fi
