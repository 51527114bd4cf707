"""TensorRT in `plt-deploy check`: Polygraphy's TrtRunner on each built engine, with the plugin loaded.

Two levels of comparison use TensorRT:
  - sequences (prefill + decode steps + greedy generations): `load_backend("tensorrt", export_dir)`
    behind `check.runners.BackendRunner`, exactly like the other backends (see parity.py);
  - graphs: `trt_runners(export_dir)` gives one Polygraphy TrtRunner per graph (prefill, decode),
    built from loaders (`EngineFromBytes(BytesFromPath(plan))`), and `compare_graphs` feeds the same
    inputs to ONNX Runtime's OnnxrtRunner and to TensorRT and compares every output (logits and
    every present_* cache), which localises a mismatch to one graph and one tensor. A bfloat16
    export feeds torch.bfloat16 tensors and its reference is the graph's float32 copy
    (bf16_reference.py): Polygraphy rejects numpy bf16 arrays, ONNX Runtime's CPU has no bf16 kernels.

The plugin is loaded by `build.plugin.load_plugin` (dlopen, which registers the creator under
namespace "plt", then an exact registry lookup) rather than Polygraphy's LoadPlugins, which only
dlopens the library and checks nothing. Plans are refused by `build.plan_check` when built for another TensorRT, GPU or
plugin library. Everything TensorRT is imported lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import numpy_dtype


def trt_loaders(export_dir: str | Path, plugin: str | Path | None = None, verify_hashes: bool = True) -> dict:
    """graph -> Polygraphy engine loader, after the plugin is loaded and the plans are checked."""
    import os

    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes

    from ..build import availability, plan_check
    from ..build.plugin import ENV_VAR, load_plugin
    from ..export.manifest import read_manifest

    trt = availability.require()
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir, verify_hashes=verify_hashes)
    section = plan_check.trt_section(manifest.data, export_dir / "manifest.json")
    loaded = None
    if section.get("plugin"):
        recorded = Path(section["plugin"]["path"])
        explicit = plugin or (None if os.environ.get(ENV_VAR) or not recorded.is_file() else recorded)
        loaded = load_plugin(trt, explicit)
    _, plans = plan_check.check_all(export_dir, manifest.data, availability.trt_version(trt),
                                    availability.compute_capability(), loaded.sha256 if loaded else None,
                                    loaded.path if loaded else None, verify_hashes)
    return {graph: EngineFromBytes(BytesFromPath(str(path))) for graph, path in plans.items()}


def trt_runners(export_dir: str | Path, plugin: str | Path | None = None) -> dict:
    """graph -> Polygraphy TrtRunner (a context manager: activate / infer / deactivate)."""
    from polygraphy.backend.trt import TrtRunner

    return {graph: TrtRunner(loader, name=f"tensorrt:{graph}")
            for graph, loader in trt_loaders(export_dir, plugin).items()}


def onnxrt_runners(export_dir: str | Path) -> dict:
    """graph -> Polygraphy OnnxrtRunner on the same ONNX files (CPU provider), the graph-level reference.
    A bfloat16 export's graphs run as their float32 copy (bf16_reference: ORT's CPU provider has no
    bf16 kernels), taking the torch.bfloat16 feeds the engines get."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    from ..export.manifest import read_manifest

    manifest = read_manifest(export_dir)
    if manifest.dtype == "bfloat16":
        from .bf16_reference import Bf16ReferenceRunner

        return {g: Bf16ReferenceRunner(manifest.graph_path(g), name=f"onnxruntime-fp32:{g}") for g in manifest.graphs}
    return {g: OnnxrtRunner(SessionFromOnnx(str(manifest.graph_path(g)), providers=["CPUExecutionProvider"]),
                            name=f"onnxruntime:{g}") for g in manifest.graphs}


def polygraphy_feeds(feeds: list[dict], dtype: str) -> list[dict]:
    """Feeds as Polygraphy's runners accept them: numpy, except for a bfloat16 export, whose feeds are
    torch tensors (Polygraphy rejects numpy ml_dtypes.bfloat16; bf16 values convert exactly)."""
    if dtype != "bfloat16":
        return feeds
    import torch

    def convert(a: np.ndarray):
        if a.dtype == numpy_dtype("bfloat16"):
            return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
        return torch.from_numpy(np.ascontiguousarray(a))

    return [{k: convert(v) for k, v in f.items()} for f in feeds]


def graph_feeds(manifest, graph: str, batch: int, cache_len: int, prompt: int = 7, iterations: int = 2,
                seed: int = 0) -> list[dict]:
    """Deterministic feeds for one graph: right-padded chunks at valid start positions (prefill) or one token
    at valid positions (decode), over random state."""
    g = np.random.default_rng(seed)
    spec, vocab = manifest.graphs[graph], manifest.config.vocab_size
    feeds = []
    for it in range(iterations):
        feed = {}
        for t in spec.inputs:
            shape = t.concrete({"batch": batch, "max_seq": cache_len, "prompt": prompt})
            if t.role == "tokens":
                feed[t.name] = g.integers(3, vocab, size=shape, dtype=np.int64)
            elif t.role == "lengths":
                feed[t.name] = np.array([max(1, prompt - (b + it) % prompt) for b in range(batch)], dtype=np.int64)
            elif t.role == "position":
                feed[t.name] = g.integers(1, cache_len, size=shape, dtype=np.int64)
            elif t.role == "start":  # extend from 0 or from inside the (random) state; the chunk fits
                feed[t.name] = g.integers(0, cache_len - prompt + 1, size=shape, dtype=np.int64)
            else:
                feed[t.name] = (0.1 * g.standard_normal(shape)).astype(numpy_dtype(t.dtype))
        feeds.append(feed)
    return feeds


def compare_graphs(export_dir: str | Path, plugin: str | Path | None = None, batch: int = 2, prompt: int = 7,
                   iterations: int = 2, seed: int = 0) -> dict:
    """ONNX Runtime vs TensorRT on each graph, every output; a JSON-able report."""
    from ..export.manifest import read_manifest
    from .tolerances import tolerance

    manifest = read_manifest(export_dir)
    trt = trt_runners(export_dir, plugin)
    section = manifest.data["tensorrt"]  # present: trt_runners checked it
    cache_len = int(section["decode_cache_len"])
    batch, prompt = min(batch, int(section["max_batch"])), min(prompt, cache_len)
    return compare_graph_runners(manifest, onnxrt_runners(export_dir), trt, tolerance("tensorrt", manifest.dtype),
                                 batch, cache_len, prompt, iterations, seed)


def compare_graph_runners(manifest, reference: dict, tested: dict, tol: tuple[float, float], batch: int,
                          cache_len: int, prompt: int = 7, iterations: int = 2, seed: int = 0) -> dict:
    """Per graph, every output of `tested[graph]` against `reference[graph]` on the same feeds."""
    from polygraphy.comparator import Comparator

    from .compare import RULE, compare_run, quiet_polygraphy

    atol, rtol = tol
    quiet_polygraphy()
    report = {"dtype": manifest.dtype, "atol": atol, "rtol": rtol, "rule": RULE, "graphs": {}}
    for graph in manifest.graphs:
        feeds = polygraphy_feeds(graph_feeds(manifest, graph, batch, cache_len, prompt, iterations, seed),
                                 manifest.dtype)
        rows = compare_run(Comparator.run([reference[graph], tested[graph]], data_loader=feeds), atol, rtol)
        report["graphs"][graph] = {"passed": bool(rows) and all(r["passed"] for r in rows), "results": rows}
    report["passed"] = all(g["passed"] for g in report["graphs"].values())
    return report
