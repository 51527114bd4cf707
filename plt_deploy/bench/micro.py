"""Micro-benchmarks behind docs/bench.md's explanations (not part of `plt-deploy bench`).

    python -m plt_deploy.bench.micro linear [THREADS]   # torch: F.linear vs (W @ x.T).T vs per-row mat-vec
    python -m plt_deploy.bench.micro matmul      # ONNX Runtime MatMul with 1, 2, 3, 8 rows
    python -m plt_deploy.bench.micro nbits       # int4/int8 exports' MatMulNBits: 1, 2, 4, 8 rows x block size
    python -m plt_deploy.bench.micro attention   # ONNX Runtime Attention: 1 vs 2 query rows, T 160 vs 2080, 2 layouts
    python -m plt_deploy.bench.micro kv-read     # the shared cache's read per decode step vs the memory floor
    python -m plt_deploy.bench.micro profile EXPORT_DIR [BATCH] [MAX_SEQ]   # ORT profile of a decode graph
    python -m plt_deploy.bench.micro nonpad      # ONNX Runtime Attention: nonpad_kv_seqlen 160 vs 2080 in a 2080 cache
    python -m plt_deploy.bench.micro capacity EXPORT_DIR CHECKPOINT [CONTEXT]   # decode vs the session's max_seq
    python -m plt_deploy.bench.micro no-local PLT_EXPORT VANILLA_EXPORT [CONTEXT]   # PLT decode if G-SWA's local part were free
    python -m plt_deploy.bench.micro bind EXPORT_DIR...   # OrtSession.decode: binding kept vs rebound every step

Everything runs on 1 thread (linear: THREADS), each variant interleaved with the others over several rounds (median
printed), weights sized like the small preset's (40 matrices of 512x1536 fp32 = 126 MB: out of cache).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROUNDS = 7
IN, OUT, N_MATS = 512, 1536, 40


def _interleaved(fns: dict, rounds: int = ROUNDS) -> dict[str, float]:
    """name -> median ms of fn(), the fns run in turn every round (after one warm-up call each)."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def linear(threads: int = 1, rows=(1, 2, 3, 8, 16)) -> None:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    ws = [torch.randn(OUT, IN) for _ in range(N_MATS)]
    for m in rows:
        x = torch.randn(m, IN)
        got = _interleaved({
            "F.linear": lambda: [F.linear(x, w) for w in ws],
            "(W @ x.T).T": lambda: [(w @ x.T).T for w in ws],
            "per-row mv": lambda: [torch.stack([torch.mv(w, r) for r in x]) for w in ws],
        })
        print(f"rows {m:2d}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in got.items()))


def _session(nodes, inputs, outputs, inits=(), opset=24, threads=1):
    import onnxruntime as ort
    from onnx import helper

    graph = helper.make_graph(nodes, "micro", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version={23: 11, 24: 12}[opset])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def matmul(rows=(1, 2, 3, 8)) -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((IN, OUT), dtype=np.float32) for _ in range(N_MATS)]
    fns = {}
    for m in rows:
        nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]) for i in range(N_MATS)]
        outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(N_MATS)]
        sess = _session(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, IN])], outs,
                        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(ws)])
        x = rng.standard_normal((m, IN), dtype=np.float32)
        fns[f"{m} rows"] = (lambda s, x: lambda: s.run(None, {"x": x}))(sess, x)
    for k, v in _interleaved(fns).items():
        print(f"MatMul x {N_MATS} ({IN}x{OUT} fp32), {k}: {v:.2f} ms")


def nbits(rows=(1, 2, 4, 8), blocks=(32, 64, 128), formats=("int4", "int8")) -> None:
    """What a decode step's extra rows cost in the weight-only exports' matmuls: the `matmul` graph
    (40 fp32 weights of 512x1536) quantized by the exporter's own pass (export.quantize.quantize_graph:
    DequantizeLinear -> MatMul, which ONNX Runtime fuses into MatMulNBits at session creation), per
    format and block size, each with 1, 2, 4 and 8 rows; every session interleaved with the others."""
    from onnx import TensorProto, helper, numpy_helper

    from ..export.quantize import WeightSpec, quantize_graph

    rng = np.random.default_rng(0)
    ws = [0.02 * rng.standard_normal((IN, OUT), dtype=np.float32) for _ in range(N_MATS)]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}") for i in range(N_MATS)]
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(N_MATS)]
    fns = {}
    for fmt in formats:
        for block in blocks:
            for m in rows:
                graph = helper.make_graph(nodes, "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, IN])],
                                          outs, [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(ws)])
                model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24)], ir_version=12)
                quantize_graph(model, WeightSpec(fmt, block))
                sess = _session(list(model.graph.node), list(model.graph.input), list(model.graph.output),
                                list(model.graph.initializer))
                fused = sum(n.op_type == "MatMulNBits" for n in _optimized(model).graph.node)
                assert fused == N_MATS, f"{fused} of {N_MATS} MatMuls fused"
                x = rng.standard_normal((m, IN), dtype=np.float32)
                fns[fmt, block, m] = (lambda s, x: lambda: s.run(None, {"x": x}))(sess, x)
    got = _interleaved(fns, rounds=3 * ROUNDS)
    print(f"MatMulNBits x {N_MATS} ({IN}x{OUT}), ms per call (rows / 1 row)")
    for fmt in formats:
        for block in blocks:
            one = got[fmt, block, rows[0]]
            print(f"  {fmt} block {block:3d}: " + ", ".join(f"{m} rows {got[fmt, block, m]:.2f} ({got[fmt, block, m] / one:.2f}x)"
                                                       for m in rows))


def _optimized(model):
    """The graph ONNX Runtime's CPU provider runs for `model` (after its default optimisations)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath, opts.log_severity_level = f"{tmp}/opt.onnx", 3
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return onnx.load(f"{tmp}/opt.onnx")


def attention(layers: int = 10, hq: int = 8, hkv: int = 4, d: int = 64) -> None:
    """ONNX Runtime's Attention at decode, 1 and 2 query rows, two layouts: q [1, Hq, S, D] (heads
    grouped by the kernel) and q [1, Hkv, G*S, D] (a KV head's query heads and rows in one query
    axis, as the G-SWA decode body does: onnx_op.build_function). Outputs checked equal."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    fns = {}
    for s in (1, 2):
        for t in (160, 2080):
            q = rng.standard_normal((1, hq, s, d), dtype=np.float32)
            feeds = {"n": np.array([t - 20])}
            for i in range(layers):
                for kv in ("k", "v"):
                    feeds[f"{kv}{i}"] = rng.standard_normal((1, hkv, t, d), dtype=np.float32)
            outs = []
            for layout, q_shape in (("heads", (1, hq, s, d)), ("grouped", (1, hkv, hq // hkv * s, d))):
                ins = [helper.make_tensor_value_info("q", TensorProto.FLOAT, list(q_shape)),
                       helper.make_tensor_value_info("n", TensorProto.INT64, [1])]
                ins += [helper.make_tensor_value_info(f"{kv}{i}", TensorProto.FLOAT, [1, hkv, t, d])
                        for i in range(layers) for kv in ("k", "v")]
                nodes = [helper.make_node("Attention", ["q", f"k{i}", f"v{i}", "", "", "", "n"], [f"y{i}"],
                                          scale=d ** -0.5) for i in range(layers)]
                sess = _session(nodes, ins, [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None)
                                             for i in range(layers)])
                f = {**feeds, "q": q.reshape(q_shape)}
                outs.append(sess.run(None, f)[0].reshape(-1))
                fns[f"{s} query row(s), T {t}, {layout}"] = (lambda sess, f: lambda: sess.run(None, f))(sess, f)
            np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
    for k, v in _interleaved(fns).items():
        print(f"{layers} x Attention (Hq {hq}, Hkv {hkv}, D {d}), {k}: {v:.3f} ms")


def profile(export_dir: str, batch: int = 1, max_seq: int = 640, steps: int = 40) -> None:
    """ORT's profiler over `steps` decode steps, present_* bound to past_* as the backend does."""
    import onnxruntime as ort

    from ..export.manifest import read_manifest

    m = read_manifest(export_dir, verify_hashes=False)
    spec = m.graphs["decode"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_profiling, opts.intra_op_num_threads, opts.log_severity_level = True, 1, 3
    opts.profile_file_prefix = str(Path(export_dir).resolve().parent / "decode_profile")
    sess = ort.InferenceSession(str(m.graph_path("decode")), opts, providers=["CPUExecutionProvider"])
    binding = _decode_binding(sess, spec, batch, max_seq, max_seq - 100)
    for _ in range(steps):
        sess.run_with_iobinding(binding)
    path = sess.end_profiling()
    events = json.loads(Path(path).read_text())
    os.remove(path)
    runs = [e["dur"] / 1e3 for e in events if e.get("name") == "model_run"][steps // 4:]
    kernel, count = Counter(), Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            kernel[e["args"]["op_name"]] += e["dur"] / 1e3 / steps
            count[e["args"]["op_name"]] += 1
    print(f"{export_dir}: model_run median {statistics.median(runs):.2f} ms, kernel {sum(kernel.values()):.2f} ms, "
          f"{sum(count.values()) // steps} nodes per step")
    for op, ms in kernel.most_common(8):
        print(f"  {op:18s} {ms:7.3f} ms  ({count[op] // steps} nodes)")


def kv_read(layers: int = 10, hkv: int = 4, d: int = 64, t: int = 2080, rows: int = 4) -> None:
    """What long-context decode pays per step for the shared cache: the global Attention of every layer
    reads K and V of t positions (the small preset's shapes; rows = G query heads x R loop rows of a
    KV head, the G-SWA body's grouped layout). Against the memory floor (numpy summing the same bytes)
    and torch's SDPA; fp16 caches halve the bytes. Prints ms and the read rate in GB/s."""
    import torch
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    fns, nbytes = {}, {}
    for name, np_type, onnx_type in (("fp32", np.float32, TensorProto.FLOAT), ("fp16", np.float16, TensorProto.FLOAT16)):
        feeds = {"q": rng.standard_normal((1, hkv, rows, d)).astype(np_type), "n": np.array([t])}
        for i in range(layers):
            for kv in ("k", "v"):
                feeds[f"{kv}{i}"] = rng.standard_normal((1, hkv, t, d)).astype(np_type)
        ins = [helper.make_tensor_value_info("q", onnx_type, [1, hkv, rows, d]),
               helper.make_tensor_value_info("n", TensorProto.INT64, [1])]
        ins += [helper.make_tensor_value_info(f"{kv}{i}", onnx_type, [1, hkv, t, d])
                for i in range(layers) for kv in ("k", "v")]
        nodes = [helper.make_node("Attention", ["q", f"k{i}", f"v{i}", "", "", "", "n"], [f"y{i}"], scale=d ** -0.5)
                 for i in range(layers)]
        sess = _session(nodes, ins, [helper.make_tensor_value_info(f"y{i}", onnx_type, None) for i in range(layers)])
        caches = [feeds[f"{kv}{i}"] for i in range(layers) for kv in ("k", "v")]
        size = sum(c.nbytes for c in caches)
        fns[f"ONNX Runtime Attention, {name} cache"] = (lambda s, f: lambda: s.run(None, f))(sess, feeds)
        # the floor reads the same bytes as float32 words (their values do not matter: no conversion)
        fns[f"memory floor (numpy sum), {name}"] = (lambda cs: lambda: [c.view(np.float32).sum() for c in cs])(caches)
        nbytes.update({f"ONNX Runtime Attention, {name} cache": size, f"memory floor (numpy sum), {name}": size})
        if name == "fp32":
            tq = torch.from_numpy(feeds["q"])
            tkv = [(torch.from_numpy(feeds[f"k{i}"]), torch.from_numpy(feeds[f"v{i}"])) for i in range(layers)]
            fns["torch SDPA, fp32 cache"] = lambda: [torch.nn.functional.scaled_dot_product_attention(tq, k, v)
                                                     for k, v in tkv]
            nbytes["torch SDPA, fp32 cache"] = size
    torch.set_num_threads(1)
    for k, v in _interleaved(fns).items():
        print(f"{layers} layers x K+V of {t} positions ({nbytes[k] / 2**20:.0f} MiB), {k}: {v:.2f} ms, "
              f"{nbytes[k] / v / 1e6:.1f} GB/s")


def nonpad(layers: int = 10, hkv: int = 4, d: int = 64, t: int = 2080, rows: int = 4) -> None:
    """Does ONNX Runtime's Attention read only the first nonpad_kv_seqlen slots? The same 2080-slot
    caches with 160, 1000 and 2080 of them valid (the G-SWA decode body's grouped layout)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    feeds = {"q": rng.standard_normal((1, hkv, rows, d), dtype=np.float32)}
    feeds.update({f"{kv}{i}": rng.standard_normal((1, hkv, t, d), dtype=np.float32) for i in range(layers) for kv in "kv"})
    ins = [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, hkv, rows, d]),
           helper.make_tensor_value_info("n", TensorProto.INT64, [1])]
    ins += [helper.make_tensor_value_info(f"{kv}{i}", TensorProto.FLOAT, [1, hkv, t, d])
            for i in range(layers) for kv in "kv"]
    nodes = [helper.make_node("Attention", ["q", f"k{i}", f"v{i}", "", "", "", "n"], [f"y{i}"], scale=d ** -0.5)
             for i in range(layers)]
    sess = _session(nodes, ins, [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(layers)])
    fns = {n: (lambda n: lambda: sess.run(None, {**feeds, "n": np.array([n])}))(n) for n in (160, 1000, t)}
    for n, ms in _interleaved(fns, rounds=15).items():
        print(f"{layers} x Attention over {t} cached slots, nonpad_kv_seqlen {n}: {ms:.2f} ms")


def capacity(export_dir: str, checkpoint: str, context: int = 128, steps: int = 40) -> None:
    """Decode at `context` tokens in sessions sized for more (max_seq = context + 64, 1024, the export's
    limit), as `serve --max-context` sizes its slots: K/V at a capacity following the rows (now) against
    buffers of max_seq slots (before: CAPACITY_STEP above max_seq on ONNX Runtime; torch's model
    step on the uncut cache). Batch 1, 1 thread, all sessions' steps interleaved; greedy checked equal."""
    import torch

    from ..backends import state as state_lib
    from ..backends.ort_backend import OrtBackend
    from ..backends.torch_backend import load

    torch.set_num_threads(1)
    ort_be, torch_be = OrtBackend(export_dir, threads=1), load(checkpoint, threads=1)
    sizes = sorted({context + 64, 1024, ort_be.max_seq})
    prompt = torch.randint(3, ort_be.config.vocab_size, (1, context), generator=torch.Generator().manual_seed(0))
    sessions = {}
    for n in sizes:
        sessions[f"onnxruntime max_seq {n}, now"] = (s := ort_be.start(1, n), s.decode)
        step, state_lib.CAPACITY_STEP = state_lib.CAPACITY_STEP, 1 << 40
        sessions[f"onnxruntime max_seq {n}, before"] = (s := ort_be.start(1, n), s.decode)  # laid out at max_seq
        state_lib.CAPACITY_STEP = step
        s._reserve = lambda needed: None  # and kept there, as before
        sessions[f"torch max_seq {n}, now"] = (s := torch_be.start(1, n), s.decode)
        full = (lambda s: lambda tok: (torch_be.model.decode_step(tok, s.cache).float(), s.lengths.add_(1))[0])
        sessions[f"torch max_seq {n}, before"] = (s := torch_be.start(1, n), full(s))
    tokens, times = {}, {k: [] for k in sessions}
    for k, (s, _) in sessions.items():
        tokens[k] = s.prefill(prompt, torch.tensor([context])).argmax(-1)
    for _ in range(steps):
        for k, (_, step_fn) in sessions.items():
            t0 = time.perf_counter()
            tokens[k] = step_fn(tokens[k]).argmax(-1)
            times[k].append((time.perf_counter() - t0) * 1e3)
    for runtime in ("onnxruntime", "torch"):
        assert len({int(v) for k, v in tokens.items() if k.startswith(runtime)}) == 1, "greedy tokens differ"
    print(f"| runtime, session max_seq | decode ms at context {context}: before | now | before / now |")
    print("|---|---:|---:|---:|")
    for k in sessions:
        if k.endswith("now"):
            name = k[: -len(", now")]
            before, now = statistics.median(times[name + ", before"]), statistics.median(times[k])
            print(f"| {name} | {before:.2f} | {now:.2f} | {before / now:.2f} |")


def _decode_binding(sess, spec, batch: int, max_seq: int, position: int):
    """IO binding of a decode graph as the backend runs it: random caches of max_seq slots, every
    sequence at `position`, present_* bound to their past_* (written in place)."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    values = {}
    for t in spec.inputs:
        shape = [batch if d == "batch" else max_seq if d == "max_seq" else d for d in t.shape]
        if t.role in ("tokens", "position"):
            arr = np.full(shape, 5 if t.role == "tokens" else position, np.int64)
        else:
            arr = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        values[t.name] = ort.OrtValue.ortvalue_from_numpy(arr)
    binding = sess.io_binding()
    for t in spec.inputs:
        binding.bind_ortvalue_input(t.name, values[t.name])
    for t in spec.outputs:
        if t.alias_of:
            binding.bind_ortvalue_output(t.name, values[t.alias_of])
        else:
            binding.bind_output(t.name)
    return binding


def without_local_part(model):
    """`model` with its G-SWA function's local attention replaced by the global output (y_l := y_g, so
    y = y_g: the gate's nodes stay, the ring reads and the local attention go). An ablation, not a model."""
    from onnx import helper

    from ..ops import contract

    fn = next(f for f in model.functions if f.name == contract.OP_NAME and f.domain == contract.OP_DOMAIN)
    nodes = list(fn.node)
    attention = [n for n in nodes if n.op_type == "Attention"]
    glob = next(n for n in attention if len(n.input) == 7)  # the decode body's global part: nonpad_kv_seqlen
    local = next(n for n in attention if n is not glob)
    y_g = next(n for n in nodes if n.op_type == "Reshape" and n.input[0] == glob.output[0]).output[0]
    rest = [n for n in nodes if n is not local]
    at = max(i for i, n in enumerate(rest) if y_g in n.output) + 1
    rest.insert(at, helper.make_node("Identity", [y_g], [local.output[0]]))
    del fn.node[:]
    fn.node.extend(rest)
    return model


def no_local(plt_export: str, vanilla_export: str, context: int = 96, steps: int = 100) -> None:
    """PLT's decode step as exported, the same graph with G-SWA's local part removed
    (`without_local_part`), and vanilla's, batch 1, 1 thread, caches of 256 slots (the K/V capacity
    a session starts at), interleaved: how much of PLT / vanilla any local-attention kernel could win."""
    import tempfile

    import onnx
    import onnxruntime as ort

    from ..export.manifest import read_manifest

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = 1, 3
    graphs, runs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        plt_m = read_manifest(plt_export, verify_hashes=False)
        ablated = without_local_part(onnx.load(str(plt_m.graph_path("decode"))))
        onnx.save(ablated, f"{tmp}/no_local.onnx", save_as_external_data=True, location="no_local.onnx.data")
        van_m = read_manifest(vanilla_export, verify_hashes=False)
        graphs = {"plt, as exported": (str(plt_m.graph_path("decode")), plt_m),
                  "plt, local part removed": (f"{tmp}/no_local.onnx", plt_m),
                  "vanilla": (str(van_m.graph_path("decode")), van_m)}
        nodes = {}
        for i, (name, (path, m)) in enumerate(graphs.items()):
            opts.optimized_model_filepath = f"{tmp}/optimized{i}.onnx"  # to count the nodes ORT runs
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            nodes[name] = len(onnx.load(opts.optimized_model_filepath, load_external_data=False).graph.node)
            binding = _decode_binding(sess, m.graphs["decode"], 1, 256, context)
            runs[name] = (lambda s, b: lambda: [s.run_with_iobinding(b) for _ in range(steps)])(sess, binding)
        got = {k: v / steps for k, v in _interleaved(runs).items()}
    print(f"| decode graph (batch 1, context {context}, 1 thread) | ms per step | vs vanilla | nodes run |\n"
          "|---|---:|---:|---:|")
    for k, v in got.items():
        print(f"| {k} | {v:.3f} | {v / got['vanilla']:.3f} | {nodes[k]} |")


def bind(*export_dirs: str, context: int = 96, steps: int = 200) -> None:
    """OrtSession.decode as it runs (the IO binding made once per K/V layout) against the same session
    rebinding every input and output each step (what it did before), batch 1, 1 thread, interleaved:
    the Python cost of binding, which grows with the number of state buffers (PLT: 4 per layer)."""
    import torch

    from ..backends.ort_backend import OrtBackend

    runs, backends = {}, []
    for d in export_dirs:
        be = OrtBackend(d, threads=1)
        backends.append(be)
        prompt = torch.randint(3, be.config.vocab_size, (1, context), generator=torch.Generator().manual_seed(0))
        for how in ("bound once", "rebound every step"):
            s = be.start(1, context + steps + 8)
            tok = s.prefill(prompt, torch.tensor([context])).argmax(-1)

            def run(s=s, tok=tok, rebind=how != "bound once"):
                s.lengths.fill_(context)  # every run decodes the same positions, context .. context + steps
                for _ in range(steps):
                    if rebind:
                        s._bound_cap = None
                    s.decode(tok)
            runs[f"{Path(d).name}, {how}"] = run
    got = {k: v / steps for k, v in _interleaved(runs).items()}
    print(f"| export, decode binding (batch 1, 1 thread) | ms per step |\n|---|---:|")
    for k, v in got.items():
        print(f"| {k} | {v:.3f} |")
    for be in backends:
        be.close()


if __name__ == "__main__":
    cmds = {"linear": linear, "matmul": matmul, "attention": attention, "profile": profile, "kv-read": kv_read,
            "capacity": capacity, "nonpad": nonpad, "nbits": nbits, "no-local": no_local, "bind": bind}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    args = sys.argv[2:]
    if sys.argv[1] == "profile":
        cmds["profile"](args[0], *map(int, args[1:]))
    elif sys.argv[1] == "bind":
        cmds["bind"](*args)
    elif sys.argv[1] == "no-local":
        cmds["no-local"](args[0], args[1], *map(int, args[2:]))
    elif sys.argv[1] == "capacity":
        cmds["capacity"](args[0], args[1], *map(int, args[2:]))
    else:
        cmds[sys.argv[1]](*map(int, args))
