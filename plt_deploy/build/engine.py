"""Build TensorRT engines from an export folder: `plt-deploy build --onnx export/NAME`.

For each graph (prefill, decode), through Polygraphy's loaders: `NetworkFromOnnxPath` parses the
ONNX file (strongly typed), `CreateConfig` holds the one optimisation profile, the shared timing
cache and the workspace limit, `EngineBytesFromNetwork` builds the plan, written to
`tensorrt/<graph>.plan` inside the export folder. Between parsing and building, the project's own
check: the network must hold exactly one PLUGIN_V3 layer of GatedSlidingWindowAttention (version,
namespace "plt") per G-SWA node and no other plugin layer. Then the manifest gets a "tensorrt"
section (TensorRT version, compute capability, plugin sha256, engine files with sha256, profiles),
and loading refuses plans built elsewhere (plan_check.py).

TensorRT version: the exports use opset-23 ops (Attention, RMSNormalization) that TensorRT's ONNX
parser imports from 10.15 (PARSER_OP_MIN); an older TensorRT is refused before parsing, in one line.

Plugin vs function (FACTS.md): every G-SWA node carries `plugin_namespace`/`plugin_version`, so
the parser (10.7+) uses the registered plugin instead of the model-local function. No parser flag:
`OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE` applies to every node, and once the standard plugin library
is initialised (Polygraphy's loaders call `init_libnvinfer_plugins`) it would turn the decode
graph's cache writes (ScatterElements before issue 16) into legacy plugin layers.

Profiles: prefill (extend) batch 1..max_batch x prompt 1..max_seq with its state inputs at the
cache length max_seq; decode batch 1..max_batch with the cache length fixed at max_seq (shapes
never change between decode steps: CUDA-graph friendly). That length is made static in the parsed
networks (`pin_fixed_axes`): both graphs write the K/V caches (decode: every cache)
with ONNX TensorScatter, which the parser imports as IKVCacheUpdateLayer, whose cache input must be
a network input with a static sequence dim; its output then shares the input's memory
(`ICudaEngine.get_aliased_input_tensor`), which the runtime binds (backends/trt_backend.py).
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
from ..config import MIN_EXPORT_SEQ
from ..errors import ArtifactError, InputError
from ..export.io_spec import DECODE, GRAPHS, PREFILL, GraphSpec
from ..export.manifest import ENGINE_DIR, MANIFEST_FILE, TIMING_CACHE, sha256_file, write_manifest
from ..ops import contract
from . import availability, plan_check

STRONGLY_TYPED_DEFAULT = (11, 0)  # TensorRT 11 networks are always strongly typed
# Standard ONNX ops of recent opsets the exports use, and the first TensorRT whose ONNX parser imports
# them (TensorRT's CHANGELOG: Attention in 10.14; RMSNormalization, RotaryEmbedding, TensorScatter in 10.15).
PARSER_OP_MIN = {"Attention": (10, 14), "RMSNormalization": (10, 15), "RotaryEmbedding": (10, 15),
                 "TensorScatter": (10, 15)}
# onnx-tensorrt docs/operators.md (TensorRT 10.15): opsets 9..24; Attention without past_key /
# past_value / nonpad_kv_seqlen inputs, only its first output, no softcap or qk_matmul_output_mode.
PARSER_MAX_OPSET = 24
ATTENTION_UNSUPPORTED_INPUTS = {4: "past_key", 5: "past_value", 6: "nonpad_kv_seqlen"}
ATTENTION_UNSUPPORTED_ATTRS = ("softcap", "qk_matmul_output_mode")  # any non-zero value


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
    if graph == PREFILL:  # extend: the state at the full cache length too (its K/V are TensorScatters)
        return {"batch": batch, "prompt": (1, min(max(opt_prompt, 1), max_seq), max_seq),
                "max_seq": (max_seq, max_seq, max_seq)}
    if graph == DECODE:
        return {"batch": batch, "max_seq": (max_seq, max_seq, max_seq)}
    raise ValueError(f"unknown graph {graph!r}")


def profile_shapes(spec: GraphSpec, axes: dict[str, tuple[int, int, int]]) -> dict[str, list[list[int]]]:
    """Input name -> [min, opt, max] shapes, static dims kept, named axes from `axes`."""
    out = {}
    for t in spec.inputs:
        missing = [d for d in t.shape if isinstance(d, str) and d not in axes]
        if missing:
            raise ArtifactError(f"{spec.name} input {t.name}: dynamic axis {missing[0]!r} has no profile range")
        out[t.name] = [list(t.concrete({k: v[i] for k, v in axes.items()})) for i in range(3)]
    return out


def pin_fixed_axes(network, spec: GraphSpec, axes: dict[str, tuple[int, int, int]]) -> list[str]:
    """Make every network input dim whose profile range is one value (both graphs' cache length max_seq)
    static in the network itself: IKVCacheUpdateLayer, which TensorRT's parser makes of each
    TensorScatter, needs its cache input's sequence dim static (docs/tensorrt.md). Returns the
    inputs changed."""
    fixed = {name: lo for name, (lo, _, hi) in axes.items() if lo == hi}
    by_name = {t.name: t for t in spec.inputs}
    changed = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        t = by_name.get(tensor.name)
        if t is None or not any(isinstance(d, str) and d in fixed for d in t.shape):
            continue
        tensor.shape = tuple(fixed[d] if isinstance(d, str) and d in fixed else (-1 if isinstance(d, str) else d)
                             for d in t.shape)
        changed.append(tensor.name)
    return changed


def check_parser_support(model, trt_version: str, where: str | Path) -> None:
    """Refuse, before parsing, a graph this TensorRT's ONNX parser cannot import (PARSER_OP_MIN: the
    exports' causal attention is ONNX Attention, their norms RMSNormalization, both opset 23, their
    decode cache writes TensorScatter, opset 24)."""
    import onnx

    have = availability.version_tuple(trt_version)[:2]
    used = {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}
    missing = sorted(op for op in used & set(PARSER_OP_MIN) if have < PARSER_OP_MIN[op])
    if missing:
        need = ".".join(map(str, max(PARSER_OP_MIN[op] for op in missing)))
        raise ArtifactError(f"{where}: uses ONNX {', '.join(missing)} (opsets 23-24), which TensorRT's ONNX parser imports "
                            f"from TensorRT {need}; this is TensorRT {trt_version}: pip install 'tensorrt>={need}'")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > PARSER_MAX_OPSET:
        raise ArtifactError(f"{where}: ONNX opset {opset}; TensorRT's ONNX parser imports opsets up to "
                            f"{PARSER_MAX_OPSET}: re-export with --opset {PARSER_MAX_OPSET}")
    for n in model.graph.node:
        if n.op_type != "Attention" or n.domain not in ("", "ai.onnx"):
            continue
        bad = [name for i, name in ATTENTION_UNSUPPORTED_INPUTS.items() if i < len(n.input) and n.input[i]]
        bad += [f"output {i}" for i, o in enumerate(n.output) if i > 0 and o]
        bad += [a.name for a in n.attribute if a.name in ATTENTION_UNSUPPORTED_ATTRS and onnx.helper.get_attribute_value(a)]
        if bad:
            raise ArtifactError(f"{where}: Attention node {n.name or n.output[0]!r} uses {', '.join(bad)}, which "
                                "TensorRT's ONNX parser does not import (onnx-tensorrt operators.md)")


def strongly_typed(trt) -> bool:
    """Ask for STRONGLY_TYPED on TensorRT 10.x; 11.x networks always are (the flag is deprecated there)."""
    return (hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
            and availability.version_tuple(trt.__version__)[:2] < STRONGLY_TYPED_DEFAULT)


@dataclass(frozen=True)
class PluginLayer:
    kind: str  # TensorRT LayerType name: PLUGIN_V3, PLUGIN_V2, PLUGIN
    name: str
    version: str
    namespace: str


GSWA_LAYER = PluginLayer("PLUGIN_V3", contract.OP_NAME, str(contract.OP_VERSION), contract.PLUGIN_NAMESPACE)


def plugin_layers(trt, network) -> list[PluginLayer]:
    """Every plugin layer of a parsed network, with the plugin it runs."""
    out = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = layer.type.name
        if kind == "PLUGIN_V3":
            layer.__class__ = trt.IPluginV3Layer
            core = layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
            out.append(PluginLayer(kind, str(core.plugin_name), str(core.plugin_version), str(core.plugin_namespace)))
        elif kind in ("PLUGIN_V2", "PLUGIN"):
            layer.__class__ = trt.IPluginV2Layer
            p = layer.plugin
            out.append(PluginLayer(kind, str(p.plugin_type), str(p.plugin_version), str(p.plugin_namespace)))
    return out


def check_plugin_layers(layers: list[PluginLayer], expected: int, where: str | Path) -> None:
    """Exactly `expected` G-SWA PLUGIN_V3 layers (one per G-SWA node) and no other plugin layer."""
    others = [f"{p.kind} {p.name} v{p.version} ns {p.namespace!r}" for p in layers if p != GSWA_LAYER]
    if others:
        raise ArtifactError(f"{where}: the parsed network holds plugin layers that are not G-SWA ({', '.join(others)}); "
                            "TensorRT turned ONNX nodes into plugins (was OnnxParserFlag.ENABLE_PLUGIN_OVERRIDE set, "
                            "or a creator registered under the G-SWA name?); such a plan would need TensorRT's "
                            "standard plugin library at load time")
    n = len(layers)
    if n != expected:
        why = ("TensorRT inlined the local function instead of using the plugin; is the plugin library loaded "
               "and its creator registered under namespace 'plt'?") if n < expected else "more layers than nodes"
        raise ArtifactError(f"{where}: the parsed network has {n} {contract.OP_NAME} plugin layer(s) for {expected} "
                            f"{contract.OP_NAME} node(s): {why}")


def _one_line(exc: Exception) -> str:
    """The first non-empty line of a Polygraphy error (details went to the log above it)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def parse_network(trt, onnx_path: Path, expect_plugin_nodes: int):
    """(builder, network, parser) from Polygraphy's NetworkFromOnnxPath, plugin layers checked."""
    import onnx
    from polygraphy.backend.trt import NetworkFromOnnxPath
    from polygraphy.exception import PolygraphyException

    check_parser_support(onnx.load(str(onnx_path), load_external_data=False), trt.__version__, onnx_path)
    how = "plugin (node plugin_namespace)" if expect_plugin_nodes else "no custom op"
    try:
        builder, network, parser = NetworkFromOnnxPath(str(onnx_path), strongly_typed=strongly_typed(trt))()
    except PolygraphyException as exc:
        raise ArtifactError(f"{onnx_path}: TensorRT's ONNX parser failed: {_one_line(exc)}") from None
    layers = plugin_layers(trt, network)
    check_plugin_layers(layers, expect_plugin_nodes, onnx_path)
    return (builder, network, parser), how, len(layers)


def build_plan(trt, onnx_path: Path, spec: GraphSpec, axes: dict, dtype: str, opts: BuildOptions,
               cache: bytes, expect_plugin_nodes: int) -> tuple[bytes, dict, bytes]:
    """One plan through Polygraphy's loaders. `cache` is the timing cache's bytes (b"": none); returns
    (plan, manifest info, updated timing cache bytes)."""
    import io

    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, Profile
    from polygraphy.exception import PolygraphyException

    network, how, n_plugin = parse_network(trt, onnx_path, expect_plugin_nodes)
    pin_fixed_axes(network[1], spec, axes)
    shapes = profile_shapes(spec, axes)
    profile = Profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.add(name, min=lo, opt=opt, max=hi)
    config = CreateConfig(
        tf32=dtype != "float32",  # fp32 parity within 1e-4
        profiles=[profile],
        load_timing_cache=io.BytesIO(cache) if cache else None,  # file-like: no lock files
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: opts.workspace} if opts.workspace else None,
        builder_optimization_level=opts.opt_level,
    )
    saved = io.BytesIO()
    t0 = time.perf_counter()
    try:
        plan = EngineBytesFromNetwork(network, config=config, save_timing_cache=saved)()
    except PolygraphyException as exc:
        raise ArtifactError(f"{onnx_path}: TensorRT could not build an engine ({_one_line(exc)}); try a larger "
                            "--workspace or smaller --max-batch/--max-seq (--verbose shows the build log)") from None
    info = {"profile": shapes, "plugin_layers": n_plugin, "function_handling": how,
            "build_seconds": round(time.perf_counter() - t0, 2)}
    return bytes(plan), info, saved.getvalue() or cache


def timing_cache_bytes(path: Path, previous: dict | None, version: str, cc: str, log) -> bytes:
    """The timing cache to start from: empty if absent or recorded for another TensorRT version or GPU."""
    if not path.is_file():
        return b""
    if previous and (str(previous.get("version")) != version or str(previous.get("compute_capability")) != cc):
        log(f"ignoring timing cache {path}: built with TensorRT {previous.get('version')} on compute capability "
            f"{previous.get('compute_capability')}")
        return b""
    return path.read_bytes()


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
    if not MIN_EXPORT_SEQ <= max_seq <= manifest.max_seq:
        raise InputError(f"--max-seq must be in [{MIN_EXPORT_SEQ}, {manifest.max_seq}] (the export's --max-seq), "
                         f"got {max_seq}")
    op_nodes = {g: int(manifest.data["graphs"][g].get("op_nodes", 0)) for g in GRAPHS}
    loaded = None
    if any(op_nodes.values()) or plugin:
        from .plugin import load_plugin

        loaded = load_plugin(trt, plugin)
        log(f"plugin: {loaded.path} (sha256 {loaded.sha256[:12]}..., {loaded.how})")

    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.VERBOSE if opts.verbose else G_LOGGER.WARNING
    out_dir = export_dir / ENGINE_DIR
    out_dir.mkdir(exist_ok=True)
    cache_path = Path(opts.timing_cache) if opts.timing_cache else out_dir / TIMING_CACHE
    version, cc = availability.trt_version(trt), availability.compute_capability()
    cache = timing_cache_bytes(cache_path, manifest.data.get(plan_check.SECTION), version, cc, log)
    engines = {}
    for graph in GRAPHS:
        axes = profile_axes(graph, max_batch, max_seq, opts.opt_batch, opts.opt_prompt)
        log(f"building {graph} engine: " + ", ".join(f"{k} {lo}..{hi}" for k, (lo, _, hi) in axes.items()))
        plan, info, cache = build_plan(trt, manifest.graph_path(graph), manifest.graphs[graph], axes, manifest.dtype,
                                       opts, cache, op_nodes[graph])
        path = out_dir / f"{graph}.plan"
        atomic_write_bytes(path, plan)
        engines[graph] = {"file": f"{ENGINE_DIR}/{path.name}", "sha256": sha256_file(path), "bytes": path.stat().st_size,
                          "axes": {k: list(v) for k, v in axes.items()}, **info}
        log(f"  wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {info['build_seconds']} s)")
    if cache:
        atomic_write_bytes(cache_path, cache)
    section = {
        "format": plan_check.SECTION_FORMAT,
        "version": version,
        "compute_capability": cc,
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
