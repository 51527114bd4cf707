#!/usr/bin/env bash
# The main job on a CPU: install, train a small PLT model, export it to ONNX, check the export
# against PyTorch, and generate with ONNX Runtime. Artifacts go to runs/demo and export/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python3 -m pip install --quiet --disable-pip-version-check -e .
plt-deploy train --out runs/demo --task addition --variants plt --steps "${STEPS:-1500}" --force
plt-deploy export --model runs/demo --out export/demo --force
plt-deploy check --model runs/demo --onnx export/demo --report runs/demo/check.json
plt-deploy generate --backend onnxruntime --model export/demo --prompt "123+456=" --max-new-tokens 8
