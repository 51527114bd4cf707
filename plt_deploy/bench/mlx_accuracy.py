"""Issue 19's random-model accuracy bound, asked of mlx-lm's own quantization: is it the format or our export?

    python -m plt_deploy.bench.mlx_peer WORKDIR --accuracy [--positions 2000] [--json OUT]

One random LoopCoder folder (mlx_peer.make_folder: the `small` shape, fp32, WORKDIR/hf). Each side
quantizes it with its own tool and is compared with its own fp32 model by the same code
(check.quant_error.quantization_error: teacher-forced top-1 agreement and relative logit RMS error
over check.quant_error.token_stream(vocab, 8, 257, seed 0) = 2,000 positions, greedy agreement over
64 tokens from report.greedy_prompts):
  - mlx-lm: its fp32 model vs `mlx_lm.utils.quantize_model` (affine, group 64) at 4 bits (every
    quantizable layer, embeddings included: what mlx-lm ships), at 4 bits on the linear layers only
    (the layers our export quantizes) and at 8 bits; mlx-lm's own KV caches (model.make_cache()).
  - ours: the torch fp32 model vs the int4 / int8 exports (block 64, symmetric RTN) on ONNX Runtime.
  - the two fp32 models against each other (our torch vs mlx-lm), the same numbers.
Every model runs on 1 thread (mlx's CPU build calls the reference BLAS, single-threaded).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from ..backends.base import Backend, DecoderSession
from ..errors import InputError

GROUP = 64  # mlx-lm's default group size; our block size
MAX_SEQ = 320  # the exports' limit: fits the 257-token stream (check.quant_error.fit_stream) and greedy


class MlxSession(DecoderSession):
    """mlx-lm's model behind our session interface: prefill of every row from position 0, then decode.

    Rows of equal prompt length share one batched mlx-lm cache; unequal ones (generate's padded
    prompts) get one cache each. state() is not supported (no slot save / restore)."""

    def __init__(self, backend: "MlxBackend", batch: int, max_seq: int):
        self.be, self.batch, self.max_seq = backend, batch, max_seq
        self._lengths = torch.zeros(batch, dtype=torch.int64)
        self.groups: list[tuple[list[int], list]] = []  # (rows, mlx-lm cache)
        self.key: tuple = (batch,)  # every token fed so far: the memo's key
        self.behind: list = []  # calls answered from the memo, not yet run on self.groups

    @property
    def lengths(self) -> torch.Tensor:
        return self._lengths

    def state(self):
        raise NotImplementedError("mlx-lm sessions have no slot state")

    def _run(self, call) -> torch.Tensor:
        kind, tokens, lengths = call
        mx, out = self.be.mx, []
        if kind == "prefill":
            equal = bool((lengths == lengths[0]).all())
            rows = [list(range(self.batch))] if equal else [[b] for b in range(self.batch)]
            self.groups = [(r, self.be.model.make_cache()) for r in rows]
        for rows, cache in self.groups:
            x = tokens[rows, : int(lengths[rows[0]])] if kind == "prefill" else tokens[rows][:, None]
            logits = self.be.model(mx.array(x.numpy()), cache=cache)[:, -1]  # [k, V]
            mx.eval(logits)
            out.append(torch.from_numpy(np.array(logits.astype(mx.float32))))
        return torch.cat(out)  # groups hold the rows in order: [B, V]

    def _call(self, call) -> torch.Tensor:
        kind, tokens, lengths = call
        self.key += (kind, tokens.numpy().tobytes(), lengths.numpy().tobytes())
        memo = self.be.memo
        if memo is not None and self.key in memo:
            self.behind.append(call)
            return memo[self.key].clone()
        for past in self.behind:  # the memo ran out mid-session: catch the caches up, same calls in order
            self._run(past)
        self.behind = []
        logits = self._run(call)
        if memo is not None:
            memo[self.key] = logits.clone()
        return logits

    def _extend(self, rows, tokens, lengths, start_pos) -> torch.Tensor:
        if len(rows) != self.batch or bool(start_pos.any()):
            raise InputError("an mlx-lm session prefills every row from position 0, nothing else")
        return self._call(("prefill", tokens, lengths))

    def _decode(self, tokens) -> torch.Tensor:
        return self._call(("decode", tokens, torch.zeros(0, dtype=torch.int64)))


class MlxBackend(Backend):
    """An mlx-lm model (fp32 or quantized) as a Backend, for check.quant_error. memo=True: logits are
    kept by the tokens fed, so a reference compared several times runs once (mlx is deterministic)."""

    def __init__(self, model, config, name: str, memo: bool = False):
        import mlx.core as mx

        self.mx, self.model, self.config, self.name = mx, model, config, name
        self.memo = {} if memo else None

    def start(self, batch: int, max_seq: int) -> MlxSession:
        self.limits.check(batch, max_seq, memory=False)
        return MlxSession(self, batch, max_seq)


def load_mlx(folder: Path, config, bits: int | None = None, linear_only: bool = False, memo: bool = False):
    """mlx-lm's model of `folder` on its CPU device, quantized by its own API when `bits` is set."""
    import mlx.core as mx
    from mlx_lm.utils import load_model, quantize_model

    mx.set_default_device(mx.cpu)
    model, hf_config = load_model(folder)
    name = "mlx-lm fp32"
    if bits:
        only = (lambda path, module: not path.endswith("embed_tokens")) if linear_only else None
        model, _ = quantize_model(model, hf_config, group_size=GROUP, bits=bits, quant_predicate=only)
        name = f"mlx-lm {bits}-bit affine g{GROUP}" + (", linear layers only" if linear_only else "")
    return MlxBackend(model, config, name, memo=memo)


KEYS = ("positions", "top1_agreement", "logit_rms_error", "logit_rms_error_relative", "greedy_agreement_lengths",
        "greedy_new_tokens")


def compare(reference: Backend, test: Backend, weights: str, positions: int, tick=print) -> dict:
    """check.quant_error.quantization_error, as it is, with the bound it states for `weights`."""
    from ..check.quant_error import quantization_error

    tick(f"{test.name} vs {reference.name}")
    t0 = time.perf_counter()
    r = quantization_error(reference, test, weights, positions=positions)
    return {"reference": reference.name, "test": test.name, "weights": weights, **{k: r[k] for k in KEYS},
            "bound": r["bound"], "passed": r["passed"], "seconds": time.perf_counter() - t0}


def run(workdir: Path, positions: int = 2000, threads: int = 1, tick=print) -> dict:
    from ..backends.ort_backend import OrtBackend
    from ..backends.torch_backend import TorchBackend
    from ..checkpoint import load_checkpoint
    from ..export.exporter import export_model
    from ..export.quantize import WeightSpec
    from ..export.quantize_export import quantize_export
    from .mlx_peer import make_folder

    torch.set_num_threads(threads)
    out = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "load_before": os.getloadavg(),
           "threads": threads, "group_size": GROUP}
    folder = make_folder(workdir / "hf")
    onnx_dir = workdir / f"onnx-b8-s{MAX_SEQ}"
    if not (onnx_dir / "manifest.json").is_file():
        tick("export fp32")
        export_model(folder, onnx_dir, max_batch=8, max_seq=MAX_SEQ, progress=False, force=True, validate=False)
    ours = TorchBackend(load_checkpoint(folder), threads=threads)
    ours.name = "plt-deploy torch fp32"
    rows = []
    for w in ("int4", "int8"):
        path = quantize_export(onnx_dir, workdir / f"onnx-{w}-b{GROUP}", WeightSpec(w, GROUP), force=True)
        with OrtBackend(path, threads=threads) as be:
            be.name = f"plt-deploy ONNX Runtime {w}, symmetric block {GROUP}"
            rows.append(compare(ours, be, w, positions, tick))
    ref = load_mlx(folder, ours.config, memo=True)
    for bits, linear_only in ((4, False), (4, True), (8, False)):
        rows.append(compare(ref, load_mlx(folder, ours.config, bits, linear_only), f"int{bits}", positions, tick))
    cross = compare(ours, ref, "int8", positions, tick)  # fp32 vs fp32: the int8 bound is only a yardstick
    out.update(rows=rows, fp32_vs_fp32=cross, load_after=os.getloadavg())
    return out


def table(result: dict) -> str:
    lines = ["| model | vs | top-1 agreement (positions) | bound | logit RMS error (relative) | greedy agreement |",
             "|---|---|---:|---:|---|---|"]
    for r in (*result["rows"], result["fp32_vs_fp32"]):
        bound = "-" if r is result["fp32_vs_fp32"] else f"{r['bound']} ({'met' if r['passed'] else 'missed'})"
        lines.append(f"| {r['test']} | {r['reference']} | {r['top1_agreement']:.4f} ({r['positions']}) | {bound} | "
                     f"{r['logit_rms_error']:.3g} ({r['logit_rms_error_relative']:.2%}) | "
                     f"{' and '.join(map(str, r['greedy_agreement_lengths']))} of {r['greedy_new_tokens']} |")
    return "\n".join(lines)
