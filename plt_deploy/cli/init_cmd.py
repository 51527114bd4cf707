"""plt-deploy init: a randomly initialised checkpoint from a preset."""

from __future__ import annotations

import click

from .options import loops_for_mode, seed_option

from ..config import MODES, PRESETS


@click.command("init")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Checkpoint folder to write.")
@click.option("--mode", type=click.Choice(MODES), default="plt", show_default=True)
@click.option("--loops", type=click.IntRange(min=2), help="Number of loops L for plt/looped (default: 2).")
@click.option("--window", type=click.IntRange(min=1), help="G-SWA window w.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16", "fp32", "fp16", "bf16"]),
              help="Weight dtype.")
@seed_option(default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace the output of an earlier init/train whole (its train_results.json "
              "goes too). A folder holding anything else (a Hugging Face model, other files, hidden ones included) "
              "is refused, --force or not, naming what it holds; nothing is deleted.")
def command(preset, out, mode, loops, window, dtype, seed, force):
    """Write a randomly initialised checkpoint (config.json + model.safetensors)."""
    from ..config import PLTConfig
    from ..errors import ConfigError

    loops_for_mode(mode, loops)
    from ..export.quantize import FLOAT_WEIGHTS

    dtype = FLOAT_WEIGHTS.get(dtype, dtype)  # fp32 / fp16 / bf16, as export spells them
    changes = {k: v for k, v in dict(mode=mode, loops=loops, window=window, dtype=dtype).items() if v is not None}
    try:
        PLTConfig.from_name(preset, **changes)  # a bad combination fails here, before torch is imported
    except ConfigError as exc:  # e.g. --window beyond the preset's max_seq_len: a usage error, as train's
        raise click.UsageError(str(exc)) from None
    from ..checkpoint import init_checkpoint

    path = init_checkpoint(preset, out, mode=mode, loops=loops, window=window, seed=seed, force=force, dtype=dtype)
    cfg = PLTConfig.from_json(path / "config.json")
    click.echo(f"wrote {path} ({preset}, mode={cfg.mode}, loops={cfg.loops}, window={cfg.window})")
