"""plt-deploy check: the torch reference against ONNX Runtime (and TensorRT) through Polygraphy."""

from __future__ import annotations

import sys

import click


def _backends(ctx, param, value: str) -> list[str]:
    """--backends: known names, at least one besides torch (a usage error, exit 2, before anything loads)."""
    from ..backends import BACKEND_NAMES as KNOWN  # what check/report.py accepts (torch: the reference)

    names = [b.strip() for b in value.split(",") if b.strip()]
    unknown = [b for b in names if b not in KNOWN]
    if unknown:
        raise click.BadParameter(f"unknown backend {unknown[0]!r}; choose from {', '.join(KNOWN)}")
    if all(b == "torch" for b in names):
        raise click.BadParameter(f"{value!r} names nothing to compare: torch is the reference (always run); "
                                 "add onnxruntime or tensorrt")
    return names


@click.command("check")
@click.option("--model", required=True, type=click.Path(file_okay=False), help="Checkpoint folder (the reference).")
@click.option("--onnx", "onnx_dir", required=True, type=click.Path(file_okay=False),
              help="Export folder written by `plt-deploy export` from the same checkpoint.")
@click.option("--backends", default="torch,onnxruntime", show_default=True, callback=_backends,
              help="Comma-separated backends; each is compared with torch (the reference, always run).")
@click.option("--report", type=click.Path(dir_okay=False), help="Write the JSON report here.")
@click.option("--steps", type=click.IntRange(min=1), default=32, show_default=True, help="Decode steps compared (a quantized export: 2,000 teacher-forced positions instead).")
@click.option("--new-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Greedy tokens compared per prompt.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the runtimes.")
@click.option("--provider", help="ONNX Runtime execution provider (cpu, cuda, tensorrt).")
def command(model, onnx_dir, backends, report, steps, new_tokens, threads, provider):
    """Compare backends on prefill, decode steps and greedy generations; exit 1 on any failure."""
    from ..backends.folders import check_config, require_kind

    for path, kind, flag in ((model, "checkpoint", "--model"), (onnx_dir, "export", "--onnx")):
        require_kind(path, kind, flag)  # cheap checks of both folders before torch and onnx load
        check_config(path)
    from ..check.report import run_check
    from ..progress import console

    result = run_check(model, onnx_dir, backends, report, steps=steps, new_tokens=new_tokens,
                       threads=threads, provider=provider, console=console(),
                       log=lambda line: click.echo(line, err=True))
    if not result["passed"]:
        sys.exit(1)
