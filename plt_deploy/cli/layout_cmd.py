"""plt-deploy layout: the tensors a checkpoint must hold for a config, and whether one does."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..config import MODES, PRESETS
from .options import loops_for_mode


@click.command("layout")
@click.option("--preset", type=click.Choice(list(PRESETS)), help="A built-in model size.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True), help="A config.json.")
@click.option("--model", type=click.Path(file_okay=False, exists=True),
              help="A checkpoint folder: its config, and its model.safetensors checked against it.")
@click.option("--mode", type=click.Choice(MODES), help="With --preset: plt, looped or vanilla.")
@click.option("--loops", type=click.IntRange(min=2), help="With --preset: number of loops L for plt/looped (vanilla "
              "has one).")
@click.option("--window", type=click.IntRange(min=1), help="With --preset: G-SWA window w.")
def command(preset, config_path, model, mode, loops, window):
    """Print every tensor (name, shape, role) that model.safetensors must hold for a config: the map
    for bringing weights trained elsewhere. With --model, also check the folder's weights against it
    (exit 1 when a tensor is missing, unexpected or of the wrong shape)."""
    from ..config import PLTConfig

    if sum(x is not None for x in (preset, config_path, model)) != 1:
        raise click.UsageError("give exactly one of --preset, --config or --model")
    changes = {k: v for k, v in dict(mode=mode, loops=loops, window=window).items() if v is not None}
    if changes and preset is None:
        raise click.UsageError("--mode, --loops and --window go with --preset (a config file already sets them)")
    loops_for_mode(mode, loops)
    if preset:
        cfg = PLTConfig.from_name(preset, **changes)
    elif config_path:
        cfg = PLTConfig.from_json(config_path)
    else:
        from ..backends.folders import require_kind
        from ..checkpoint import load_config

        require_kind(model, "checkpoint", "--model")  # an export folder: say so, not "config.json not found"
        cfg = load_config(model)
    from rich.markup import escape
    from rich.table import Table

    from .. import hf
    from ..checkpoint import WEIGHTS_FILE, weight_layout, weights_header
    from ..progress import console

    if model and hf.is_hf_folder(model):  # the published names (one table: hf.HF_NAMES)
        layout, weights = hf.hf_layout(cfg), "the weights (Hugging Face names)"
        found = {name: shape for name, (shape, _) in hf.header_shapes(Path(model)).items()
                 if not name.endswith(hf.IGNORED_SUFFIXES)}
        where = model
    else:
        layout, weights, where = weight_layout(cfg), "model.safetensors", f"{model}/{WEIGHTS_FILE}"
        found = weights_header(where) if model else None
    table = Table(title=f"{weights} for mode={cfg.mode}, loops={cfg.loops}, layers={cfg.n_layers}, "
                        f"d_model={cfg.d_model}, heads={cfg.n_heads}/{cfg.n_kv_heads} (q/kv), "
                        f"head_dim={cfg.head_dim}, vocab={cfg.vocab_size}")
    for column in ("tensor", "shape", "role") + (("in the checkpoint",) if found is not None else ()):
        table.add_column(column)
    problems = 0
    for name, shape, role in layout:
        row = [name, str(list(shape)), role]
        if found is not None:
            got = found.get(name)
            status = "ok" if got == shape else "MISSING" if got is None else f"shape {list(got)}"
            problems += status != "ok"
            row.append(status)
        table.add_row(*map(escape, row))
    unexpected = sorted(set(found or {}) - {name for name, _, _ in layout})
    for name in unexpected:
        table.add_row(escape(name), escape(str(list(found[name]))), "not part of this config", "UNEXPECTED")
    out = console()
    out.print(table)
    n = sum(1 for _ in layout)
    params = sum(_numel(shape) for _, shape, _ in layout)
    out.print(escape(f"{n} tensors, {params:,} parameters; names and [out, in] layouts as torch.nn.Linear; any "
                     f"float dtype (converted to the config's dtype {cfg.dtype} on load)"))
    if found is not None:
        if problems or unexpected:
            click.echo(f"error: {where}: {problems} tensor(s) missing or of the wrong shape, "
                       f"{len(unexpected)} unexpected", err=True)
            sys.exit(1)
        out.print(escape(f"{where} matches its config in names and shapes"))
    out.print(escape(PARITY_NOTE))


# A shape match is not an architecture match: said wherever layout reports one (and in the README).
PARITY_NOTE = ("note: matching names and shapes do not prove the architecture matches (another loop model, norm or "
               "RoPE variant has the same shapes and gives different logits): compare logits with your own "
               "implementation on a few tokens, as README 'Weights trained by other code' shows")


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
