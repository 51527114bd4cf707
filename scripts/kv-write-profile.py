#!/usr/bin/env python3
"""Do the decode graph's cache writes cost the cache length? ONNX Runtime's profiler says.

For each variant (default plt-2 and vanilla of the small preset, random weights, fp32, 1 thread)
this exports the model once, then, interleaved over --rounds rounds:

  1. cache writes vs cache length: sessions of max_seq T in --lengths (default 128 and 4096), a
     16-token prompt, --steps decode steps through the backend's own IOBinding path, each step's
     cache-write nodes (TensorScatter; ScatterElements in exports made before issue 16) summed
     from ONNX Runtime's profile, and the whole step's time (the profiler's model_run);
  2. context scaling as `plt-deploy bench` measures it: prompts of --contexts tokens (default 128
     and 2048), sessions sized context + steps, median decode step ms.

Only public APIs are used, so the same script measures an older checkout side by side:
    PYTHONPATH=/path/to/old/checkout python3 scripts/kv-write-profile.py --workdir runs/kv-old
Output: one table and, with --json, the numbers. The numbers in docs/bench.md came from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

WRITE_OPS = ("TensorScatter", "ScatterElements")


def profiled_decode_session(path: Path, prefix: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = prefix
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def step_profile(events: list[dict]) -> list[dict]:
    """Per decode run: total us (model_run) and us in cache-write nodes, from ORT's profile events."""
    runs, current = [], None
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and current is not None:
            op = e.get("args", {}).get("op_name")
            if op in WRITE_OPS:
                current["write_us"] += e["dur"]
                current["write_nodes"] += 1
                current["op"] = op
        elif e.get("cat") == "Session" and e.get("name") == "model_run":
            current["run_us"] = e["dur"]
            runs.append(current)
            current = None
        if current is None and e.get("cat") == "Node":
            current = {"write_us": 0, "write_nodes": 0, "op": None, "run_us": None}
    return runs


def write_cost(backend, T: int, steps: int, threads: int, tmp: Path) -> dict:
    """Median per-step cache-write us and step us at session max_seq T (profiled session)."""
    decode_path = backend.manifest.graph_path("decode")
    backend.sessions["decode"] = sess = profiled_decode_session(decode_path, str(tmp / f"p{T}"), threads)
    s = backend.start(1, T)
    s.prefill(torch.randint(3, 200, (1, 16)), torch.tensor([16]))
    tok = torch.tensor([5])
    for _ in range(steps):
        tok = s.decode(tok).argmax(-1)
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [r for r in step_profile(events) if r["run_us"] is not None][2:]  # the first steps warm up
    return {"write_us": statistics.median(r["write_us"] for r in runs),
            "run_us": statistics.median(r["run_us"] for r in runs),
            "write_nodes": runs[0]["write_nodes"], "op": runs[0]["op"]}


def decode_ms(backend, ctx: int, steps: int) -> float:
    s = backend.start(1, ctx + steps)
    s.prefill(torch.randint(3, 200, (1, ctx)), torch.tensor([ctx]))
    tok, times = torch.tensor([5]), []
    for _ in range(steps):
        t0 = time.perf_counter()
        tok = s.decode(tok).argmax(-1)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--variants", default="plt-2,vanilla")
    ap.add_argument("--lengths", default="128,4096", help="session max_seq values for the write-cost table")
    ap.add_argument("--contexts", default="128,2048", help="prompt lengths for the context-scaling ratio")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=None, help="keep (and reuse) the exports here")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    from plt_deploy.backends.ort_backend import OrtBackend
    from plt_deploy.bench import variants as V
    from plt_deploy.config import PLTConfig

    lengths = [int(x) for x in a.lengths.split(",")]
    contexts = [int(x) for x in a.contexts.split(",")]
    base = PLTConfig.from_name(a.preset, max_seq_len=max(max(lengths), max(contexts) + a.steps))
    names = a.variants.split(",")
    models = V.build_models(base, [V.BY_NAME[n] for n in names])
    work = Path(a.workdir or tempfile.mkdtemp(prefix="kv-write-"))
    work.mkdir(parents=True, exist_ok=True)
    folders = {n: V._export(models[n], work, n, 2, validate=False) for n in names}
    del models
    writes = {(n, T): [] for n in names for T in lengths}
    runs = {(n, T): [] for n in names for T in lengths}
    ctx_ms = {(n, c): [] for n in names for c in contexts}
    info = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for n in names:
                for T in (lengths if r % 2 == 0 else lengths[::-1]):
                    got = write_cost(OrtBackend(folders[n], threads=a.threads), T, a.steps, a.threads, Path(tmp))
                    writes[n, T].append(got["write_us"])
                    runs[n, T].append(got["run_us"])
                    info[n] = (got["op"], got["write_nodes"])
                be = OrtBackend(folders[n], threads=a.threads)
                for c in (contexts if r % 2 == 0 else contexts[::-1]):
                    ctx_ms[n, c].append(decode_ms(be, c, a.steps))
    med = lambda xs: statistics.median(xs)  # noqa: E731
    print(f"plt_deploy from {Path(sys.modules['plt_deploy'].__file__).parent}; preset {a.preset}, "
          f"{a.threads} thread(s), {a.steps} steps x {a.rounds} rounds")
    print("| variant | write op x nodes/step | T (session max_seq) | cache writes us/step | decode step us (profiled) |")
    print("|---|---|---:|---:|---:|")
    for n in names:
        for T in lengths:
            print(f"| {n} | {info[n][0]} x {info[n][1]} | {T} | {med(writes[n, T]):.1f} | {med(runs[n, T]):.0f} |")
    print("| variant | " + " | ".join(f"decode ms at ctx {c}" for c in contexts) + f" | {contexts[-1]} / {contexts[0]} |")
    print("|---|" + "---:|" * (len(contexts) + 1))
    for n in names:
        ms = [med(ctx_ms[n, c]) for c in contexts]
        print(f"| {n} | " + " | ".join(f"{m:.2f}" for m in ms) + f" | {ms[-1] / ms[0]:.3f} |")
    if a.json:
        out = {"writes_us": {f"{n}@{T}": med(writes[n, T]) for n, T in writes},
               "step_us": {f"{n}@{T}": med(runs[n, T]) for n, T in runs},
               "ctx_ms": {f"{n}@{c}": med(ctx_ms[n, c]) for n, c in ctx_ms}, "ops": info}
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
