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
#   plugin         cmake build of plugins/ -> plugins/build/libplt_trt_plugins{,_dynamic}.so; headers found
#                  offline (plt_deploy.build.headers), else SKIP with the reason (and the stages needing it)
#   plugin-load:*  every loading path of plugins/README.md, each in a fresh process: ctypes, load_library,
#                  both-libraries (no double registration), logger (plugin errors reach TensorRT's
#                  logger on the dlopen path), and after the first export: polygraphy, trtexec-static,
#                  trtexec-dynamic, serialized-library (a plan embedding the library), triton-plugins
#   per preset x dtype (PRESETS, DTYPES):
#     <p>-<d>:export  init + export (validated against torch on ONNX Runtime)
#     <p>-<d>:engines plt-deploy build (exactly one G-SWA plugin layer per node)
#     <p>-<d>:check   plt-deploy check --backends torch,onnxruntime,tensorrt (graphs through Polygraphy,
#                     sequences and greedy tokens against torch)
#     <p>-<d>-<w>:quantize|engines|check  for w in WEIGHTS (default "int8 int4"): the float export
#                     quantized (export --model EXPORT --weights w; block 16, tiny's mlp_hidden is 176),
#                     built (TensorRT's weight-only block quantization: IDequantizeLayer -> MatMul), and
#                     checked by quantization error against torch (top-1 agreement bound per format)
#   KV bytes on device == formula
#                  a TensorRT session of the first export holds one buffer per cache (bytes =
#                  cache.kv_bytes_formula) and every in_place output shares its input's address
#   decode step time flat in T for cache writes
#                  small preset (fp16) exported once, engines built at --max-seq 128 and 2048: the
#                  TensorScatter (IKVCacheUpdateLayer) layers' time per step, TensorRT's per-layer
#                  profiler, must not grow with the cache length (<= 1.5x; a full copy would be ~16x)
#   pytest-gpu     pytest -m gpu
#   generate       generate --backend tensorrt on the first preset and first dtype that exported
#   triton-device  a TensorRT backend on the last GPU (Triton's model_instance_device_id) keeps its caches
#                  and engines there (SKIP with one GPU)
#   bench          bench --backend tensorrt --preset small (SKIP_BENCH=1 skips)
#
# Environment: TENSORRT_ROOT or TENSORRT_INCLUDE_DIR (headers; else /usr/include, a tensorrt wheel's
# include/, or TENSORRT_OSS_DIR = a local git clone of NVIDIA/TensorRT, whose newest release/X.Y branch
# not newer than the installed TensorRT is used; never the network), PYTHON (default python3), OUT (default
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
  local log="$LOGS/${name//[:\/ =]/_}.log"
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
HEADERS=$("$PYTHON" -m plt_deploy.build.headers "$OUT/headers" 2>/dev/null); headers_rc=$?
PLUGIN_OK=0
build_plugin() {
  echo "TensorRT headers: $HEADERS (runtime $("$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)'))"
  cmake -S plugins -B plugins/build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=native \
    -DTENSORRT_INCLUDE_DIR="$HEADERS" && cmake --build plugins/build -j "$(nproc)" \
    && [ -f plugins/build/libplt_trt_plugins.so ] && [ -f plugins/build/libplt_trt_plugins_dynamic.so ]
}
if [ "$headers_rc" -ne 0 ]; then
  skip plugin "$HEADERS"
else
  stage plugin build_plugin || die "the plugin did not build (log: $LOGS/plugin.log)"
  PLUGIN_OK=1
  export PLT_TRT_PLUGIN="$(pwd)/plugins/build/libplt_trt_plugins.so"
  PLT_TRT_PLUGIN_DYNAMIC="$(pwd)/plugins/build/libplt_trt_plugins_dynamic.so"
  paths() { "$PYTHON" scripts/plugin-paths.py "$@"; }
  stage plugin-load:ctypes paths ctypes "$PLT_TRT_PLUGIN"
  stage plugin-load:load_library paths load_library "$PLT_TRT_PLUGIN_DYNAMIC"
  stage plugin-load:both-libraries paths both-libraries "$PLT_TRT_PLUGIN" "$PLT_TRT_PLUGIN_DYNAMIC"
  stage plugin-load:logger paths logger "$PLT_TRT_PLUGIN"
fi

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
    if [ "$PLUGIN_OK" != 1 ]; then
      skip "$name:engines" "needs plugin"; skip "$name:check" "needs plugin"; continue
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

# -- in-place KV caches (docs/tensorrt.md "KV caches in place") ------------------------------------
kv_bytes() { "$PYTHON" -m plt_deploy.check.kv_inplace bytes "$1"; }
kv_flat() {
  local ck="$OUT/ckpt-kvflat" ex="$OUT/export-kvflat"
  plt init --preset small --dtype float16 --out "$ck" --force \
    && plt export --model "$ck" --out "$ex" --max-batch 1 --max-seq 2048 --force --no-validate || return 1
  for T in 128 2048; do
    rm -rf "$ex-$T" && cp -r "$ex" "$ex-$T" \
      && plt build --onnx "$ex-$T" --plugin "$PLT_TRT_PLUGIN" --max-batch 1 --max-seq "$T" || return 1
  done
  "$PYTHON" -m plt_deploy.check.kv_inplace flat "$ex-128" "$ex-2048"
}
if [ -n "$first_export" ]; then
  stage "KV bytes on device == formula" kv_bytes "$first_export" && sed 's/^/    /' "$LOGS/KV_bytes_on_device____formula.log"
else
  skip "KV bytes on device == formula" "no export built engines"
fi
if [ "$PLUGIN_OK" = 1 ]; then
  stage "decode step time flat in T for cache writes" kv_flat \
    && tail -n 1 "$LOGS/decode_step_time_flat_in_T_for_cache_writes.log" | sed 's/^/    /'
else
  skip "decode step time flat in T for cache writes" "needs plugin"
fi

# -- the loading paths that need an export with engines (commands as in plugins/README.md) ----------
decode_plan() { "$PYTHON" -c 'import sys, json; from pathlib import Path
d = Path(sys.argv[1]); s = json.loads((d / "manifest.json").read_text())["tensorrt"]
print(d / s["engines"]["decode"]["file"])' "$1"; }
if [ -z "$first_export" ]; then
  for n in polygraphy trtexec-static trtexec-dynamic serialized-library triton-plugins; do
    skip "plugin-load:$n" "no export built engines"
  done
else
  plan=$(decode_plan "$first_export")
  polygraphy_path() {
    polygraphy inspect model "$first_export/decode.onnx" --display-as=trt --show layers --plugins "$PLT_TRT_PLUGIN" \
      | tee /dev/stderr | grep -q "PLUGIN_V3"  # a plugin layer: the parser found the creator
  }
  stage plugin-load:polygraphy polygraphy_path
  if command -v trtexec >/dev/null 2>&1; then
    stage plugin-load:trtexec-static trtexec --loadEngine="$plan" --staticPlugins="$PLT_TRT_PLUGIN" --skipInference
    stage plugin-load:trtexec-dynamic trtexec --loadEngine="$plan" --dynamicPlugins="$PLT_TRT_PLUGIN_DYNAMIC" \
      --skipInference
    serialized_library() {  # build a plan that embeds the library, then load it with no plugin flag
      local shapes; shapes=$("$PYTHON" scripts/plugin-paths.py trtexec-shapes "$first_export") || return 1
      trtexec --onnx="$first_export/decode.onnx" --shapes="$shapes" --dynamicPlugins="$PLT_TRT_PLUGIN_DYNAMIC" \
        --setPluginsToSerialize="$PLT_TRT_PLUGIN_DYNAMIC" --saveEngine="$OUT/embedded-plugin.plan" --skipInference \
        && trtexec --loadEngine="$OUT/embedded-plugin.plan" --skipInference
    }
    stage plugin-load:serialized-library serialized_library
  else
    for n in trtexec-static trtexec-dynamic serialized-library; do skip "plugin-load:$n" "trtexec not on PATH"; done
  fi
  if command -v tritonserver >/dev/null 2>&1; then
    triton_plugins() {  # Triton's TensorRT backend on a plan model; the server dlopens the plugin
      local repo="$OUT/triton-plan-repo" pid ok=1
      rm -rf "$repo"; mkdir -p "$repo/gswa_decode/1"
      cp "$plan" "$repo/gswa_decode/1/model.plan"
      printf 'platform: "tensorrt_plan"\nmax_batch_size: 0\n' > "$repo/gswa_decode/config.pbtxt"
      tritonserver --model-repository="$repo" --backend-config=tensorrt,plugins="$PLT_TRT_PLUGIN" \
        --http-address=127.0.0.1 --http-port=18000 --grpc-address=127.0.0.1 --grpc-port=18001 \
        --metrics-address=127.0.0.1 --metrics-port=18002 & pid=$!
      for _ in $(seq 120); do
        if curl -sf 127.0.0.1:18000/v2/models/gswa_decode/ready >/dev/null; then ok=0; break; fi
        kill -0 "$pid" 2>/dev/null || break; sleep 1
      done
      kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; return $ok
    }
    stage plugin-load:triton-plugins triton_plugins
  else
    skip plugin-load:triton-plugins "tritonserver not on PATH"
  fi
fi

# -- tests, generate, bench ---------------------------------------------------------------------------
stage pytest-gpu "$PYTHON" -m pytest -m gpu -q tests
if [ -n "$first_export" ]; then
  stage generate plt generate --backend tensorrt --model "$first_export" --prompt "Hello" --max-new-tokens 16
else
  skip generate "no export built engines"
fi
if [ -z "$first_export" ]; then
  skip triton-device "no export built engines"
elif [ "$(nvidia-smi -L | wc -l)" -lt 2 ]; then
  skip triton-device "one GPU: needs two"
else
  triton_device() {  # what model.py does with args["model_instance_device_id"] of the last GPU
    "$PYTHON" - "$first_export" <<'EOF'
import sys, torch
from plt_deploy.serve import load_engine
from plt_deploy.triton.runtime import instance_device
dev = instance_device({"model_instance_kind": "GPU", "model_instance_device_id": str(torch.cuda.device_count() - 1)})
engine = load_engine(sys.argv[1], backend="tensorrt", slots=2, device=dev)
engine.start()
assert engine.wait_ready(600), engine.load_error
used = {d: torch.cuda.memory_allocated(d) for d in range(torch.cuda.device_count())}
session_device = engine.session.device
engine.stop(cancel_running=True, timeout=5)
assert session_device == torch.device("cuda", dev), session_device
assert used[dev] > 0 and all(v == 0 for d, v in used.items() if d != dev), used  # caches only on that GPU
print(f"engine and caches on cuda:{dev} ({used[dev]} bytes)")
EOF
  }
  stage triton-device triton_device
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
