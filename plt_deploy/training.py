"""CPU training on a synthetic task, and held-out exact-match accuracy with greedy decoding."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .backends.torch_backend import TorchBackend
from .checkpoint import RESULTS_FILE  # train_results.json
from .errors import ModelError
from .generate import SamplingParams, generate
from .model import PLT
from .tasks import TASKS, Task
from .tokenizer import ByteTokenizer


@dataclass
class TrainSettings:
    steps: int = 1500
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100
    seed: int = 0
    eval_examples: int = 256
    max_seconds: float | None = None  # stop early after this wall time


def make_batch(task: Task, tok: ByteTokenizer, rng: random.Random, batch: int, held_out: bool = False):
    """tokens [B, T] right-padded, loss mask [B, T-1] (1 on targets inside the answer and <eos>)."""
    T = task.max_len
    tokens = torch.full((batch, T), tok.pad_id, dtype=torch.int64)
    mask = torch.zeros(batch, T - 1)
    for b in range(batch):
        prompt, answer = task.sample(rng, held_out)
        p, a = tok.encode(prompt), tok.encode(answer, add_bos=False) + [tok.eos_id]
        tokens[b, : len(p) + len(a)] = torch.tensor(p + a)
        mask[b, len(p) - 1: len(p) - 1 + len(a)] = 1.0  # position i predicts token i+1
    return tokens, mask


def loss_fn(model: PLT, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])  # [B, T-1, V]
    nll = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
    return (nll * mask.flatten()).sum() / mask.sum()


def train(model: PLT, task: Task, settings: TrainSettings,
          on_step: Callable[[int, float], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> list[float]:
    """AdamW with linear warm-up and cosine decay. Returns the loss of every step.

    on_step(step, loss) runs after every optimizer step (progress, periodic checkpoints);
    should_stop() is polled at step boundaries (Ctrl-C: stop between steps, never inside one).
    """
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    tok = ByteTokenizer()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                            betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / settings.warmup) * 0.5 * (
        1 + torch.cos(torch.tensor(torch.pi * min(s, settings.steps) / settings.steps)).item()))
    model.train()
    losses, start = [], time.monotonic()
    for step in range(settings.steps):
        tokens, mask = make_batch(task, tok, rng, settings.batch)
        loss = loss_fn(model, tokens, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):  # the weights are NaN/inf from here on: nothing to keep
            raise ModelError(f"training diverged at step {step + 1}: the loss is {losses[-1]}; lower --lr "
                             f"(it is {settings.lr:g})")
        if on_step is not None:
            on_step(step, losses[-1])
        if settings.max_seconds is not None and time.monotonic() - start > settings.max_seconds:
            break
        if should_stop is not None and should_stop():
            break
    model.eval()
    return losses


@torch.no_grad()
def held_out_accuracy(model: PLT, task: Task, examples: int = 256, seed: int = 1234, batch: int = 64) -> float:
    """Exact match of the greedy answer (up to <eos>) on held-out examples."""
    return exact_match(TorchBackend(model), task, examples, seed, batch)


def exact_match(backend, task: Task, examples: int = 256, seed: int = 1234, batch: int = 64) -> float:
    """held_out_accuracy on any Backend (an export on ONNX Runtime: batches fit its --max-batch)."""
    rng = random.Random(seed)
    tok = ByteTokenizer()
    batch = min(batch, backend.max_batch or batch)
    pairs = [task.sample(rng, held_out=True) for _ in range(examples)]
    correct = 0
    for i in range(0, examples, batch):
        chunk = pairs[i: i + batch]
        params = SamplingParams(max_new_tokens=task.digits + 3, stop_tokens=(tok.eos_id,))
        outs = generate(backend, [tok.encode(p) for p, _ in chunk], params, pad_id=tok.pad_id)
        correct += sum(tok.decode(o) == a and o[-1:] == [tok.eos_id] for o, (_, a) in zip(outs, chunk))
    return correct / examples


SMALL_MODEL_PARAMETERS = 5_000_000


class TrainingInterrupted(Exception):
    """Ctrl-C during training: the checkpoint of the last finished step was saved, or, when the run
    was to replace an earlier one (--force), dropped and the earlier run kept (`kept`)."""

    def __init__(self, variant: str, step: int, steps: int, checkpoint: Path, kept: Path | None = None):
        self.variant, self.step, self.checkpoint, self.kept = variant, step, checkpoint, kept
        where = (f"not kept: {kept} still holds the earlier run (--force replaces it only with a finished run)"
                 if kept is not None else f"in {checkpoint}")
        super().__init__(f"interrupted: {variant} at step {step} of {steps}; its checkpoint of step {step} is {where}")


def train_variants(out: str | Path, task: str = "addition", variants=("plt",), preset: str = "tiny",
                   loops: int = 2, window: int | None = None, steps: int = 1500, batch: int = 64, lr: float = 3e-3,
                   seed: int = 0, eval_examples: int = 256, max_minutes: float | None = None, force: bool = False,
                   save_every: int = 100, threads: int | None = None, progress=None, should_stop=None) -> list[dict]:
    """`plt-deploy train`: one checkpoint per variant (out/ itself for one variant), then held-out accuracy.

    One run into `out` at a time (output_folder.claim_output: a second is refused, naming the first).
    Checkpoints are written atomically every `save_every` steps and at the end, so an interrupted
    run (should_stop() turning true, raising TrainingInterrupted) keeps its last finished step. With
    `force` over an earlier run, the new run is written into a temporary folder beside `out` and
    swapped in only when it finishes: interrupted or failed, it leaves the earlier run as it was.
    progress(variant, step, loss) runs after every step. threads=None picks 1 CPU thread for
    models under SMALL_MODEL_PARAMETERS (the tiny preset trains ~3.7x faster on 1 thread than on 2:
    its matrices are too small to split) and torch's default otherwise.
    """
    from .backends.folders import refuse_existing_checkpoints, variant_dirs
    from .config import check_variants, variant_configs
    from .errors import CheckpointError, InputError, PLTError
    from .output_folder import check_checkpoint_folder, check_writable, claim_output, swap_in, temporary_folder

    out = Path(out)
    existed = out.exists()
    with claim_output(out, command="train"):  # a second run into the same --out is refused at once
        if task not in TASKS:
            raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        variants = check_variants(variants)
        the_task = TASKS[task]
        final_dirs = variant_dirs(out, variants)
        refuse_existing_checkpoints(out, variants, force)
        if len(final_dirs) > 1:  # out/ itself holds the variants' folders: nothing but an earlier run's outputs
            check_checkpoint_folder(out, force, "train")
        configs = variant_configs(preset, variants, loops, window, extra={"task": task})  # all validated first
        for cfg in configs.values():  # --batch too big for this machine: refused before any model exists
            cfg.check_training_memory(batch, the_task.max_len - 1)  # loss_fn runs tokens[:, :-1]
        # An earlier run (force passed the checks above) stays whole until this one finishes.
        replacing = out.is_dir() and any(out.iterdir())
        work = temporary_folder(out) if replacing else out
        try:
            dirs = variant_dirs(work, variants)
            for folder in dirs.values():  # a read-only --out fails now, not after training
                check_writable(folder)
            results = _train_all(configs, the_task, dirs, final_dirs, work, task, preset, steps, batch, lr, seed,
                                 eval_examples, max_minutes, save_every, threads, progress, should_stop)
            if replacing:
                try:
                    swap_in(work, out, recheck=lambda: check_checkpoint_folder(out, True, "train"))
                except (PLTError, OSError) as exc:  # refused or failed at the end: the finished run is kept
                    kept = out.parent / f"{out.name}.finished-{time.strftime('%Y%m%d-%H%M%S')}"
                    os.replace(work, kept)
                    raise CheckpointError(f"{str(exc).rstrip('.')}; the finished run is kept in {kept}") from None
            return results
        except TrainingInterrupted as exc:
            if replacing:  # the partial run goes, the earlier one stays
                raise TrainingInterrupted(exc.variant, exc.step, steps, final_dirs[exc.variant], kept=out) from None
            raise
        except ModelError:  # diverged: _train_one emptied that variant's folder; variants that finished stay
            if not replacing:  # (replacing: the whole new run goes with `work`, the earlier one stays)
                for folder in [*dirs.values(), out]:
                    if folder.is_dir() and not any(folder.iterdir()) and (folder != out or not existed):
                        folder.rmdir()
            raise
        finally:
            if replacing:
                shutil.rmtree(work, ignore_errors=True)


def _train_all(configs: dict, the_task: Task, dirs: dict, final_dirs: dict, work: Path, task: str, preset: str,
               steps: int, batch: int, lr: float, seed: int, eval_examples: int, max_minutes, save_every: int,
               threads, progress, should_stop) -> list[dict]:
    """Train every variant into `dirs` and write train_results.json into `work`; the rows name the
    checkpoints where they end up (`final_dirs`)."""
    from .checkpoint import atomic_write_bytes

    results = []

    def write_results():
        atomic_write_bytes(work / RESULTS_FILE, (json.dumps({"task": task, "preset": preset, "steps": steps,
                                                            "results": results}, indent=2) + "\n").encode())

    saved_threads = torch.get_num_threads()
    try:
        for name, cfg in configs.items():
            small = cfg.parameter_count() < SMALL_MODEL_PARAMETERS
            torch.set_num_threads(threads or (1 if small else saved_threads))
            row = _train_one(name, cfg, the_task, dirs[name], steps, batch, lr, seed, eval_examples,
                             max_minutes, save_every, progress, should_stop)
            results.append({**row, "checkpoint": str(final_dirs[name])})
    except TrainingInterrupted as exc:  # record how far it got beside the kept checkpoint
        results.append({"variant": exc.variant, "steps": exc.step, "interrupted": True,
                        "checkpoint": str(final_dirs[exc.variant])})
        write_results()
        raise TrainingInterrupted(exc.variant, exc.step, steps, final_dirs[exc.variant]) from None
    finally:
        torch.set_num_threads(saved_threads)
    write_results()
    return results


def _train_one(name: str, cfg, task: Task, out_dir: Path, steps: int, batch: int, lr: float, seed: int,
               eval_examples: int, max_minutes: float | None, save_every: int, progress, should_stop) -> dict:
    """Train one variant, checkpointing into out_dir; its row of train_results.json."""
    from .checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = PLT(cfg).init_weights(seed)
    settings = TrainSettings(steps=steps, batch=batch, lr=lr, seed=seed,
                             max_seconds=None if max_minutes is None else 60 * max_minutes)

    def on_step(step, loss):
        if progress is not None:
            progress(name, step, loss)
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            save_checkpoint(model, out_dir)

    start = time.monotonic()
    try:
        losses = train(model, task, settings, on_step=on_step, should_stop=should_stop)
    except ModelError as exc:  # diverged: its checkpoints (NaN, or of a run that failed) are not kept
        for child in out_dir.iterdir():  # the folder held nothing before this variant's run
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        raise ModelError(f"{exc}; {name}'s checkpoint was not kept") from None
    seconds = time.monotonic() - start
    save_checkpoint(model, out_dir)
    if should_stop is not None and should_stop():
        raise TrainingInterrupted(name, len(losses), steps, out_dir)
    acc = held_out_accuracy(model, task, eval_examples, seed=seed + 1234)
    return {"variant": name, "mode": cfg.mode, "loops": cfg.loops, "window": cfg.window,
            "parameters": model.num_parameters(), "steps": len(losses), "final_loss": losses[-1],
            "train_seconds": round(seconds, 1), "held_out_accuracy": acc, "checkpoint": str(out_dir)}


def measure_peak_memory(preset: str, batch: int, task: str = "addition", steps: int = 2, **overrides) -> dict:
    """Peak RSS growth of `train` (run in a fresh process) next to config.training_bytes' estimate.

    The model is built first; the estimate then counts everything but its weights (already resident).
    `python -m plt_deploy.training PRESET BATCH [field=value ...]` prints one line of this.
    """
    import resource

    from .config import PLTConfig

    cfg = PLTConfig.from_name(preset, extra={"task": task}, **overrides)
    the_task = TASKS[task]
    seq = the_task.max_len - 1
    model = PLT(cfg).init_weights(0)
    base = _rss_bytes()
    train(model, the_task, TrainSettings(steps=steps, batch=batch, warmup=1))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    estimate = cfg.training_bytes(batch, seq) - 4 * cfg.parameter_count()
    return {"preset": preset, "batch": batch, "seq": seq, "overrides": overrides, "measured_bytes": peak - base,
            "estimated_bytes": estimate, "ratio": estimate / max(peak - base, 1)}


def _rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


if __name__ == "__main__":
    import sys

    def _value(v: str):
        return int(v) if v.lstrip("-").isdigit() else v

    fields = dict(a.split("=", 1) for a in sys.argv[3:])
    r = measure_peak_memory(sys.argv[1], int(sys.argv[2]), **{k: _value(v) for k, v in fields.items()})
    print(f"{r['preset']} batch {r['batch']} x {r['seq']} tokens {r['overrides'] or ''}: measured peak growth "
          f"{r['measured_bytes'] / 2**20:.0f} MiB, estimated {r['estimated_bytes'] / 2**20:.0f} MiB "
          f"(estimate / measured {r['ratio']:.2f})")
