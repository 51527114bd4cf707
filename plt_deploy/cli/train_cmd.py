"""plt-deploy train: train small models on a synthetic task on the CPU, report held-out accuracy."""

from __future__ import annotations

import signal
import sys

import click

from .options import seed_option, finite

from ..config import PRESETS
from ..tasks import TASKS


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
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), callback=finite, default=3e-3, show_default=True)
@seed_option(default=0, show_default=True)
@click.option("--eval-examples", type=click.IntRange(min=1, max=100_000), default=256, show_default=True,
              help="Held-out examples scored after training (all kept in memory at once).")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), callback=finite, help="Wall-time cap per variant.")
@click.option("--save-every", type=click.IntRange(min=0), default=100, show_default=True,
              help="Write the checkpoint every N steps (0 = only at the end); Ctrl-C keeps the last one.")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads (default: 1 for models under 5M parameters, where it is fastest; else torch's).")
@click.option("--force", is_flag=True, help="Replace the output of an earlier init/train (all of it: checkpoints, "
              "train_results.json) when this run finishes; Ctrl-C before then keeps the earlier one. A folder holding anything else (a Hugging Face model, other files, hidden "
              "ones included) is refused, --force or not, naming what it holds; nothing is deleted.")
def command(out, task, variants, preset, loops, window, steps, batch, lr, seed, eval_examples, max_minutes,
            save_every, threads, force):
    """Train on a synthetic task (made on the fly) and report held-out exact-match accuracy.

    Ctrl-C stops at the next step boundary and keeps that step's checkpoint (a second Ctrl-C
    stops at once, keeping the last periodic checkpoint)."""
    from ..config import check_variants
    from ..errors import InputError

    try:
        names = check_variants(v.strip() for v in variants.split(","))
    except InputError as exc:
        raise click.BadParameter(str(exc), param_hint="--variants") from None
    from ..config import variant_configs
    from ..errors import ConfigError

    try:
        variant_configs(preset, names, loops, window)  # every variant's config, before torch loads
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    from ..backends.folders import refuse_existing_checkpoints

    refuse_existing_checkpoints(out, names, force)  # before training: a refusal takes milliseconds
    if len(names) > 1:
        from ..output_folder import check_checkpoint_folder

        check_checkpoint_folder(out, force, "train")  # out/ itself, parent of the variants' folders
    from contextlib import ExitStack

    from ..training import TrainingInterrupted, train_variants
    from ..progress import console, progress_reporter

    stop = {"requested": False}

    def on_sigint(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print(("\n" if sys.stderr.isatty() else "") + "stopping after this step (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    shown = {"name": None, "stack": ExitStack(), "report": None}

    def progress(name, step, loss):
        if shown["name"] != name:  # one progress display per variant
            shown["stack"].close()
            shown.update(name=name, stack=ExitStack())
            shown["report"] = shown["stack"].enter_context(progress_reporter(f"train {name}", steps))
        shown["report"](step + 1, f"loss {loss:.3f}")

    try:
        results = train_variants(out, task, names, preset, loops, window, steps, batch, lr, seed, eval_examples,
                                 max_minutes, force, save_every=save_every, threads=threads, progress=progress,
                                 should_stop=lambda: stop["requested"])
    except TrainingInterrupted as exc:
        shown["stack"].close()
        click.echo(str(exc), err=True)
        sys.exit(130)
    finally:
        shown["stack"].close()
        signal.signal(signal.SIGINT, previous)
    from rich.table import Table

    table = Table(title=f"held-out exact match, task={task}, preset={preset}")
    for col in ("variant", "loops", "parameters", "steps", "final loss", "train s", "held-out acc"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r["variant"], str(r["loops"]), f"{r['parameters']:,}", str(r["steps"]), f"{r['final_loss']:.4f}",
                      f"{r['train_seconds']:.0f}", f"{r['held_out_accuracy']:.3f}")
    console().print(table)
    click.echo(f"checkpoints and train_results.json in {out}")
