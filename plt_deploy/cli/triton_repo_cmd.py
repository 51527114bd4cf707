"""plt-deploy triton-repo: a Triton Inference Server model repository serving a PLT model."""

from __future__ import annotations

import click

from ..triton.config import BACKENDS, check_model_name


def _name(ctx, param, value):
    from ..errors import InputError

    try:
        return check_model_name(value)
    except InputError as exc:
        raise click.BadParameter(str(exc).removeprefix("--name ")) from None


@click.command("triton-repo")
@click.option("--model", required=True, type=click.Path(file_okay=False),
              help="Export folder (onnxruntime, tensorrt) or checkpoint folder (torch).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Repository folder to write.")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="onnxruntime", show_default=True,
              help=f"Runtime inside the Python backend: {', '.join(BACKENDS)}.")
@click.option("--slots", type=click.IntRange(min=1), default=4, show_default=True, help="Concurrent sequences the engine batches.")
@click.option("--name", default="plt", show_default=True, callback=_name,
              help="Triton model name (the URL's /v2/models/NAME): letters, digits, '_', '-', '.'.")
@click.option("--max-context", type=click.IntRange(min=2), help="Longest prompt + completion (default: the engine's).")
@click.option("--plugin", type=click.Path(dir_okay=False),
              help="TensorRT plugin library (default: the one the engines were built with).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the runtime.")
@click.option("--force", is_flag=True,
              help="Replace a repository this command wrote, if it holds nothing else. A folder holding anything "
              "else (a file beside it, a version NAME/2 you added), or any other non-empty folder, is refused in one "
              "line naming it; nothing is deleted.")
def command(model, out, backend, slots, name, max_context, plugin, threads, force):
    """Write REPO/NAME/{config.pbtxt,1/model.py,1/artifact} and REPO/README.md for `tritonserver`."""
    from ..triton.repository import write_repository

    path = write_repository(model, out, backend=backend, slots=slots, name=name, force=force, plugin=plugin,
                            max_context=max_context, threads=threads)
    click.echo(f"wrote {path} (model {name}, backend {backend}, {slots} slots); start it with the command in "
               f"{path / 'README.md'}")
