"""Export a checkpoint to ONNX: trace the functional cores, post-process, validate, write a manifest.

Stages (shown with a rich progress display): load -> trace prefill -> trace decode -> attach the
G-SWA function + plugin attributes -> save (external data above 2 GB) -> onnx.checker full check
-> validate on ONNX Runtime against PyTorch -> manifest. Everything is written into a temporary
folder next to the target and renamed into place at the end: never a half-written export.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import signal
import threading
import warnings
from pathlib import Path

import torch

from ..cache import PLTCache, ring_len
from ..config import MIN_EXPORT_SEQ, PLTConfig
from ..errors import ArtifactError, InputError
from ..model import PLT
from ..progress import progress_reporter
from ..check.tolerances import tolerance
from . import io_spec, manifest as manifest_lib, onnx_op
from .quantize import FLOAT_WEIGHTS, WeightSpec, check_quantizable, quantize_graph

FLOAT_NAMES = {v: k for k, v in FLOAT_WEIGHTS.items()}  # float32 -> fp32: the manifest's weights.format

DEFAULT_OPSET = 24  # TensorScatter (24) for in-place cache writes; Attention (23) with nonpad_kv_seqlen (24)
EXTERNAL_DATA_LIMIT = 2 * 1024**3  # protobuf's hard 2 GB limit for one message
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
# The IR version each opset needs; onnxruntime 1.31/1.32 refuse IR 14 (onnx 1.23's default) and load <= 13.
IR_FOR_OPSET = {24: 12, 25: 13}


def traced_cache(cfg: PLTConfig, caches: tuple, lengths: torch.Tensor) -> PLTCache:
    """An out-of-place PLTCache over the graph's state inputs (io_spec.cache_tensors order): each
    write becomes one TensorScatter, each replaced tensor a graph output."""
    n, N = cfg.n_cache_layers, cfg.n_local_layers
    k, v = caches[:n], caches[n:2 * n]
    lk, lv = caches[2 * n:2 * n + N], caches[2 * n + N:2 * n + 2 * N]
    carry = caches[-1] if cfg.has_carry else k[0].new_zeros(k[0].shape[0], 0, cfg.d_model)
    return PLTCache(list(k), list(v), list(lk), list(lv), carry, lengths, in_place=False)


def state_outputs(cfg: PLTConfig, cache: PLTCache) -> tuple:
    out = (*cache.k, *cache.v, *cache.local_k, *cache.local_v)
    return out + ((cache.carry,) if cfg.has_carry else ())


class PrefillGraph(torch.nn.Module):
    """extend_core over the state inputs, flat I/O in io_spec order."""

    def __init__(self, model: PLT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, lengths, start_pos, caches):
        cache = traced_cache(self.model.cfg, caches, start_pos)
        logits = self.model.extend_core(input_ids, lengths, start_pos, cache)  # [B, V]
        return (logits, *state_outputs(self.model.cfg, cache))


class DecodeGraph(torch.nn.Module):
    """decode_core over the state inputs, flat I/O in io_spec order."""

    def __init__(self, model: PLT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position, caches):
        cache = traced_cache(self.model.cfg, caches, position)
        logits = self.model.decode_core(input_ids, position, cache)
        return (logits, *state_outputs(self.model.cfg, cache))


def dummy_inputs(spec: io_spec.GraphSpec, sizes: dict[str, int], dtype: torch.dtype) -> list[torch.Tensor]:
    """Example inputs with the named axes set to `sizes` (distinct values, so nothing specialises)."""
    out = []
    g = torch.Generator().manual_seed(0)
    for t in spec.inputs:
        shape = list(t.concrete(sizes))
        if t.role == "tokens":
            out.append(torch.randint(3, 200, shape, generator=g))
        elif t.role == "lengths":
            out.append(torch.tensor([sizes["prompt"] - i % 3 for i in range(shape[0])], dtype=torch.int64))
        elif t.role == "position":
            out.append(torch.tensor([sizes["max_seq"] // 2 + i for i in range(shape[0])], dtype=torch.int64))
        elif t.role == "start":  # chunks that fit: start + prompt <= max_seq
            room = sizes["max_seq"] - sizes["prompt"] + 1
            out.append(torch.tensor([(3 * i) % room for i in range(shape[0])], dtype=torch.int64))
        else:
            out.append((0.1 * torch.randn(shape, generator=g)).to(dtype))
    return out


def _trace(module: torch.nn.Module, spec: io_spec.GraphSpec, args: list, limits: dict[str, tuple[int, int]],
           opset: int, grouped: bool, weight_names: set[str] | None = None):
    """The traced ModelProto. weight_names (export/stream.py): the module's weights are placeholders;
    those initializers come back as references without bytes, nothing folded from them."""
    dims = {name: torch.export.Dim(name, min=lo, max=hi) for name, (lo, hi) in limits.items()}
    shapes = [{i: dims[d] for i, d in enumerate(t.shape) if isinstance(d, str)} for t in spec.inputs]
    # (inputs..., caches tuple): the first `grouped` inputs one by one, the state as one tuple
    args, shapes = (*args[:grouped], tuple(args[grouped:])), (*shapes[:grouped], tuple(shapes[grouped:]))
    quiet = io.StringIO()
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), _noticing_interrupts() as interrupted:
        warnings.simplefilter("ignore")
        # torch logs (ERROR, with a traceback) what it catches inside tracing, a Ctrl-C included;
        # a real failure comes back as the exception below, said in one line.
        torch_log.setLevel(logging.CRITICAL)
        try:
            program = torch.onnx.export(module, args, dynamo=True, input_names=spec.input_names,
                                        output_names=spec.output_names, dynamic_shapes=shapes,
                                        custom_translation_table=onnx_op.translation_table(),
                                        opset_version=opset, optimize=weight_names is None, verbose=False)
        except Exception as exc:  # noqa: BLE001  (the exporter raises many types)
            if interrupted:  # torch.export reports a Ctrl-C during tracing as a failed export
                raise KeyboardInterrupt from None
            raise ArtifactError(f"ONNX export of the {spec.name} graph failed: {str(exc).splitlines()[0]}") from exc
        finally:
            torch_log.setLevel(level)
        if interrupted:  # a Ctrl-C that torch caught and swallowed (fake tensors' cache) still stops the export
            raise KeyboardInterrupt
    if weight_names is not None:
        from .stream import weight_references

        return weight_references(program.model, weight_names)
    return program.model_proto


@contextlib.contextmanager
def _noticing_interrupts():
    """Yields a list that gets an entry when Ctrl-C arrives (main thread, default handler only)."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield seen
        return

    def handler(signum, frame):
        seen.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def postprocess(model_proto, spec: io_spec.GraphSpec, meta: dict, static: dict[str, int] | None = None):
    """Attach the G-SWA function (specialised to `static` dims) and plugin attributes, pin the IR
    version, check the I/O names."""
    got_in = [i.name for i in model_proto.graph.input]
    got_out = [o.name for o in model_proto.graph.output]
    if got_in != spec.input_names or got_out != spec.output_names:
        raise ArtifactError(f"{spec.name} graph I/O names {got_in} -> {got_out} differ from the io_spec "
                            f"{spec.input_names} -> {spec.output_names}")
    n_nodes = sum(n.op_type == onnx_op.contract.OP_NAME for n in model_proto.graph.node)
    onnx_op.trim_attention_outputs(model_proto)
    if n_nodes:
        onnx_op.attach_function(model_proto, static)
        onnx_op.add_plugin_attributes(model_proto)
    opset = next(o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx"))
    model_proto.ir_version = IR_FOR_OPSET[opset]
    del model_proto.metadata_props[:]
    for k, v in meta.items():
        model_proto.metadata_props.add(key=k, value=str(v))
    model_proto.graph.name = f"plt_{spec.name}"
    return model_proto, n_nodes


def save_onnx(model_proto, path: Path) -> list[str]:
    """Save `path`; weights above 2 GB go to `<name>.data` (ONNX external data). Returns files written."""
    import onnx

    total = sum(len(t.raw_data) for t in model_proto.graph.initializer)
    if total > EXTERNAL_DATA_LIMIT - (64 << 20):
        data_name = path.name + ".data"
        onnx.save_model(model_proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        return [path.name, data_name]
    onnx.save_model(model_proto, str(path))
    return [path.name]


def check_tokenizer_files(model_dir: Path, cfg) -> str | None:
    """The tokenizer files an export copies (TOKENIZER_FILES) load as generate and serve will load
    them: a corrupt tokenizer.json, a chat template that does not compile or more tokens than the
    vocabulary fail now, not in the export's first `generate` (reported). A Hugging Face folder
    without tokenizer.json still exports (check, bench and the Python API take token ids), with a
    warning (returned, for the end of a successful export): generate, serve and triton-repo refuse
    it for want of its tokenizer."""
    from ..serve.chat import load_serve_tokenizer
    from ..tokenizer import needs_own_tokenizer

    if needs_own_tokenizer(cfg, cfg.vocab_size) and not (model_dir / TOKENIZER_FILES[0]).is_file():
        return (f"warning: {model_dir} has no {TOKENIZER_FILES[0]}: generate, serve and triton-repo will refuse "
                f"this export; copy the model's tokenizer files into {model_dir} and export again")
    if any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        load_serve_tokenizer(model_dir, cfg.vocab_size, cfg)
    return None


def export_model(model_dir: str | Path, out: str | Path, dtype: str | None = None, opset: int = DEFAULT_OPSET,
                 max_batch: int = 8, max_seq: int | None = None, force: bool = False, validate: bool = True,
                 progress: bool = True, log=None, weights: WeightSpec | None = None,
                 streamed: bool = True) -> Path:
    """Library entry point of `plt-deploy export`. Returns the export folder.

    One export into `out` at a time (a second is refused), stale temporaries of killed runs
    removed, a full disk reported with the path; `log(line)` receives notes and warnings.
    `weights` (quantize.parse_weights): linear weights stored int8/int4 (export/quantize.py); from a
    Hugging Face folder they are streamed from its shards (export/stream.py) unless `streamed` is
    False (the reference path: the float model loaded, traced, quantized).
    """
    from ..output_folder import check_replaceable, claim_output

    from ..checkpoint import load_config  # our config.json or a Hugging Face one

    log = log or (lambda line: None)
    cfg = load_config(model_dir)
    tokenizer_warning = check_tokenizer_files(Path(model_dir), cfg)
    if weights is not None:  # a block size that does not fit: refused before anything starts
        weights = check_quantizable(cfg, weights, log)
    if (dtype or cfg.dtype) == "bfloat16":  # also a bf16 checkpoint (every published LoopCoder) by default
        log("warning: a bfloat16 export" + ("" if dtype else " (the checkpoint's dtype; --dtype picks another)") +
            " is for TensorRT: ONNX Runtime's CPU provider has no bf16 kernels for these graphs, so it is not "
            "validated here; add --dtype fp32 (or fp16) to run it on ONNX Runtime")
    with claim_output(Path(out), log=log):
        check_replaceable(out, "export", manifest_lib.MANIFEST_FILE, force, sources=[model_dir],
                          owned=manifest_lib.owned_names)
        written = _export_model(model_dir, out, dtype, opset, max_batch, max_seq, force, validate, progress, weights,
                                log, streamed)
    if tokenizer_warning:
        log(tokenizer_warning)
    return written


def _export_model(model_dir, out, dtype, opset, max_batch, max_seq, force, validate, progress, weights, log,
                  streamed) -> Path:
    import onnx
    import onnxruntime

    from .. import hf
    from ..checkpoint import load_checkpoint, load_config
    from ..output_folder import check_replaceable, publish, temporary_folder
    from ..ops import gswa  # noqa: F401

    model_dir, out = Path(model_dir), Path(out)
    if opset not in IR_FOR_OPSET:
        raise InputError(f"--opset must be one of {', '.join(map(str, IR_FOR_OPSET))} (>= 24: TensorScatter, "
                         f"the in-place cache write, and ONNX's standard Attention; <= 25: IR <= 13, what "
                         f"ONNX Runtime loads), got {opset}")
    if max_batch < 1:
        raise InputError(f"--max-batch must be >= 1, got {max_batch}")

    stages = ["load checkpoint", "trace prefill", "trace decode", "post-process + save", "onnx.checker",
              "validate vs torch" if validate else "no validation", "manifest"]
    with progress_reporter("export", len(stages), every=0, enabled=progress, transient=False,
                           detail=stages[0]) as bar:

        def advance():  # a stage is done: show the next one
            bar.advance(stages[bar.done + 1] if bar.done + 1 < len(stages) else "done")
        reader = None
        files_before = manifest_lib.model_files_state(model_dir)
        if streamed and weights is not None and hf.is_hf_folder(model_dir):  # weights read from the shards one by one
            from .stream import ShardReader, placeholder_model

            cfg = load_config(model_dir)
            cfg = cfg.replace(dtype=dtype or cfg.dtype)
            reader = ShardReader(model_dir, cfg)
            model, names = placeholder_model(cfg, reader)
        else:
            model, names = load_checkpoint(model_dir, dtype=dtype), None
        cfg: PLTConfig = model.cfg
        dtype = dtype or cfg.dtype
        max_seq = max_seq or cfg.max_seq_len
        if not MIN_EXPORT_SEQ <= max_seq <= cfg.max_seq_len:
            raise InputError(f"--max-seq must be in [{MIN_EXPORT_SEQ}, {cfg.max_seq_len}] (the model's max_seq_len), "
                             f"got {max_seq}")
        torch_dtype = getattr(torch, dtype)
        specs = io_spec.graph_specs(cfg, max_seq, dtype)
        advance()

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_folder(out)
        try:
            # Example sizes: distinct from each other and from the static dims, >= 2 so nothing specialises.
            b_ex = min(3, max_batch) if max_batch >= 2 else 2
            prompt_ex = min(11, max_seq - 1)
            seq_ex = min(max(prompt_ex + 6, 24), max_seq)
            sizes = {"batch": b_ex, "prompt": prompt_ex, "max_seq": seq_ex}
            limits = {"batch": (1, max(max_batch, 2)), "prompt": (1, max_seq), "max_seq": (2, max_seq)}
            protos = {}
            with torch.no_grad():
                protos["prefill"] = _trace(PrefillGraph(model), specs["prefill"],
                                           dummy_inputs(specs["prefill"], sizes, torch_dtype),
                                           {k: limits[k] for k in ("batch", "prompt", "max_seq")}, opset, grouped=3,
                                           weight_names=names)
                advance()
                protos["decode"] = _trace(DecodeGraph(model), specs["decode"],
                                          dummy_inputs(specs["decode"], sizes, torch_dtype),
                                          {k: limits[k] for k in ("batch", "max_seq")}, opset, grouped=2,
                                          weight_names=names)
                advance()
            identity = manifest_lib.model_identity(model_dir)
            if manifest_lib.model_files_state(model_dir) != files_before:
                raise ArtifactError(f"{model_dir}: its files changed while they were exported (another run wrote "
                                    "them); nothing written: export again when it has finished")
            weights_sha = {k: v for k, v in identity.items() if k != "config.json"}
            meta = {"plt.model_sha256": next(iter(weights_sha.values())) if len(weights_sha) == 1
                    else json.dumps(weights_sha, sort_keys=True), "plt.dtype": dtype,
                    # what the graph was built for, inside the hashed file: the manifest is checked against it
                    "plt.export": json.dumps({"config": cfg.to_dict(), "max_batch": max_batch, "max_seq": max_seq},
                                             sort_keys=True)}
            graphs, op_nodes = {}, {}
            static = {"prefill": {"R": 1, "G": 0, "D": cfg.head_dim},  # loops >= 2; W = ring + prompt
                      "decode": {"R": cfg.decode_gswa_rows[0], "G": cfg.decode_gswa_rows[1], "S": 1,
                                 "D": cfg.head_dim, "W": ring_len(cfg), "Hkv": cfg.n_kv_heads}}
            quantized = {}
            for name in list(protos):
                proto = protos.pop(name)  # freed once saved: one graph in memory at a time
                data = None
                if reader is not None:  # tensors go to <graph>.onnx.data as they are made
                    from .stream import DataFile, fill_references

                    data = DataFile(tmp / f"{name}.onnx.data")
                if weights is not None:
                    quantized[name] = quantize_graph(proto, weights, where=f"{name} graph",
                                                     tokens=specs[name].one("tokens").name,
                                                     read=reader.float32 if reader else None,
                                                     store=data.store_into(proto.graph) if data else None)
                if data is not None:
                    fill_references(proto, reader, data)
                    data.close()
                proto, op_nodes[name] = postprocess(proto, specs[name], {**meta, "plt.graph": name}, static[name])
                files = save_onnx(proto, tmp / f"{name}.onnx") + ([data.path.name] if data else [])
                del proto
                graphs[name] = {"file": files[0], "external_data": files[1:], "op_nodes": op_nodes[name],
                                **specs[name].to_dict()}
            del protos
            advance()
            for name in graphs:
                try:
                    onnx.checker.check_model(str(tmp / graphs[name]["file"]), full_check=True)
                except onnx.checker.ValidationError as exc:
                    raise ArtifactError(f"{graphs[name]['file']}: onnx.checker failed: {str(exc).splitlines()[0]}")
            advance()
            for name in TOKENIZER_FILES:  # the tokenizer, its chat template and eos list travel with the export
                if (model_dir / name).is_file():
                    shutil.copyfile(model_dir / name, tmp / name)
            manifest = {
                "format": manifest_lib.FORMAT, "format_version": manifest_lib.FORMAT_VERSION,
                "model": {"config": cfg.to_dict(), "source": str(model_dir), "sha256": identity},
                "dtype": dtype, "opset": opset,
                "weights": weights.to_manifest(quantized) if weights else {"format": FLOAT_NAMES[dtype]},
                "max_batch": max_batch, "max_seq": max_seq,
                "custom_op": manifest_lib.op_entry(),
                "graphs": graphs,
                "cache": cache_layout(cfg, max_seq),
                "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                             "onnxruntime": onnxruntime.__version__, "plt_deploy": _version()},
                "tolerances": dict(zip(("atol", "rtol"), tolerance("onnxruntime", dtype))),
            }
            manifest_lib.write_manifest(tmp, manifest)
            if validate and weights is not None:
                if reader is not None:  # the checkpoint memory-mapped in its own dtype: no float copy
                    model = load_checkpoint(model_dir)
                validate_quantized(tmp, model, dtype, weights, log)
            elif validate:
                validate_export(tmp, model, dtype, max_batch=max_batch, max_seq=max_seq)
            advance()
            advance()

            publish(tmp, out, recheck=lambda: check_replaceable(out, "export", manifest_lib.MANIFEST_FILE, force,
                                                                owned=manifest_lib.owned_names))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def cache_layout(cfg: PLTConfig, max_seq: int) -> dict:
    """The manifest's description of the decoder state (see plt_deploy/cache.py)."""
    layout = {
        "kv": {"shape": ["batch", "kv_heads", "max_seq", "head_dim"], "layers": cfg.n_cache_layers,
               "slot": "slot j holds position j; written at `position` by the decode graph and at start_pos.. "
                       "by the prefill graph (one TensorScatter per cache)",
               "meaning": "loop 1 keys/values (the shared cache)" if cfg.mode != "looped"
               else "every loop's own cache, index = loop * n_layers + layer"},
        "in_place": "decode present_key.i/present_value.i/present_local_* are TensorScatter(past_*, one slot, "
                    "linear, axis -2): bind each output with in_place to the SAME buffer as the input its alias_of "
                    "names (TensorRT's KVCacheUpdate requires it; ONNX Runtime then skips the copy)",
        "attention_reads": "the decode graph's causal attention reads the whole max_seq buffer with a position "
                           "mask (a read, no copy); per-step cost grows with max_seq, not with a cache copy",
        "position": "tokens already cached per sequence (next position); kept by the runner, per sequence",
        "padding": "prompts are right-padded; `lengths` gives each prompt's real length",
        "extend": "the prefill graph continues each row from start_pos (0 or the tokens it holds) over the state "
                  "inputs; past_key/value may be cut to the slots the chunk reaches (start_pos + prompt); rings "
                  "and carry come back whole",
    }
    if cfg.uses_gswa:
        layout["local_ring"] = {"shape": ["batch", f"{cfg.local_rows}*kv_heads", ring_len(cfg), "head_dim"],
                                "layers": cfg.n_local_layers,
                                "slot": "position % ring slots; loops 2..L's own keys for the G-SWA window; "
                                        "axis 1 holds row r, kv head h at r * kv_heads + h",
                                "meaning": "one ring per layer per loop 2..L, index = (loop - 2) * n_layers + layer"
                                if cfg.mode == "loopcoder" else "one ring per layer, rows = loops 2..L"}
    if cfg.has_carry:
        layout["carry"] = {"shape": ["batch", cfg.loops - 1, "d_model"],
                           "meaning": "h_l(t-1) of loops 1..L-1; present_carry is a new tensor (double-buffer it)"}
    return layout


def validate_export(folder: Path, model: PLT, dtype: str, max_batch: int = 2, max_seq: int = 256) -> dict:
    """Run the fresh export on ONNX Runtime against the torch model; ArtifactError past the tolerance."""
    from ..check.parity import compare_backends, fit_workload

    if dtype == "bfloat16":
        return {"skipped": "ONNX Runtime's CPU provider has no bfloat16 kernels for these graphs"}
    from ..backends.ort_backend import OrtBackend
    from ..backends.torch_backend import TorchBackend

    with OrtBackend(folder) as ort_be:
        # check's prompts + 4 decode steps, shrunk to fit --max-batch / --max-seq like check's
        batch, prompts, steps, _, _ = fit_workload(max_batch, max_seq, 2, 4)
        report = compare_backends(TorchBackend(model), ort_be, steps=steps, batch=batch, prompt_lengths=prompts)
    if not report["passed"]:
        worst = max(report["results"], key=lambda r: r["used"])
        raise ArtifactError(f"{folder.name}: ONNX Runtime output {worst['name']} differs from PyTorch by max abs "
                            f"{worst['max_abs']:.3g}, allowed {worst['allowed']:.3g} ({report['rule']})")
    return report


def validate_quantized(folder: Path, model: PLT, dtype: str, weights: WeightSpec, log) -> dict:
    """A quantized export is not expected to match the float model to 1e-5: run it on ONNX Runtime
    against torch and log its quantization error (check.quant_error, a short token stream). Its
    bound is `check`'s verdict, not the exporter's: a correct export of a model that quantizes badly
    (random weights: flat logits) is still the export asked for. ArtifactError if it does not run."""
    from ..backends.ort_backend import OrtBackend
    from ..backends.torch_backend import TorchBackend
    from ..check.quant_error import VALIDATE_POSITIONS, quantization_error

    if dtype == "bfloat16":
        return {"skipped": "ONNX Runtime's CPU provider has no bfloat16 kernels for these graphs"}
    with OrtBackend(folder) as ort_be:
        report = quantization_error(TorchBackend(model), ort_be, weights.format, positions=VALIDATE_POSITIONS,
                                    greedy_tokens=16)
    verdict = "within" if report["passed"] else "OUTSIDE"
    log(f"quantization error ({weights.format}, block {weights.block_size}): {report['line']}; {verdict} "
        f"check's bound")
    return report


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("plt-deploy")
    except PackageNotFoundError:
        return "unknown"


