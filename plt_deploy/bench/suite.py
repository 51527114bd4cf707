"""`run_bench`: the whole benchmark as one library call (the CLI only parses options).

Sections of the result (all written to the JSON):
  rows             one per (variant, batch): prefill / decode latency, tokens/s, KV bytes
  peer             the Hugging Face peer's availability (its numbers are rows named hf-llama)
  context_scaling  plt-2 (and vanilla) decode latency at a short and a long context
  bandwidth        this machine's copy bandwidth
  floor            decode step vs weight_bytes / bandwidth for a memory-bound preset (optional)
  targets          the issue's targets, pass / fail / not measured
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import tempfile
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from ..cache import kv_bytes_formula, ring_len
from ..config import PLTConfig
from ..errors import BackendUnavailable, InputError
from . import memory, targets, variants as V
from .runner import BackendRunner, Collected, interleave, prompt_tokens, summary

SCHEMA = "plt-deploy.bench/1"
CTX_VARIANTS = ("plt-2", "vanilla")
FLOOR_VARIANTS = ("vanilla", "plt-2")


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("onnxruntime", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def _expected_kv_ratio(cfg: PLTConfig, max_seq: int) -> float:
    if cfg.mode == "looped":
        return float(cfg.loops)
    if cfg.uses_gswa:
        return 1.0 + (cfg.loops - 1) * ring_len(cfg) / max_seq
    return 1.0


def _row(name: str, cfg: PLTConfig, backend: str, batch: int, prompt_len: int, new_tokens: int,
         got: Collected | None, params: int | None, wbytes: int | None, error: str | None = None) -> dict:
    dec = summary(got.decode_ms if got else [])
    pre = summary(got.prefill_ms if got else [])
    elem = torch.finfo(getattr(torch, cfg.dtype)).bits // 8
    max_seq = got.max_seq if got else prompt_len + new_tokens
    return {
        "variant": name, "mode": cfg.mode, "loops": cfg.loops, "window": cfg.window, "backend": backend,
        "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "ctx": prompt_len + new_tokens,
        "max_seq": max_seq, "prefill_ms": pre["median"], "prefill_ms_p90": pre["p90"],
        "decode_ms_median": dec["median"], "decode_ms_p90": dec["p90"], "decode_ms_mean": dec["mean"],
        "decode_steps": dec["n"],
        "tokens_per_s": None if dec["median"] is None else batch * 1e3 / dec["median"],
        "latency_vs_vanilla": None,
        "kv_bytes_allocated": got.kv_bytes if got else None,
        "kv_bytes_formula": kv_bytes_formula(cfg, batch, max_seq, elem),
        "kv_ratio_vs_vanilla": None, "kv_ratio_expected": _expected_kv_ratio(cfg, max_seq),
        "params": params, "weight_bytes": wbytes, "error": error,
    }


def _open_all(backend, models, workdir, threads, provider, tick, max_batch=1, validate=True) -> tuple[dict, dict]:
    """name -> Backend for every model that opens; name -> error message for the others."""
    opened, errors = {}, {}
    for name, model in models.items():
        try:
            opened[name] = V.open_backend(backend, model, name, workdir, threads, provider, max_batch, validate)
        except Exception as exc:  # one variant failing (e.g. an export limit) must not hide the others
            if isinstance(exc, BackendUnavailable):  # the runtime itself is missing: nothing to measure
                raise
            errors[name] = f"{type(exc).__name__}: {exc}"
        tick(f"opened {name} on {backend}")
    return opened, errors


def _jobs(runners: dict, tokens: torch.Tensor) -> dict[str, Callable]:
    return {name: partial(r.run, tokens) for name, r in runners.items()}


def run_bench(preset: str | None = None, model: str | Path | None = None, backend: str = "torch",
              batches: tuple[int, ...] = (1,), prompt_len: int = 512, new_tokens: int = 128, repeats: int = 3,
              warmup_tokens: int = 8, contexts: tuple[int, int] | None = (128, 2048), ctx_steps: int = 32,
              peer: bool = True, floor_preset: str | None = None, floor_steps: int = 16,
              bandwidth_bytes: int = 512 << 20, threads: int | None = None, provider: str | None = None,
              seed: int = 0, workdir: str | Path | None = None, validate_exports: bool = True,
              variants: tuple[str, ...] | None = None,
              tick: Callable[[str], None] | None = None, on_total: Callable[[int], None] | None = None) -> dict:
    """Benchmark plt-2, plt-3, looped-2 and vanilla (and the HF peer) built from one preset or checkpoint.

    Exactly one of `preset` / `model` (a checkpoint folder). Returns the result dict that the report
    prints and writes as JSON. `tick(description)` is called after every unit of work and
    `on_total(n)` once with the number of units, for a progress display.
    """
    if (preset is None) == (model is None):
        raise InputError("give exactly one of --preset or --model")
    if backend == "tensorrt":  # fail before minutes of exports, with the loader's one-line reason
        from ..build.availability import require

        require()
    before = torch.get_num_threads()
    try:
        return _run(preset, model, backend, tuple(batches), prompt_len, new_tokens, repeats, warmup_tokens, contexts,
                    ctx_steps, peer, floor_preset, floor_steps, bandwidth_bytes, threads, provider, seed, workdir,
                    validate_exports, variants, tick, on_total)
    finally:
        torch.set_num_threads(before)  # a library call must not change the caller's torch settings


def fit_to_model(max_seq_len: int, prompt_len: int, new_tokens: int, contexts: tuple[int, int] | None,
                 ctx_steps: int, warmup_tokens: int = 1) -> tuple[int, int, tuple[int, int] | None, list[str]]:
    """Clip the prompt / new tokens / contexts to what the model's max_seq_len holds, with a note each.

    The defaults (prompt 512, 128 new tokens, contexts 128 and 2048) suit the small preset; on a
    model with a shorter context (tiny: 256) the run is shrunk instead of refused.
    """
    notes = []
    if prompt_len + max(new_tokens, warmup_tokens) + 1 > max_seq_len:  # +1: the peer's cache holds one more token
        if new_tokens > max_seq_len // 4:
            new_tokens = max(1, max_seq_len // 4)
        steps = max(new_tokens, warmup_tokens)  # a warm-up run decodes warmup_tokens after the same prompt
        prompt_len = max(1, min(prompt_len, max_seq_len - steps - 1))
        notes.append(f"prompt and new tokens clipped to {prompt_len} + {new_tokens} to fit max_seq_len {max_seq_len}")
    if contexts:
        lo, hi = min(contexts), max(contexts)
        room = max_seq_len - max(ctx_steps, warmup_tokens)
        if hi > room:
            if room < 2:
                raise InputError(f"--ctx-steps {ctx_steps} leaves no room for a context within max_seq_len "
                                 f"{max_seq_len}; lower --ctx-steps")
            hi = room
            lo = min(lo, max(1, hi // 16))  # keep the short/long spread of the default 128/2048
            notes.append(f"contexts clipped to {lo},{hi} to fit max_seq_len {max_seq_len} with {ctx_steps} steps")
        contexts = (lo, hi)
    return prompt_len, new_tokens, contexts, notes


def run_bytes(cfg: PLTConfig, batch: int, prompt: int, max_seq: int) -> int:
    """Peak bytes of one timed run (BackendRunner.run, torch) beyond the weights: the session's
    caches (SessionLimits.session_bytes), prefill's own K/V before they are copied in, and its
    working set (one layer's attention scores and probabilities [B, Hq, S, S] fp32, the causal mask
    [B, 1, S, S] bool, a layer's activations: norms, q/k/v, SwiGLU)."""
    from ..backends.base import SessionLimits

    elem = 4 if cfg.dtype == "float32" else 2
    session = SessionLimits.of_config(cfg).session_bytes(batch, max_seq)
    activations = batch * prompt * (8 * cfg.d_model + 4 * cfg.mlp_hidden + 4 * cfg.n_heads * cfg.head_dim) * elem
    attention = batch * prompt * prompt * (2 * 4 * cfg.n_heads + 1)
    return session + kv_bytes_formula(cfg, batch, prompt, elem) + activations + attention


def check_run_memory(cfg: PLTConfig, batch: int, prompt: int, max_seq: int) -> None:
    """InputError naming --batch when one timed run of `cfg` cannot fit this machine's memory."""
    from ..config import check_fits

    check_fits(run_bytes(cfg, batch, prompt, max_seq), f"--batch {batch}: a {cfg.mode} run (L = {cfg.loops})",
               f"caches and prefill of {batch:,} sequences x {max_seq} tokens", error=InputError,
               advice="; lower --batch or --prompt-len")


def _run(preset, model, backend, batches, prompt_len, new_tokens, repeats, warmup_tokens, contexts, ctx_steps, peer,
         floor_preset, floor_steps, bandwidth_bytes, threads, provider, seed, workdir, validate_exports, names,
         tick, on_total) -> dict:
    if threads:
        torch.set_num_threads(threads)
    tick = tick or (lambda _desc: None)
    source = None
    if model is not None:
        from ..checkpoint import load_checkpoint

        source = load_checkpoint(model)
        base = source.cfg
    else:
        base = PLTConfig.from_name(preset)
    prompt_len, new_tokens, contexts, notes = fit_to_model(base.max_seq_len, prompt_len, new_tokens, contexts,
                                                           ctx_steps, warmup_tokens)
    if not batches or min(batches) < 1:
        raise InputError("--batch needs positive batch sizes")
    unknown = sorted(set(names or ()) - set(V.BY_NAME))
    if unknown:
        raise InputError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(V.BY_NAME)}")
    chosen = tuple(v for v in V.VARIANTS if names is None or v.name in names)
    if "vanilla" not in {v.name for v in chosen}:
        raise InputError("the variants must include vanilla: every ratio is taken against it")
    for v in chosen:  # --batch too big for this machine: refused before any model or session exists
        check_run_memory(V.variant_config(base, v), max(batches), prompt_len,
                         prompt_len + max(new_tokens, warmup_tokens))

    n_runs = len(chosen) + int(peer)
    total = len(chosen) + int(peer) + len(batches) * n_runs * (1 + repeats) + 1
    if contexts:
        total += len({v.name for v in chosen} & set(CTX_VARIANTS)) * len(contexts) * (1 + repeats)
    if floor_preset:
        total += len(FLOOR_VARIANTS) * (2 + repeats)
    if on_total:
        on_total(total)

    settings = {"preset": preset, "model": str(model) if model else None, "backend": backend,
                "batches": list(batches), "prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": repeats,
                "warmup_tokens": warmup_tokens, "contexts": list(contexts) if contexts else None,
                "ctx_steps": ctx_steps, "floor_preset": floor_preset, "floor_steps": floor_steps,
                "threads": torch.get_num_threads(), "provider": provider, "seed": seed, "dtype": base.dtype,
                "peer": peer, "variants": [v.name for v in chosen], "validate_exports": validate_exports if backend != "torch" else None}
    result = {"schema": SCHEMA, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_count": os.cpu_count(), "loadavg_start": list(os.getloadavg()),
                          **_versions()},
              "settings": settings, "notes": notes, "config": base.to_dict(), "rows": [], "peer": {},
              "context_scaling": None,
              "bandwidth": None, "floor": None, "targets": []}

    with tempfile.TemporaryDirectory(prefix="plt-bench-") as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        models = V.build_models(base, variants=chosen, source=source, seed=seed)
        cfgs = {name: m.cfg for name, m in models.items()}
        params = {name: m.num_parameters() for name, m in models.items()}
        wbytes = {name: V.weight_bytes(m) for name, m in models.items()}
        backends, errors = _open_all(backend, models, work, threads, provider, tick, max(batches),
                                     validate_exports)
        runners = {name: BackendRunner(b) for name, b in backends.items()}

        hf = None
        if peer:
            from .peer import make_peer

            hf, reason = make_peer(cfgs["vanilla"], seed, threads)
            result["peer"] = {"name": "hf-llama", "available": hf is not None, "reason": reason,
                              "transformers": getattr(hf, "version", None),
                              "attn_implementation": getattr(hf, "attn_implementation", None),
                              "params": hf.num_parameters() if hf else None}
            tick("built the transformers peer")
        else:
            result["peer"] = {"name": "hf-llama", "available": False, "reason": "disabled (--no-peer)",
                              "transformers": None, "attn_implementation": None, "params": None}

        for batch in batches:
            tokens = prompt_tokens(batch, prompt_len, base.vocab_size, seed)
            jobs = _jobs(runners, tokens)
            if hf is not None:
                jobs["hf-llama"] = partial(hf.run, tokens)
            got = interleave(jobs, new_tokens, repeats, warmup_tokens, tick)
            rows = [_row(n, cfgs[n], backend, batch, prompt_len, new_tokens, got.get(n), params[n], wbytes[n],
                         errors.get(n)) for n in cfgs]
            if hf is not None:
                rows.append(_row("hf-llama", cfgs["vanilla"], "transformers", batch, prompt_len, new_tokens,
                                 got["hf-llama"], hf.num_parameters(), None))
                rows[-1]["weight_bytes"] = sum(p.numel() * p.element_size() for p in hf.model.parameters())
            van = next((r for r in rows if r["variant"] == "vanilla" and r["error"] is None), None)
            for r in rows:
                if van and r["decode_ms_median"] is not None:
                    r["latency_vs_vanilla"] = r["decode_ms_median"] / van["decode_ms_median"]
                if van and r["kv_bytes_allocated"] is not None:
                    r["kv_ratio_vs_vanilla"] = r["kv_bytes_allocated"] / van["kv_bytes_allocated"]
            result["rows"].extend(rows)

        if contexts:
            result["context_scaling"] = _context_scaling(runners, base, contexts, ctx_steps, repeats,
                                                         warmup_tokens, seed, tick)
        for b in backends.values():
            b.close()

        result["bandwidth"] = memory.copy_bandwidth(bandwidth_bytes)
        tick("measured memory bandwidth")
        if floor_preset:
            result["floor"] = _floor(floor_preset, backend, work, threads, provider, floor_steps, repeats,
                                     warmup_tokens, seed, result["bandwidth"], tick, validate_exports)

    result["machine"]["loadavg_end"] = list(os.getloadavg())
    result["targets"] = targets.check_targets(result)
    result["targets_settings"] = {**targets.TARGET_SETTINGS, "this_run_matches": targets.settings_match(settings)}
    return result


def _context_scaling(runners, base, contexts, steps, repeats, warmup, seed, tick) -> dict:
    """Decode latency of CTX_VARIANTS after a prompt of each context length (batch 1)."""
    jobs = {}
    for ctx in contexts:
        tokens = prompt_tokens(1, ctx, base.vocab_size, seed)
        for name in CTX_VARIANTS:
            if name in runners:
                jobs[f"{name}@{ctx}"] = partial(runners[name].run, tokens)
    got = interleave(jobs, steps, repeats, warmup, tick)
    points = []
    for key, g in got.items():
        name, ctx = key.split("@")
        s = summary(g.decode_ms)
        points.append({"variant": name, "ctx": int(ctx), "max_seq": g.max_seq, "decode_ms_median": s["median"],
                       "decode_ms_p90": s["p90"], "decode_steps": s["n"], "prefill_ms": summary(g.prefill_ms)["median"]})
    lo, hi = min(contexts), max(contexts)
    med = {(p["variant"], p["ctx"]): p["decode_ms_median"] for p in points}
    ratios = {name: med[(name, hi)] / med[(name, lo)] for name in CTX_VARIANTS
              if med.get((name, lo)) and med.get((name, hi)) is not None}
    return {"variant": "plt-2", "contexts": [lo, hi], "steps": steps, "points": points,
            "ratio": ratios.get("plt-2"), "ratios": ratios}


def _floor(preset, backend, work, threads, provider, steps, repeats, warmup, seed, bw, tick, validate) -> dict:
    """Decode step time of a memory-bound preset against weight_bytes / bandwidth."""
    cfg = PLTConfig.from_name(preset)
    wanted = tuple(V.BY_NAME[n] for n in FLOOR_VARIANTS)
    models = V.build_models(cfg, variants=wanted, seed=seed)
    for name in models:
        tick(f"built {preset} {name}")
    wb = {name: V.weight_bytes(m) for name, m in models.items()}
    params = {name: m.num_parameters() for name, m in models.items()}
    backends, errors = _open_all(backend, models, work / f"floor-{preset}", threads, provider, tick, 1, validate)
    del models
    tokens = prompt_tokens(1, 64, cfg.vocab_size, seed)
    got = interleave(_jobs({n: BackendRunner(b) for n, b in backends.items()}, tokens), steps, repeats,
                     warmup, tick)
    for b in backends.values():
        b.close()
    gbps = bw["best_gbps"]
    per = {}
    for name in FLOOR_VARIANTS:
        s = summary(got[name].decode_ms) if name in got else summary([])
        f = memory.floor_ms(wb[name], gbps)
        per[name] = {"params": params[name], "weight_bytes": wb[name], "floor_ms": f,
                     "decode_ms_median": s["median"], "decode_ms_p90": s["p90"],
                     "ratio_vs_floor": None if s["median"] is None else s["median"] / f, "error": errors.get(name)}
    main = per["plt-2"] if per["plt-2"]["decode_ms_median"] is not None else per["vanilla"]
    return {"preset": preset, "backend": backend, "variant": "plt-2" if main is per["plt-2"] else "vanilla",
            "gbps": gbps, "prompt_len": 64, "steps": steps, **{k: main[k] for k in
            ("params", "weight_bytes", "floor_ms", "decode_ms_median", "decode_ms_p90", "ratio_vs_floor")},
            "variants": per}
