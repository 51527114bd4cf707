#!/usr/bin/env bash
# Serving throughput vs raw decode, in one run, on one export (docs/serving.md quotes its output):
#   1. plt-deploy bench --batch 1,8 on the small preset (ONNX Runtime CPU); keeps its exports in WORK
#   2. plt-deploy serve on the same plt-2 export with 8 slots: a warm-up load, then the same bounded
#      plt-deploy loadtest twice (RSS after each: it must not grow with requests served)
#   3. the same server with 1 slot and the same clients (fewer requests: its one slot is busy throughout)
#   4. the ratios: server(8 slots) / bench(batch 8) and server(8 slots) / server(1 slot)
# Caches are the same length everywhere: bench sessions hold prompt + new = 288 tokens, the server's
# --max-context is 288 (prompts of up to 31 characters + <bos>, outputs of up to 256 tokens).
# Usage: scripts/serve-bench.sh [WORK] [REQUESTS] [REQUESTS_1]   (defaults: runs/work-serve, 24, 8)
set -euo pipefail
WORK=${1:-runs/work-serve}
REQUESTS=${2:-24}
REQUESTS_1=${3:-8}
PY=${PYTHON:-python3}
CLI=("$PY" -c "from plt_deploy.cli import main; main()")
LOAD=(--concurrency 8 --prompt-lens 8,16,31 --output-lens 192,224,256)
mkdir -p "$WORK"

"${CLI[@]}" bench --preset small --backend onnxruntime --batch 1,8 --prompt-len 32 --new-tokens 256 \
    --variants plt-2,vanilla --no-peer --no-contexts --repeats 2 --no-progress --workdir "$WORK" \
    --json "$WORK/bench.json" | tee "$WORK/bench.txt"

for SLOTS in 8 1; do
    PORT=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    URL="http://127.0.0.1:$PORT"
    "${CLI[@]}" serve --model "$WORK/onnx-plt-2" --backend onnxruntime --slots $SLOTS --max-context 288 \
        --port "$PORT" 2> "$WORK/serve-$SLOTS.log" &
    SERVER=$!
    for _ in $(seq 1 600); do   # up to 300 s for load + warm-up
        curl -sf "$URL/health" > /dev/null && break
        kill -0 $SERVER 2> /dev/null || { cat "$WORK/serve-$SLOTS.log"; exit 1; }
        sleep 0.5
    done
    "${CLI[@]}" loadtest --url "$URL" --requests 8 --concurrency 8 --prompt-lens 8,31 --output-lens 16 > /dev/null
    if [ $SLOTS = 8 ]; then RUNS="a b"; N=$REQUESTS; else RUNS="a"; N=$REQUESTS_1; fi
    for RUN in $RUNS; do
        "${CLI[@]}" loadtest --url "$URL" --requests "$N" "${LOAD[@]}" --json "$WORK/load-$SLOTS$RUN.json" \
            | tee "$WORK/load-$SLOTS$RUN.txt"
    done
    kill -TERM $SERVER
    wait $SERVER
done

"$PY" - "$WORK" <<'PYEOF'
import json, sys
w = sys.argv[1]
rows = json.load(open(f"{w}/bench.json"))["rows"]
b1, b8 = (next(r["tokens_per_s"] for r in rows if r["variant"] == "plt-2" and r["batch"] == b) for b in (1, 8))
l8, l8b, l1 = (json.load(open(f"{w}/load-{n}.json")) for n in ("8a", "8b", "1a"))
print(f"bench plt-2 decode tokens/s: batch 1 {b1:.1f}, batch 8 {b8:.1f} (raw batching gain {b8 / b1:.2f}x)")
print(f"server, 8 slots: {l8['busy_tokens_per_s']:.1f} tokens/s while all 8 clients busy, {l8['tokens_per_s']:.1f} over "
      f"the whole run; 1 slot: {l1['tokens_per_s']:.1f} over the whole run (its slot always busy)")
print(f"server 8 slots (all busy) / bench batch 8 = {l8['busy_tokens_per_s'] / b8:.3f}  (target >= 0.9)")
print(f"server 8 slots / server 1 slot = {l8['busy_tokens_per_s'] / l1['tokens_per_s']:.2f}x all busy, "
      f"{l8['tokens_per_s'] / l1['tokens_per_s']:.2f}x whole runs  (target >= 2)")
print(f"server RSS (MiB): after warm-up {l8['rss_mib_before']:.1f}, after {l8['requests_ok']} requests "
      f"{l8['rss_mib_after']:.1f}, after {l8['requests_ok'] + l8b['requests_ok']} {l8b['rss_mib_after']:.1f}")
PYEOF
