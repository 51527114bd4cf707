"""The TensorRT backend: an export folder with engines from `plt-deploy build` behind Backend.

Loading checks, in order, each with a one-line error: the export's manifest verifies and records
engines (a runtime loader never builds: an export without engines is refused with the
`plt-deploy build` command to run), TensorRT and a CUDA device are present (build.availability),
the plugin library is found and loaded and is the one the engines were built with, the plans were
built by this TensorRT version for this GPU's compute capability, and their sha256 match
(build.plan_check); every engine deserializes and its I/O matches the manifest with static output
shapes (an output with a -1 dimension would need an IOutputAllocator, which this backend does not
implement). An execution context TensorRT cannot create (None: out of device memory) is an
ArtifactError, not an AttributeError later.

A session (`TrtSession`) owns device-resident, preallocated caches: the decode step's inputs and
outputs are fixed device addresses, tokens and positions are copied into fixed device buffers,
and logits come back to the host as torch tensors.

In place: the decode graph writes every cache with ONNX TensorScatter, which TensorRT's parser
(>= 10.15) imports as IKVCacheUpdateLayer, whose output must share its cache input's device memory
(docs/tensorrt.md). The engine reports each such pair through `ICudaEngine.get_aliased_input_tensor`;
the session binds EVERY output the engine declares aliased to its input's buffer (as Polygraphy's
TrtRunner does), so each cache is ONE device buffer written one slot per step: KV bytes on the
device = `cache.kv_bytes_formula`. Loading refuses an engine that does not alias an output the
manifest marks `in_place` (built by an older TensorRT or from an older export). The one state output
that is not a cache, the carry (recomputed from itself), is written to a spare buffer and copied
back into its input buffer at the end of the step (a few hidden vectors).

CUDA graph: after the first decode step (TensorRT needs one enqueue after shapes are set), the
step (enqueue + carry copy) is captured once, since every address is fixed, and later steps only
copy tokens/positions and replay. If capture fails (some engines enqueue host syncs), the session
falls back to plain `execute_async_v3` and records why in `cuda_graph_error`.

Names: every tensor name comes from the manifest (found by role, state paired through alias_of,
shapes from `IOTensor.concrete`); none is spelled or derived here.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from ..errors import ArtifactError, InputError
from ..export.io_spec import state_inputs
from . import state as state_lib
from .base import Backend, DecoderSession, SessionLimits

_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64,
          "int32": torch.int32}
_TRT_DTYPE = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32"}


def decode_state(spec) -> dict[str, str]:
    """Decode graph: input name -> the output name that replaces it for the next step (alias_of)."""
    return {o.alias_of: o.name for o in spec.state_outputs()}


def on_device(method):
    """Run a session method with the session's GPU current in the calling thread: TensorRT enqueues on the
    current device, and a serving engine calls the session from its own thread (whose current device is 0)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with torch.cuda.device(self.device):
            return method(self, *args, **kwargs)
    return wrapper


def execution_context(engine, graph: str, stream):
    """A new execution context of `engine` on profile 0, or ArtifactError: TensorRT returns None (it
    logs why) when it cannot allocate the context's device memory."""
    ctx = engine.create_execution_context()
    if ctx is None:
        raise ArtifactError(f"TensorRT could not create a {graph} execution context (out of device memory? see the "
                            "TensorRT log above); free GPU memory or use a smaller --max-batch / --max-seq")
    ctx.set_optimization_profile_async(0, stream.cuda_stream)
    return ctx


def dynamic_outputs(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Output names with a -1 dimension once every input shape is set: data-dependent sizes, known only
    after enqueue, which would need an IOutputAllocator (shapes: name -> tuple(context.get_tensor_shape(name)))."""
    return [name for name, shape in shapes.items() if any(int(d) < 0 for d in shape)]


class TrtSession(DecoderSession):
    def __init__(self, backend: "TrtBackend", batch: int, max_seq: int):
        self.be, self.batch, self.max_seq = backend, batch, max_seq
        self.device = backend.device  # the GPU the engines were deserialized on (Triton: the instance's)
        self.stream = torch.cuda.Stream(self.device)
        T = backend.cache_len  # the decode engine's fixed cache length (>= max_seq)
        spec = backend.manifest.graphs["decode"]
        self._spec = spec
        self._sizes = {"batch": batch, "max_seq": T}
        self._present = decode_state(spec)  # past input -> present output
        self._io = {"tokens": spec.one("tokens").name, "position": spec.one("position").name,
                    "logits": spec.one("logits", "outputs").name}
        dt = _TORCH[backend.manifest.dtype]
        self._bufs: dict[str, torch.Tensor] = {}  # past input -> its one device buffer
        self._roles = {t.name: t.role for t in spec.inputs if t.name in self._present}
        self._spare: dict[str, torch.Tensor] = {}  # past input -> output buffer of a non-aliased state (carry)
        with torch.cuda.stream(self.stream):
            for t in spec.inputs:
                if t.name not in self._present:  # tokens, position: fixed buffers below
                    continue
                self._bufs[t.name] = torch.zeros(t.concrete(self._sizes), dtype=dt, device=self.device)
                if self._present[t.name] not in backend.aliases:
                    self._spare[t.name] = torch.zeros_like(self._bufs[t.name])
            self._tokens = torch.zeros(batch, dtype=torch.int64, device=self.device)
            self._position = torch.zeros(batch, dtype=torch.int64, device=self.device)
            self._logits = torch.empty(batch, backend.config.vocab_size, dtype=dt, device=self.device)
        self.stream.synchronize()
        ctx = execution_context(backend.engines["decode"], "decode", self.stream)
        for t in spec.inputs:
            if not ctx.set_input_shape(t.name, t.concrete(self._sizes)):
                raise InputError(f"decode engine rejects {t.name} of shape {t.concrete(self._sizes)} (outside its "
                                 "profile; rebuild with a larger --max-batch)")
        self._ctx = ctx
        self._bind()
        self._prefill_ctx = None
        self._lengths = torch.zeros(batch, dtype=torch.int64)
        self._steps = 0
        self._graph = None
        self.cuda_graph = backend.cuda_graph
        self.cuda_graph_error: str | None = None

    @property
    def lengths(self) -> torch.Tensor:
        return self._lengths

    def kv_bytes(self) -> int:
        """Device bytes of the cache buffers (one per cache), carry excluded."""
        return sum(a.numel() * a.element_size() for name, a in self._bufs.items() if self._roles[name] != "carry")

    def buffer_addresses(self) -> dict[str, int]:
        """Tensor name -> the device address bound for it (aliased outputs share their input's)."""
        return {name: int(self._ctx.get_tensor_address(name)) for name in (*self._present, *self._present.values())}

    # -- extend (prefill from any position) ------------------------------------------------------
    def _prefill_context(self):
        """The prefill engine's execution context, created on first use."""
        if self._prefill_ctx is None:
            self._prefill_ctx = execution_context(self.be.engines["prefill"], "prefill", self.stream)
        return self._prefill_ctx

    def state(self):
        return self._bufs, self._roles

    @on_device
    def _extend(self, rows, tokens, lengths, start_pos):
        """The prefill engine on the listed rows' state (state.rows_of at the engines' fixed cache length:
        views of the session's buffers for consecutive rows whose address TensorRT accepts, 256-byte
        aligned; copies otherwise). Its K/V writes are KVCacheUpdate layers bound to their input, the
        rings and carry go to new buffers; what is not a view is written back (state.write_rows), the
        other rows untouched. Work queued on the caller's stream (base.py's held rows, save/load_slot)
        is waited for first."""
        spec = self.be.manifest.graphs["prefill"]
        ctx = self._prefill_context()
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            dev_rows = rows.to(self.device)
            part = state_lib.rows_of(self._bufs, self._roles, dev_rows, self.be.cache_len, align=256)
            host = {"tokens": tokens, "lengths": lengths, "start": start_pos}
            held = state_inputs(spec, self._spec)  # prefill input -> the decode input (buffer) it reads
            feeds = {t.name: host[t.role].to(self.device, torch.int64).contiguous() if t.role in host
                     else part[held[t.name]] for t in spec.inputs}
            for t in spec.inputs:
                x = feeds[t.name]
                if not ctx.set_input_shape(t.name, tuple(x.shape)):
                    raise InputError(f"prefill engine rejects {t.name} of shape {tuple(x.shape)} (outside its profile)")
                ctx.set_tensor_address(t.name, x.data_ptr())
            outs = {}
            for t in spec.outputs:
                alias = self.be.prefill_aliases.get(t.name)  # a prefill input name
                if alias is not None:  # written in place of its input (KVCacheUpdate)
                    ctx.set_tensor_address(t.name, feeds[alias].data_ptr())
                    continue
                outs[t.name] = torch.empty(tuple(ctx.get_tensor_shape(t.name)), dtype=_TORCH[t.dtype],
                                           device=self.device)
                ctx.set_tensor_address(t.name, outs[t.name].data_ptr())
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise ArtifactError("TensorRT prefill enqueue failed (see the TensorRT log above)")
            for t in spec.state_outputs():
                if t.name in outs:  # rings and carry: rewritten whole
                    part[t.alias_of] = outs[t.name]
            state_lib.write_rows(self._bufs, self._roles, dev_rows, part, int(start_pos.min()))
            logits = outs[spec.one("logits", "outputs").name].float().cpu()  # [k, V]; synchronises the stream
        return logits

    # -- decode --------------------------------------------------------------------------------
    def _bind(self) -> None:
        """Every address once: aliased outputs on their input's buffer, the carry on its spare."""
        ctx, aliases = self._ctx, self.be.aliases
        ctx.set_tensor_address(self._io["tokens"], self._tokens.data_ptr())
        ctx.set_tensor_address(self._io["position"], self._position.data_ptr())
        ctx.set_tensor_address(self._io["logits"], self._logits.data_ptr())
        for past, present in self._present.items():
            ctx.set_tensor_address(past, self._bufs[past].data_ptr())
        for present, past in aliases.items():  # every engine-declared alias, not only the manifest's
            if not ctx.set_tensor_address(present, self._bufs[past].data_ptr()):
                raise ArtifactError(f"TensorRT refused the address of {present} (aliased to {past})")
        for past, spare in self._spare.items():
            ctx.set_tensor_address(self._present[past], spare.data_ptr())

    def _step(self) -> None:
        """One decode enqueue on self.stream: caches written in place, the carry copied back."""
        if not self._ctx.execute_async_v3(self.stream.cuda_stream):
            raise ArtifactError("TensorRT decode enqueue failed (see the TensorRT log above)")
        for past, spare in self._spare.items():
            self._bufs[past].copy_(spare)

    def _capture(self) -> None:
        """One CUDA graph of the step (all addresses fixed); on failure fall back to plain enqueues and say why."""
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, stream=self.stream, capture_error_mode="thread_local"):
                self._step()
            self._graph = g
        except Exception as exc:  # noqa: BLE001  (capture errors come from CUDA, torch or TensorRT)
            self._graph = None
            self.cuda_graph = False
            self.cuda_graph_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    @on_device
    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        # base.py's _hold/_release and save/load_slot run on the caller's stream: wait for them
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            self._tokens.copy_(tokens.reshape(-1).to(torch.int64))
            self._position.copy_(self._lengths)
            if self._graph is not None:
                self._graph.replay()
            else:
                self._step()
            logits = self._logits.float().cpu()  # synchronises the stream
        self._steps += 1
        if self.cuda_graph and self._graph is None and self._steps == 1:
            self._capture()  # after the first real enqueue; capturing does not run anything
        return logits

    def close(self) -> None:
        self._graph = None
        self._ctx = self._prefill_ctx = None
        self._bufs, self._spare = {}, {}


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, export_dir: str | Path, plugin: str | Path | None = None, cuda_graph: bool = True,
                 verify_hashes: bool = True, device: int | None = None):
        from ..build import availability, plan_check
        from ..export.manifest import read_manifest

        export_dir = Path(export_dir)
        manifest = read_manifest(export_dir, verify_hashes=verify_hashes)
        where = export_dir / "manifest.json"
        section = plan_check.trt_section(manifest.data, where)  # no engines: one line naming `plt-deploy build`
        trt = availability.require()
        self.trt, self.cuda_graph = trt, cuda_graph
        # device: a CUDA ordinal (Triton's model_instance_device_id); None = the current device.
        self.device = torch.device("cuda", torch.cuda.current_device() if device is None else int(device))
        self.manifest, self.config = manifest, manifest.config
        self.tokenizer_dir = str(export_dir)  # the tokenizer files export copied (none: the byte tokenizer)
        self.plugin = None
        if section.get("plugin"):
            from ..build.plugin import ENV_VAR, load_plugin

            recorded = Path(section["plugin"]["path"])
            explicit = plugin or (None if os.environ.get(ENV_VAR) or not recorded.is_file() else recorded)
            self.plugin = load_plugin(trt, explicit)
        self.section, plans = plan_check.check_all(
            export_dir, manifest.data, availability.trt_version(trt), availability.compute_capability(self.device.index),
            self.plugin.sha256 if self.plugin else None, self.plugin.path if self.plugin else None, verify_hashes)
        self.cache_len = int(self.section["decode_cache_len"])
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engines = {}
        for graph, path in plans.items():
            with torch.cuda.device(self.device):  # an engine lives on the device it is deserialized on
                engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
                if engine is None:
                    raise ArtifactError(f"{path}: TensorRT could not deserialize the plan (see the log above); "
                                        f"rebuild with `plt-deploy build --onnx {export_dir}`")
                self._check_io(engine, graph, path)
            self.engines[graph] = engine
        self.aliases = engine_aliases(self.trt, self.engines["decode"])  # output -> input sharing its memory
        check_aliases(self.aliases, manifest.graphs["decode"], manifest.graphs["decode"], plans["decode"])
        self.prefill_aliases = engine_aliases(self.trt, self.engines["prefill"])
        check_aliases(self.prefill_aliases, manifest.graphs["prefill"], manifest.graphs["decode"], plans["prefill"])

    def _check_io(self, engine, graph: str, path: Path) -> None:
        """The plan's I/O names, directions and dtypes are the manifest's; no output has a data-dependent (-1) dim."""
        trt, spec = self.trt, self.manifest.graphs[graph]
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        for t, mode in [(t, trt.TensorIOMode.INPUT) for t in spec.inputs] + \
                       [(t, trt.TensorIOMode.OUTPUT) for t in spec.outputs]:
            if t.name not in names or engine.get_tensor_mode(t.name) != mode:
                raise ArtifactError(f"{path}: engine has no {mode.name.lower()} {t.name!r}; it was built from another "
                                    "export: rebuild with `plt-deploy build`")
            got = _TRT_DTYPE.get(engine.get_tensor_dtype(t.name).name, engine.get_tensor_dtype(t.name).name)
            if got != t.dtype:
                raise ArtifactError(f"{path}: {t.name} is {got} in the engine, {t.dtype} in the manifest; rebuild "
                                    "with `plt-deploy build`")
        # The engine's own output shapes carry -1 for every dynamic input dim too; only a context with all
        # input shapes set (profile max; USER_MANAGED: no device memory) leaves -1 on data-dependent dims.
        ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if ctx is None:
            raise ArtifactError(f"{path}: TensorRT could not create an execution context (see the log above)")
        for t in spec.inputs:
            ctx.set_input_shape(t.name, tuple(engine.get_tensor_profile_shape(t.name, 0)[2]))
        dynamic = dynamic_outputs({t.name: tuple(ctx.get_tensor_shape(t.name)) for t in spec.outputs})
        del ctx
        if dynamic:
            raise ArtifactError(f"{path}: output {dynamic[0]} has a data-dependent (-1) dimension, which needs an output "
                                "allocator this backend does not have; rebuild the engine from this plt-deploy's export")

    @property
    def limits(self) -> SessionLimits:
        return engine_limits(self.manifest, self.section)

    def start(self, batch: int, max_seq: int) -> TrtSession:
        self.limits.check(batch, max_seq)
        with torch.cuda.device(self.device):  # its buffers, stream and execution contexts on the backend's GPU
            return TrtSession(self, batch, max_seq)

    def close(self) -> None:
        self.engines.clear()
        self._runtime = None


def engine_aliases(trt, engine) -> dict[str, str]:
    """Every output the engine declares aliased to an input (IKVCacheUpdateLayer: TensorRT >= 10.15)."""
    get_alias = getattr(engine, "get_aliased_input_tensor", None)
    out = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if get_alias is not None and engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            alias = get_alias(name)
            if alias:
                out[name] = alias
    return out


def check_aliases(aliases: dict[str, str], spec, decode, where) -> None:
    """Every `in_place` output of the manifest must be aliased by the engine to this graph's input
    holding its alias_of state; otherwise the caches would need a second buffer (the engine was not
    built from TensorScatter)."""
    own = {held: name for name, held in state_inputs(spec, decode).items()}  # decode input -> spec's input
    for o in spec.state_outputs():
        if o.in_place and aliases.get(o.name) != own[o.alias_of]:
            raise ArtifactError(f"{where}: the engine does not write {o.name} in place of {o.alias_of} "
                                f"(aliased to {aliases.get(o.name)!r}); it needs TensorRT >= 10.15 and an export "
                                "with TensorScatter cache writes: re-export, then `plt-deploy build`")


def engine_limits(manifest, section: dict) -> SessionLimits:
    """A session's limits from the export's manifest and its `plt-deploy build` section (no TensorRT needed)."""
    from .base import DTYPE_BYTES, MODEL_MAX_SEQ_SOURCE

    cfg, cache_len = manifest.config, int(section["decode_cache_len"])
    return SessionLimits(cfg, DTYPE_BYTES[manifest.dtype], min(cache_len, cfg.max_seq_len),
                         "the engines' --max-seq" if cache_len < cfg.max_seq_len else MODEL_MAX_SEQ_SOURCE,
                         int(section["max_batch"]), "the engines' --max-batch")


def load(path, plugin: str | None = None, cuda_graph: bool = True, verify_hashes: bool = True,
         device: int | None = None, **_ignored) -> TrtBackend:
    """An export folder with engines from `plt-deploy build` on TensorRT (never builds them: loading an
    export without engines fails in one line naming the build command).
    verify_hashes=False only when the caller has just verified the export's files itself."""
    return TrtBackend(path, plugin=plugin, cuda_graph=cuda_graph, verify_hashes=verify_hashes, device=device)
