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

In place or not: TensorRT documents output-to-input aliasing only for layers that declare it
(IKVCacheUpdateLayer, TensorRT >= 10.15, reported by `ICudaEngine.get_aliased_input_tensor`; and
plugins through IPluginV3OneBuildV2::getAliasedInput behind a preview feature). Our decode graph
writes the caches with ONNX ScatterElements, which TensorRT lowers to an ordinary layer that copies
`data` into its output and then scatters; binding present_* to the SAME address as past_* is not
a documented contract (the copy would have src == dst, and other layers read past_* in the same
enqueue). So by default each cache has two device buffers and the step alternates between them
("ping-pong"): step k reads set k%2 and writes set (k+1)%2; no host copy and no extra device copy
beyond the one the scatter layer does anyway, at the cost of twice the cache memory. Outputs the
engine itself reports as aliased (get_aliased_input_tensor == alias_of) share one buffer.

CUDA graphs: after the first decode step (TensorRT needs one enqueue after shapes are set), the
step is captured once per parity (two graphs, since the ping-pong alternates addresses) and later
steps only copy tokens/positions and replay. If capture fails (some engines enqueue host syncs),
the session falls back to plain `execute_async_v3` and records why in `cuda_graph_error`.

Names: every tensor name comes from the manifest (found by role, state paired through alias_of,
shapes from `IOTensor.concrete`); none is spelled or derived here.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from ..errors import ArtifactError, InputError
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
        self._sets: list[dict[str, torch.Tensor]] = [{}, {}]
        with torch.cuda.stream(self.stream):
            for t in spec.inputs:
                if t.name not in self._present:  # tokens, position: fixed buffers below
                    continue
                a = torch.zeros(t.concrete(self._sizes), dtype=dt, device=self.device)
                self._sets[0][t.name] = a
                self._sets[1][t.name] = a if self._present[t.name] in backend.aliased else torch.zeros_like(a)
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
        self._prefill_ctx = None
        self._cur = 0  # which buffer set holds the current past_*
        self._lengths = torch.zeros(batch, dtype=torch.int64)
        self._prefilled = False
        self._steps = 0
        self._graphs: list | None = None
        self.cuda_graph = backend.cuda_graph
        self.cuda_graph_error: str | None = None

    @property
    def lengths(self) -> torch.Tensor:
        return self._lengths

    def kv_bytes(self) -> int:
        """Device bytes of the cache buffers (both ping-pong sets), carry excluded."""
        seen, total = set(), 0
        for s in self._sets:
            for name, a in s.items():
                role = next(t.role for t in self._spec.inputs if t.name == name)
                if role != "carry" and a.data_ptr() not in seen:
                    seen.add(a.data_ptr())
                    total += a.numel() * a.element_size()
        return total

    # -- prefill -------------------------------------------------------------------------------
    def _prefill_context(self):
        """The prefill engine's execution context, created on first use."""
        if self._prefill_ctx is None:
            self._prefill_ctx = execution_context(self.be.engines["prefill"], "prefill", self.stream)
        return self._prefill_ctx

    @on_device
    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        self.check_prefill(tokens)
        _, S = tokens.shape
        spec = self.be.manifest.graphs["prefill"]
        ctx = self._prefill_context()
        with torch.cuda.stream(self.stream):
            feeds = {spec.one("tokens").name: tokens.to(self.device, torch.int64),
                     spec.one("lengths").name: lengths.to(self.device, torch.int64)}
            for t in spec.inputs:
                x = feeds[t.name].contiguous()
                feeds[t.name] = x
                if not ctx.set_input_shape(t.name, tuple(x.shape)):
                    raise InputError(f"prefill engine rejects {t.name} of shape {tuple(x.shape)} (outside its profile)")
                ctx.set_tensor_address(t.name, x.data_ptr())
            outs = {}
            for t in spec.outputs:
                shape = tuple(ctx.get_tensor_shape(t.name))
                outs[t.name] = torch.empty(shape, dtype=_TORCH[t.dtype], device=self.device)
                ctx.set_tensor_address(t.name, outs[t.name].data_ptr())
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise ArtifactError("TensorRT prefill enqueue failed (see the TensorRT log above)")
            live = self._sets[self._cur]
            for t in spec.state_outputs():
                buf = live[t.alias_of]  # the decode input this prefill output initialises
                if t.role in ("key", "value"):  # [B, Hkv, S, D] -> slots 0..S-1 of [B, Hkv, T, D]
                    buf.zero_()
                    buf[:, :, :S].copy_(outs[t.name])
                else:
                    buf.copy_(outs[t.name])
            logits = outs[spec.one("logits", "outputs").name].float().cpu()  # [B, V]: each prompt's last real token
        self._lengths = lengths.clone().to(torch.int64)
        self._prefilled = True
        return logits

    # -- slots (serving): prefill k prompts into rows of the running session ----------------------
    def _run_prefill_engine(self, tokens: torch.Tensor, lengths: torch.Tensor):
        """Enqueue the prefill engine on tokens [k, S] (on self.stream) -> (outputs by name, the
        input tensors, which must stay alive until the stream has run)."""
        spec = self.be.manifest.graphs["prefill"]
        ctx = self._prefill_context()
        feeds = {spec.one("tokens").name: tokens.to(self.device, torch.int64).contiguous(),
                 spec.one("lengths").name: lengths.to(self.device, torch.int64).contiguous()}
        for t in spec.inputs:
            x = feeds[t.name]
            if not ctx.set_input_shape(t.name, tuple(x.shape)):
                raise InputError(f"prefill engine rejects {t.name} of shape {tuple(x.shape)} (outside its profile)")
            ctx.set_tensor_address(t.name, x.data_ptr())
        outs = {}
        for t in spec.outputs:
            outs[t.name] = torch.empty(tuple(ctx.get_tensor_shape(t.name)), dtype=_TORCH[t.dtype], device=self.device)
            ctx.set_tensor_address(t.name, outs[t.name].data_ptr())
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise ArtifactError("TensorRT prefill enqueue failed (see the TensorRT log above)")
        return outs, feeds

    @on_device
    def prefill_slots(self, slots: list[int], tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Prefill k prompts; their caches are written into rows `slots` of the live buffers (the
        set the next decode reads), the other rows untouched -> last-token logits [k, V]."""
        self.check_slots(slots, tokens, lengths)
        _, S = tokens.shape
        spec = self.be.manifest.graphs["prefill"]
        with torch.cuda.stream(self.stream):
            outs, _feeds = self._run_prefill_engine(tokens, lengths)
            rows = torch.tensor(slots, dtype=torch.int64, device=self.device)
            live = self._sets[self._cur]
            for t in spec.state_outputs():
                buf = live[t.alias_of]  # the decode input this prefill output initialises
                if t.role in ("key", "value"):  # [k, Hkv, S, D] -> rows of [B, Hkv, T, D]
                    buf[rows] = 0
                    buf[rows, :, :S] = outs[t.name]
                else:
                    buf[rows] = outs[t.name]
            logits = outs[spec.one("logits", "outputs").name].float().cpu()  # [k, V]; synchronises the stream
        self._lengths[torch.tensor(slots, dtype=torch.int64)] = lengths.to(torch.int64)
        self._prefilled = True
        return logits

    # -- decode --------------------------------------------------------------------------------
    def _bind(self, parity: int) -> None:
        ctx, src, dst = self._ctx, self._sets[parity], self._sets[1 - parity]
        ctx.set_tensor_address(self._io["tokens"], self._tokens.data_ptr())
        ctx.set_tensor_address(self._io["position"], self._position.data_ptr())
        ctx.set_tensor_address(self._io["logits"], self._logits.data_ptr())
        for past, present in self._present.items():
            ctx.set_tensor_address(past, src[past].data_ptr())
            ctx.set_tensor_address(present, dst[past].data_ptr())  # == src[past] for engine-declared aliases

    def _capture(self) -> None:
        """One CUDA graph per parity; on failure fall back to plain enqueues and say why."""
        graphs = []
        try:
            for parity in (0, 1):
                self._bind(parity)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, stream=self.stream, capture_error_mode="thread_local"):
                    if not self._ctx.execute_async_v3(self.stream.cuda_stream):
                        raise RuntimeError("execute_async_v3 returned False during capture")
                graphs.append(g)
            self._graphs = graphs
        except Exception as exc:  # noqa: BLE001  (capture errors come from CUDA, torch or TensorRT)
            self._graphs = None
            self.cuda_graph = False
            self.cuda_graph_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    @on_device
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        self.check_decode(self._prefilled)
        with torch.cuda.stream(self.stream):
            self._tokens.copy_(tokens.reshape(-1).to(torch.int64))
            self._position.copy_(self._lengths)
            if self._graphs is not None:
                self._graphs[self._cur].replay()
            else:
                self._bind(self._cur)
                if not self._ctx.execute_async_v3(self.stream.cuda_stream):
                    raise ArtifactError("TensorRT decode enqueue failed (see the TensorRT log above)")
            logits = self._logits.float().cpu()  # synchronises the stream
        self._steps += 1
        if self.cuda_graph and self._graphs is None and self._steps == 1:
            self._capture()  # after the first real enqueue; capturing does not run anything
        self._cur = 1 - self._cur
        self._lengths = self._lengths + 1
        return logits

    def close(self) -> None:
        self._graphs = None
        self._ctx = self._prefill_ctx = None
        self._sets = [{}, {}]


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
        self.tokenizer_dir = str(export_dir) if (export_dir / "tokenizer.json").is_file() else None
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
        dec = self.engines["decode"]
        get_alias = getattr(dec, "get_aliased_input_tensor", None)  # TensorRT >= 10.15
        self.aliased = set()  # outputs the engine itself declares aliased to their input: one buffer
        for o in manifest.graphs["decode"].state_outputs():
            if o.in_place and get_alias is not None and get_alias(o.name) == o.alias_of:
                self.aliased.add(o.name)

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
