"""The ONNX Runtime backend: an export folder (manifest + prefill/decode graphs) behind Backend.

Sessions are built once per backend (graph optimisation on, thread counts settable). A session
(`OrtSession`) owns preallocated cache buffers in the layout the manifest documents, as torch
tensors on the provider's device (CPU memory, or CUDA memory for the CUDA / TensorRT providers),
bound to the graphs through IOBinding by address: caches never leave the device. Each decode step
binds every `in_place` output to the SAME buffer as the input its `alias_of` names: the graph's
TensorScatter then writes the one new slot in place (ORT's TensorScatter kernel skips its
past->present copy when both are the same buffer; it logs "in-place optimization not activated"
otherwise), so no step copies the past cache. Other state outputs (the carry: a few hidden vectors)
are double-buffered. An extend (prefill from any position: base.DecoderSession) runs the prefill
graph on device copies of the listed rows only, K/V cut to the slots the chunk reaches, and writes
them back (backends/state.py): the other rows are untouched and nothing leaves the device.
Every tensor name comes from the manifest (found by role, paired by alias_of); none is spelled here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import numpy_dtype
from ..export.io_spec import state_inputs
from ..errors import BackendUnavailable
from . import state as state_lib
from .base import MODEL_MAX_SEQ_SOURCE, Backend, DecoderSession, SessionLimits

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_DEVICE = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}


def resolve_providers(provider: str | None) -> list[str]:
    """'cpu' | 'cuda' | 'tensorrt' (or a full provider name) -> providers list, CPU as the fallback."""
    import onnxruntime as ort

    name = PROVIDERS.get((provider or "cpu").lower(), provider)
    available = ort.get_available_providers()
    if name not in available:
        raise BackendUnavailable(f"ONNX Runtime execution provider {provider!r} ({name}) is not available here; "
                                 f"available: {', '.join(available)}")
    chain = [name]
    if name == "TensorrtExecutionProvider" and "CUDAExecutionProvider" in available:
        chain.append("CUDAExecutionProvider")
    if name != "CPUExecutionProvider":
        chain.append("CPUExecutionProvider")
    return chain


class OrtSession(DecoderSession):
    def __init__(self, backend: "OrtBackend", batch: int, max_seq: int):
        self.be, self.batch, self.max_seq = backend, batch, max_seq
        self.device = backend.device
        self._dev = torch.device(self.device if self.device == "cpu" else f"cuda:{backend.device_id}")
        spec = backend.manifest.graphs["decode"]
        self._spec = spec
        self._np_dtype = np.dtype(numpy_dtype(backend.manifest.dtype))
        self._dtype = torch.from_numpy(np.zeros(0, self._np_dtype)).dtype
        sizes = {"batch": batch, "max_seq": max_seq}
        state = {o.alias_of for o in spec.state_outputs()}
        new = lambda shape: torch.zeros(shape, dtype=self._dtype, device=self._dev)  # noqa: E731
        # One buffer per state input, on the device; ORT reads and writes it through its address.
        self._bufs: dict[str, torch.Tensor] = {t.name: new(t.concrete(sizes)) for t in spec.inputs if t.name in state}
        self._roles = {t.name: t.role for t in spec.inputs if t.name in state}
        # Spare buffers of state written as a new tensor (the carry), keyed by the input they replace.
        self._spare = {o.alias_of: torch.zeros_like(self._bufs[o.alias_of]) for o in spec.state_outputs()
                       if not o.in_place}
        # K/V laid out at a capacity that follows the sequences (state.KVCapacity): ONNX Runtime's
        # Attention reads every slot of the buffer it is given, whatever the rows hold. Not under the
        # TensorRT provider, whose engines are built per input shape: there the caches stay max_seq.
        self._capacity = state_lib.KVCapacity(self._bufs, self._roles, max_seq,
                                              fixed=backend.providers[0] == "TensorrtExecutionProvider")
        self._logits = new((batch, backend.config.vocab_size))
        self._lengths = torch.zeros(batch, dtype=torch.int64)
        self._binding = backend.sessions["decode"].io_binding()
        self._bound_cap = None  # the K/V capacity the decode binding was made for (_bind_decode)
        # Host buffers the binding reads tokens and positions from, and what a step rebinds: the
        # carry, (graph name, state input, is output), since its new-tensor output swaps buffers.
        self._step_in = {t.name: torch.zeros(batch, dtype=torch.int64) for t in spec.inputs
                         if t.role in ("tokens", "position")}
        self._host_roles = {t.name: t.role for t in spec.inputs if t.name in self._step_in}
        self._carry_io = [(t.name, t.name, False) for t in spec.inputs if t.name in self._spare]
        self._carry_io += [(t.name, t.alias_of, True) for t in spec.outputs if t.alias_of in self._spare]
        self._prefill_binding = backend.sessions["prefill"].io_binding()

    @property
    def lengths(self) -> torch.Tensor:
        return self._lengths

    def state(self):
        return self._bufs, self._roles

    def kv_bytes(self) -> int:  # allocated: K/V storage for max_seq slots, and the rings
        rings = sum(b.numel() * b.element_size() for name, b in self._bufs.items()
                    if self._roles[name] not in ("carry", *state_lib.SEQ_ROLES))
        return self._capacity.nbytes + rings

    def _reserve(self, needed: int) -> None:
        self._capacity.reserve(needed)

    def _bind(self, b, name: str, t: torch.Tensor, output: bool) -> None:
        kind = "cpu" if t.device.type == "cpu" else "cuda"
        bind = b.bind_output if output else b.bind_input
        bind(name, kind, t.device.index or 0, self._np_dtype if t.is_floating_point() else np.int64,
             list(t.shape), t.data_ptr())

    def _extend(self, rows, tokens, lengths, start_pos):
        """The prefill graph on copies of the listed rows (K/V cut to the slots the chunk reaches): K/V
        outputs bound to their inputs' memory (TensorScatter in place), rings and carry to new buffers;
        then written back into the rows (state.write_rows)."""
        spec = self.be.manifest.graphs["prefill"]
        span = int((start_pos + tokens.shape[1]).max())
        part = state_lib.rows_of(self._bufs, self._roles, rows.to(self._dev), span)
        b = self._prefill_binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        host = {"tokens": tokens, "lengths": lengths, "start": start_pos}
        held = state_inputs(spec, self._spec)  # prefill input -> the decode input (buffer) it reads
        for t in spec.inputs:
            if t.role in host:
                b.bind_cpu_input(t.name, host[t.role].numpy().astype(np.int64))
            else:
                self._bind(b, t.name, part[held[t.name]], output=False)
        fresh = {}
        logits = torch.empty((tokens.shape[0], self.be.config.vocab_size), dtype=self._dtype, device=self._dev)
        for t in spec.outputs:
            if t.role == "logits":
                self._bind(b, t.name, logits, output=True)
            elif t.in_place:  # the same memory as its input
                self._bind(b, t.name, part[t.alias_of], output=True)
            else:  # rewritten whole (rings, carry)
                fresh[t.alias_of] = torch.empty_like(part[t.alias_of])
                self._bind(b, t.name, fresh[t.alias_of], output=True)
        self.be.sessions["prefill"].run_with_iobinding(b)
        part.update(fresh)
        state_lib.write_rows(self._bufs, self._roles, rows.to(self._dev), part, int(start_pos.min()))
        return logits.to("cpu", torch.float32)  # [k, V]: each chunk's last real token

    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """One decode step. The binding is made once per K/V layout (`_bind_decode`): a step copies the
        tokens and positions into the bound host buffers (on CUDA: binds them anew, as ONNX Runtime
        copies a host input to the device when it is bound) and rebinds only the carry, whose output
        goes to the spare buffer swapped in afterwards. Binding everything every step cost about 0.4 ms per
        step, vanilla and PLT alike (`python -m plt_deploy.bench.micro bind EXPORT`)."""
        b = self._binding
        if self._bound_cap != self._capacity.cap:  # first step, or the K/V were laid out anew
            self._bind_decode()
        for name, role in self._host_roles.items():
            value = tokens if role == "tokens" else self._lengths
            if self.device == "cpu":  # the CPU provider reads the bound host buffer itself
                self._step_in[name].copy_(value)
            else:  # a device provider copies a host input when it is bound: bind this step's values
                b.bind_cpu_input(name, value.numpy().astype(np.int64))
        for name, past, output in self._carry_io:
            self._bind(b, name, self._spare[past] if output else self._bufs[past], output=output)
        self.be.sessions["decode"].run_with_iobinding(b)
        for past, spare in list(self._spare.items()):
            self._spare[past], self._bufs[past] = self._bufs[past], spare
        return self._logits.to("cpu", torch.float32, copy=True)  # the caller's own copy: the buffer is rewritten

    def _bind_decode(self) -> None:
        """Bind every decode input and output: the host buffers for tokens and positions, the state
        buffers (in place: the output is its input's memory; the carry's output its spare), the logits."""
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        for t in self._spec.inputs:
            if t.name in self._step_in:
                buf = self._step_in[t.name]
                b.bind_input(t.name, "cpu", 0, np.int64, list(buf.shape), buf.data_ptr())
            else:
                self._bind(b, t.name, self._bufs[t.name], output=False)
        for t in self._spec.outputs:
            if t.role == "logits":
                self._bind(b, t.name, self._logits, output=True)
            else:
                self._bind(b, t.name, self._bufs[t.alias_of] if t.in_place else self._spare[t.alias_of], output=True)
        self._bound_cap = self._capacity.cap

    def cache_arrays(self) -> dict[str, np.ndarray]:
        """Host views of the cache buffers (CPU provider; copies on CUDA): for tests and debugging."""
        return {name: b.numpy() if b.device.type == "cpu" else b.cpu().numpy() for name, b in self._bufs.items()}


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(self, export_dir: str | Path, threads: int | None = None, provider: str | None = None,
                 inter_threads: int | None = None, verify_hashes: bool = True, spinning: bool | None = None):
        import onnxruntime as ort

        from ..export.manifest import read_manifest

        self.manifest = read_manifest(export_dir, verify_hashes=verify_hashes)
        self.config = self.manifest.config
        self.tokenizer_dir = str(export_dir)  # the tokenizer files export copied (none: the byte tokenizer)
        check_runnable(self.manifest, export_dir)
        self.providers = resolve_providers(provider)
        self.device = _DEVICE.get(self.providers[0], "cpu")
        self.device_id = 0
        if self.device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"ONNX Runtime's {self.providers[0]} keeps the caches in CUDA memory through torch, "
                                     "but this torch has no CUDA; install a CUDA build of torch")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        if inter_threads:
            opts.inter_op_num_threads = inter_threads
        if spinning is not None:  # False: intra-op threads sleep between runs instead of busy-waiting
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        opts.log_severity_level = 3
        self.sessions = {}
        for g in ("prefill", "decode"):
            try:
                self.sessions[g] = ort.InferenceSession(str(self.manifest.graph_path(g)), opts,
                                                        providers=self.providers)
            except Exception as exc:  # noqa: BLE001  (ORT raises its own Fail/InvalidGraph types)
                from ..errors import ArtifactError

                raise ArtifactError(f"{self.manifest.graph_path(g)}: ONNX Runtime cannot load it "
                                    f"({str(exc).splitlines()[0][:300]})") from None

    @property
    def limits(self):
        return export_limits(self.manifest)

    def start(self, batch: int, max_seq: int) -> OrtSession:
        self.limits.check(batch, max_seq)
        return OrtSession(self, batch, max_seq)

    def close(self) -> None:
        self.sessions.clear()


def check_runnable(manifest, export_dir) -> None:
    """What ONNX Runtime cannot run, refused in one line (the backend at load, `triton-repo` before writing)."""
    if manifest.dtype == "bfloat16":
        raise BackendUnavailable(f"{export_dir}: bfloat16 exports do not run on ONNX Runtime's CPU provider; "
                                 "export with --dtype float32 or float16")


def export_limits(manifest) -> SessionLimits:
    """A session's limits from an export's manifest alone (also what `triton-repo` checks against)."""
    cfg = manifest.config
    short = manifest.max_seq < cfg.max_seq_len
    return SessionLimits(cfg, np.dtype(numpy_dtype(manifest.dtype)).itemsize, min(manifest.max_seq, cfg.max_seq_len),
                         "the export's --max-seq" if short else MODEL_MAX_SEQ_SOURCE, manifest.max_batch,
                         "the export's --max-batch")


def load(path, threads: int | None = None, provider: str | None = None, spinning: bool | None = None,
         verify_hashes: bool = True, **_ignored) -> OrtBackend:
    """An export folder on ONNX Runtime (spinning: None = ONNX Runtime's default, busy-waiting).
    verify_hashes=False only when the caller has just verified the export's files itself."""
    return OrtBackend(path, threads=threads, provider=provider, spinning=spinning, verify_hashes=verify_hashes)
