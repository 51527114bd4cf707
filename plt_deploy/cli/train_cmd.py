"""plt-deploy train: train small models on a synthetic task on the CPU, report held-out accuracy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..config import PRESETS, PLTConfig
from ..tasks import TASKS

VARIANTS = {"plt": dict(mode="plt"), "looped": dict(mode="looped"), "vanilla": dict(mode="vanilla")}


def run_train(out: str | Path, task: str = "addition", variants: tuple[str, ...] = ("plt",), preset: str = "tiny",
              loops: int = 2, window: int | None = None, steps: int = 1500, batch: int = 64, lr: float = 3e-3,
              seed: int = 0, eval_examples: int = 256, max_minutes: float | None = None, force: bool = False,
              progress=None) -> list[dict]:
    """Library entry point of `plt-deploy train`. One checkpoint per variant (out/ itself for one)."""
    import torch

    from ..checkpoint import CONFIG_FILE, atomic_write_bytes, save_checkpoint
    from ..errors import CheckpointError, InputError
    from ..model import PLT
    from ..training import TrainSettings, held_out_accuracy, train

    out = Path(out)
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    the_task = TASKS[task]
    dirs = {v: out if len(variants) == 1 else out / v for v in variants}
    for d in dirs.values():
        if (d / CONFIG_FILE).exists() and not force:
            raise CheckpointError(f"{d}: already holds a checkpoint; pass --force to overwrite it")
    results = []
    for name in variants:
        overrides = dict(VARIANTS[name], loops=1 if name == "vanilla" else loops, extra={"task": task})
        if window is not None:
            overrides["window"] = window
        cfg = PLTConfig.from_name(preset, **overrides)
        torch.manual_seed(seed)
        model = PLT(cfg).init_weights(seed)
        settings = TrainSettings(steps=steps, batch=batch, lr=lr, seed=seed,
                                 max_seconds=None if max_minutes is None else 60 * max_minutes)
        start = time.monotonic()
        losses = train(model, the_task, settings, on_step=(lambda s, l, n=name: progress(n, s, l)) if progress else None)
        seconds = time.monotonic() - start
        acc = held_out_accuracy(model, the_task, eval_examples, seed=seed + 1234)
        save_checkpoint(model, dirs[name])
        results.append({"variant": name, "mode": cfg.mode, "loops": cfg.loops, "window": cfg.window,
                        "parameters": model.num_parameters(), "steps": len(losses), "final_loss": losses[-1],
                        "train_seconds": round(seconds, 1), "held_out_accuracy": acc, "checkpoint": str(dirs[name])})
    atomic_write_bytes(out / "train_results.json", (json.dumps({"task": task, "preset": preset, "results": results},
                                                               indent=2) + "\n").encode())
    return results


@click.command("train")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--task", type=click.Choice(list(TASKS)), default="addition", show_default=True)
@click.option("--variants", default="plt", show_default=True,
              help="Comma-separated: plt, looped, vanilla (several = one checkpoint each, same run).")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny", show_default=True)
@click.option("--loops", type=click.IntRange(min=2), default=2, show_default=True, help="L for plt and looped.")
@click.option("--window", type=click.IntRange(min=1), help="G-SWA window (default: the preset's).")
@click.option("--steps", type=click.IntRange(min=1), default=1500, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval-examples", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), help="Wall-time cap per variant.")
@click.option("--force", is_flag=True, help="Overwrite existing checkpoints.")
def command(out, task, variants, preset, loops, window, steps, batch, lr, seed, eval_examples, max_minutes, force):
    """Train on a synthetic task (made on the fly) and report held-out exact-match accuracy."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    names = tuple(v.strip() for v in variants.split(",") if v.strip())
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise click.BadParameter(f"unknown variant {bad[0] if bad else variants!r}; use plt, looped, vanilla",
                                 param_hint="--variants")
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        ids = {n: bar.add_task(f"train {n}", total=steps, loss=float("nan")) for n in names}
        results = run_train(out, task, names, preset, loops, window, steps, batch, lr, seed, eval_examples,
                            max_minutes, force, progress=lambda n, s, l: bar.update(ids[n], completed=s + 1, loss=l))
    table = Table(title=f"held-out exact match, task={task}, preset={preset}")
    for col in ("variant", "loops", "parameters", "steps", "final loss", "train s", "held-out acc"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r["variant"], str(r["loops"]), f"{r['parameters']:,}", str(r["steps"]), f"{r['final_loss']:.4f}",
                      f"{r['train_seconds']:.0f}", f"{r['held_out_accuracy']:.3f}")
    Console().print(table)
    click.echo(f"checkpoints and train_results.json in {out}")
