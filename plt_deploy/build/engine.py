"""Build TensorRT engines from an export folder: `plt-deploy build --onnx export/NAME`.

For each graph (prefill, decode): parse the ONNX file with the G-SWA plugin preferred over the
model-local function, add one optimisation profile, build with a shared timing cache and write
`tensorrt/<graph>.plan` inside the export folder. Then the manifest gets a "tensorrt" section
(TensorRT version, compute capability, plugin sha256, engine files with sha256, profiles).

Plugin vs function (FACTS.md): every G-SWA node carries `plugin_namespace`/`plugin_version`, so
TensorRT >= 10.7 uses the registered plugin; we also set `OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE`.
TensorRT < 10.7 always inlines a local function, so there the function is removed from the model
in memory and the bytes are parsed (with the file's path, for external weights). Either way the
parsed network must hold one plugin layer per G-SWA node, else the build stops.

Profiles: prefill batch 1..max_batch x prompt 1..max_seq; decode batch 1..max_batch with the cache
length fixed at max_seq (shapes never change between decode steps: CUDA-graph friendly).
Networks are strongly typed (always in TensorRT 11; the flag in 10.x): precision is the export's
dtype. TF32 is switched off for float32 exports so they match ONNX Runtime within 1e-4.

Engines and the timing cache live in `<export>/tensorrt/`, a subfolder, so the export manifest's
file list (top-level files only) does not change when the mutable timing cache does.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import atomic_write_bytes
from ..errors import ArtifactError, InputError
from ..export.io_spec import DECODE, GRAPHS, PREFILL, GraphSpec
from ..export.manifest import MANIFEST_FILE, sha256_file, write_manifest
from ..ops import contract
from . import availability, plan_check

ENGINE_DIR = "tensorrt"
TIMING_CACHE = "timing.cache"
PLUGIN_OVERRIDE_MIN = (10, 7)  # first TensorRT whose ONNX parser can prefer a plugin over a local function
STRONGLY_TYPED_DEFAULT = (11, 0)  # TensorRT 11 networks are always strongly typed


@dataclass
class BuildOptions:
    max_batch: int | None = None  # default: the export's --max-batch
    max_seq: int | None = None  # default: the export's --max-seq (also the decode cache length)
    opt_batch: int = 1  # the shapes tactics are tuned for
    opt_prompt: int = 128
    workspace: int | None = None  # bytes; None = TensorRT's default (device memory)
    opt_level: int | None = None  # builder_optimization_level 0..5; None = TensorRT's default (3)
    timing_cache: Path | None = None  # default: <export>/tensorrt/timing.cache
    verbose: bool = False


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.I)


def parse_size(text: str | int) -> int:
    """'4G', '512M', '1.5GiB', '1073741824' -> bytes (binary units)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise InputError(f"--workspace: expected a size like 4G, 512M or a byte count, got {text!r}")
    value = float(m.group(1)) * 1024 ** "_KMGT".index(m.group(2).upper() or "_")
    if value < 1:
        raise InputError(f"--workspace must be positive, got {text!r}")
    return int(value)


def profile_axes(graph: str, max_batch: int, max_seq: int, opt_batch: int = 1, opt_prompt: int = 128) -> dict:
    """Named dynamic axis -> (min, opt, max) for one graph's optimisation profile."""
    ob = min(max(opt_batch, 1), max_batch)
    batch = (1, ob, max_batch)
    if graph == PREFILL:
        return {"batch": batch, "prompt": (1, min(max(opt_prompt, 1), max_seq), max_seq)}
    if graph == DECODE:
        return {"batch": batch, "max_seq": (max_seq, max_seq, max_seq)}
    raise ValueError(f"unknown graph {graph!r}")


def profile_shapes(spec: GraphSpec, axes: dict[str, tuple[int, int, int]]) -> dict[str, list[list[int]]]:
    """Input name -> [min, opt, max] shapes, static dims kept, named axes from `axes`."""
    out = {}
    for t in spec.inputs:
        shapes = []
        for k in range(3):
            shape = []
            for d in t.shape:
                if isinstance(d, str):
                    if d not in axes:
                        raise ArtifactError(f"{spec.name} input {t.name}: dynamic axis {d!r} has no profile range")
                    shape.append(int(axes[d][k]))
                else:
                    shape.append(int(d))
            shapes.append(shape)
        out[t.name] = shapes
    return out


def needs_function_strip(trt_version: str) -> bool:
    """TensorRT before 10.7 always inlines a model-local function: remove it to get the plugin."""
    return availability.version_tuple(trt_version)[:2] < PLUGIN_OVERRIDE_MIN


def strip_op_function(model) -> int:
    """Remove the plt::GatedSlidingWindowAttention FunctionProto from `model` (in place). Returns how many."""
    keep = [f for f in model.functions if not (f.domain == contract.OP_DOMAIN and f.name == contract.OP_NAME)]
    removed = len(model.functions) - len(keep)
    if removed:
        del model.functions[:]
        model.functions.extend(keep)
    return removed


def network_flags(trt) -> int:
    """STRONGLY_TYPED on TensorRT 10.x (11.x: always strongly typed, the flag is deprecated)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None or availability.version_tuple(trt.__version__)[:2] >= STRONGLY_TYPED_DEFAULT:
        return 0
    return 1 << int(flag)


def count_plugin_layers(trt, network) -> int:
    kinds = {getattr(trt.LayerType, k) for k in ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN") if hasattr(trt.LayerType, k)}
    return sum(network.get_layer(i).type in kinds for i in range(network.num_layers))


def parse_onnx(trt, builder, logger, onnx_path: Path, expect_plugin_nodes: int):
    """Network from the ONNX file with the plugin preferred over the local function. Returns (network, how)."""
    import onnx

    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    how = "no custom op"
    if expect_plugin_nodes and needs_function_strip(trt.__version__):
        model = onnx.load(str(onnx_path), load_external_data=False)
        strip_op_function(model)
        ok = parser.parse(model.SerializeToString(), str(onnx_path))  # path: where external data lives
        how = "local function stripped (TensorRT < 10.7)"
    else:
        flag = getattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE", None)
        if flag is not None:
            parser.set_flag(flag)
        ok = parser.parse_from_file(str(onnx_path))
        if expect_plugin_nodes:
            how = "plugin override (node plugin attributes + ENABLE_PLUGIN_OVERRIDE)"
    if not ok:
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        first = errors[0].splitlines()[0] if errors else "no error reported"
        raise ArtifactError(f"{onnx_path}: TensorRT's ONNX parser failed ({len(errors)} error(s)); first: {first}")
    n_plugin = count_plugin_layers(trt, network)
    if n_plugin < expect_plugin_nodes:
        raise ArtifactError(f"{onnx_path}: the parsed network has {n_plugin} plugin layer(s) for {expect_plugin_nodes} "
                            f"{contract.OP_NAME} node(s): TensorRT inlined the local function instead of using the "
                            "plugin; is the plugin library loaded and its creator registered?")
    return network, parser, how, n_plugin


def _timing_cache(trt, config, path: Path, log):
    """An ITimingCache from `path` (or empty, if absent or built elsewhere)."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if data and cache is None:
        log(f"ignoring unreadable timing cache {path}")
        cache = config.create_timing_cache(b"")
    return cache


def build_plan(trt, builder, logger, onnx_path: Path, spec: GraphSpec, axes: dict, dtype: str, opts: BuildOptions,
               cache, expect_plugin_nodes: int) -> tuple[bytes, dict, object]:
    network, _parser, how, n_plugin = parse_onnx(trt, builder, logger, onnx_path, expect_plugin_nodes)
    config = builder.create_builder_config()
    if opts.workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace)
    if opts.opt_level is not None:
        config.builder_optimization_level = opts.opt_level
    if dtype == "float32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 parity within 1e-4
    if not config.set_timing_cache(cache, False):  # built on another GPU/version: start a fresh one
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, True)
    shapes = profile_shapes(spec, axes)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ArtifactError(f"{onnx_path}: TensorRT could not build an engine (see the log above; try a larger "
                            "--workspace or smaller --max-batch/--max-seq)")
    info = {"profile": shapes, "plugin_layers": n_plugin, "function_handling": how,
            "build_seconds": round(time.perf_counter() - t0, 2)}
    return bytes(plan), info, config.get_timing_cache() or cache


def build_engines(export_dir: str | Path, plugin: str | Path | None = None, options: BuildOptions | None = None,
                  log=print) -> dict:
    """Library entry point of `plt-deploy build`. Returns the manifest's new "tensorrt" section."""
    from ..export.manifest import read_manifest

    trt = availability.require()
    opts = options or BuildOptions()
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    max_batch = opts.max_batch or manifest.max_batch
    max_seq = opts.max_seq or manifest.max_seq
    if not 1 <= max_batch <= manifest.max_batch:
        raise InputError(f"--max-batch must be in [1, {manifest.max_batch}] (the export's --max-batch), got {max_batch}")
    if not 2 <= max_seq <= manifest.max_seq:
        raise InputError(f"--max-seq must be in [2, {manifest.max_seq}] (the export's --max-seq), got {max_seq}")
    op_nodes = {g: int(manifest.data["graphs"][g].get("op_nodes", 0)) for g in GRAPHS}
    loaded = None
    if any(op_nodes.values()) or plugin:
        from .plugin import load_plugin

        loaded = load_plugin(trt, plugin)
        log(f"plugin: {loaded.path} (sha256 {loaded.sha256[:12]}..., {loaded.how})")

    logger = trt.Logger(trt.Logger.VERBOSE if opts.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    out_dir = export_dir / ENGINE_DIR
    out_dir.mkdir(exist_ok=True)
    cache_path = Path(opts.timing_cache) if opts.timing_cache else out_dir / TIMING_CACHE
    cache_config = builder.create_builder_config()  # kept alive: it created the shared timing cache
    cache = _timing_cache(trt, cache_config, cache_path, log)
    engines = {}
    for graph in GRAPHS:
        axes = profile_axes(graph, max_batch, max_seq, opts.opt_batch, opts.opt_prompt)
        log(f"building {graph} engine: " + ", ".join(f"{k} {lo}..{hi}" for k, (lo, _, hi) in axes.items()))
        plan, info, cache = build_plan(trt, builder, logger, manifest.graph_path(graph), manifest.graphs[graph], axes,
                                       manifest.dtype, opts, cache, op_nodes[graph])
        path = out_dir / f"{graph}.plan"
        atomic_write_bytes(path, plan)
        engines[graph] = {"file": f"{ENGINE_DIR}/{path.name}", "sha256": sha256_file(path), "bytes": path.stat().st_size,
                          "axes": {k: list(v) for k, v in axes.items()}, **info}
        log(f"  wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {info['build_seconds']} s)")
    atomic_write_bytes(cache_path, bytes(cache.serialize()))
    section = {
        "format": plan_check.SECTION_FORMAT,
        "version": availability.trt_version(trt),
        "compute_capability": availability.compute_capability(),
        "device": availability.device_name(),
        "plugin": None if loaded is None else {"path": str(loaded.path), "sha256": loaded.sha256},
        "engines": engines,
        "max_batch": max_batch,
        "max_seq": max_seq,
        "decode_cache_len": max_seq,
        "dtype": manifest.dtype,
        "strongly_typed": True,
        "tf32": manifest.dtype != "float32",  # float32 exports: TF32 off (parity within 1e-4)
        "workspace": opts.workspace,
        "opt_level": opts.opt_level,
        "timing_cache": str(cache_path.relative_to(export_dir)) if cache_path.is_relative_to(export_dir)
        else str(cache_path),
    }
    write_trt_section(export_dir, section)
    return section


def write_trt_section(folder: str | Path, section: dict) -> Path:
    """Add (or replace) the manifest's "tensorrt" section and rewrite it through manifest.write_manifest."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot update the manifest ({exc})") from None
    data[plan_check.SECTION] = section
    return write_manifest(folder, data)
