"""plt-deploy init: a randomly initialised checkpoint from a preset."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import MODES, PRESETS, PLTConfig
from ..errors import CheckpointError


def init_checkpoint(preset: str, out: str | Path, mode: str = "plt", loops: int | None = None,
                    window: int | None = None, seed: int = 0, force: bool = False, **overrides) -> Path:
    """Library entry point of `plt-deploy init`."""
    from ..checkpoint import CONFIG_FILE, save_checkpoint
    from ..model import PLT

    out = Path(out)
    if (out / CONFIG_FILE).exists() and not force:
        raise CheckpointError(f"{out}: already holds a checkpoint; pass --force to overwrite it")
    changes = {k: v for k, v in dict(mode=mode, loops=loops, window=window, **overrides).items() if v is not None}
    cfg = PLTConfig.from_name(preset, **changes)
    return save_checkpoint(PLT(cfg).init_weights(seed), out)


@click.command("init")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Checkpoint folder to write.")
@click.option("--mode", type=click.Choice(MODES), default="plt", show_default=True)
@click.option("--loops", type=int, help="Number of loops L (default: 2 for plt/looped).")
@click.option("--window", type=int, help="G-SWA window w.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="Weight dtype.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing checkpoint.")
def command(preset, out, mode, loops, window, dtype, seed, force):
    """Write a randomly initialised checkpoint (config.json + model.safetensors)."""
    path = init_checkpoint(preset, out, mode=mode, loops=loops, window=window, seed=seed, force=force, dtype=dtype)
    cfg = PLTConfig.from_json(path / "config.json")
    click.echo(f"wrote {path} ({preset}, mode={cfg.mode}, loops={cfg.loops}, window={cfg.window})")
