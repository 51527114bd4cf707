#!/usr/bin/env bash
# The main job on a CPU, end to end: install, train a tiny PLT model on 3-digit addition, export it
# to ONNX, check the export against PyTorch, and generate with ONNX Runtime.
# Artifacts: runs/demo (checkpoint) and export/demo (ONNX export). STEPS=N to train longer/shorter.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-1500}"
cat <<INTRO
plt-deploy demo: about 2 minutes on a quiet 2-core CPU (99 s measured, see README), in 5 steps:
  1. install torch 2.13.0 (CPU) and plt-deploy into $(python3 -c 'import sys; print(sys.prefix)')
  2. train a tiny PLT-2 model (109k parameters) for $STEPS steps on 3-digit addition   ~1 min
  3. export it to ONNX (prefill + decode graphs, one G-SWA node per layer)             ~15 s
  4. check the export against PyTorch (logits over 32 decode steps, 64 greedy tokens)  ~10 s
  5. generate sums with ONNX Runtime                                                   ~2 s
INTRO
start=$SECONDS
echo "[1/5] install" >&2
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python3 -m pip install --quiet --disable-pip-version-check -e .
echo "[2/5] train" >&2
plt-deploy train --out runs/demo --task addition --variants plt --steps "$STEPS" --force
echo "[3/5] export" >&2
plt-deploy export --model runs/demo --out export/demo --force
echo "[4/5] check" >&2
plt-deploy check --model runs/demo --onnx export/demo --report runs/demo-check.json
echo "[5/5] generate" >&2
echo "The model was trained to add two 3-digit numbers and write the sum least-significant digit first"
echo "(123+456=579 is answered 975), prompt then answer:"
plt-deploy generate --backend onnxruntime --model export/demo --max-new-tokens 6 \
    --prompt "123+456=" --prompt "505+505=" --prompt "999+001="
echo "demo finished in $((SECONDS - start)) s"
