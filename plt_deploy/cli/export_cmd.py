"""plt-deploy export: a checkpoint to ONNX (prefill + decode graphs) with a manifest."""

from __future__ import annotations

import click

from ..config import MIN_EXPORT_SEQ
from ..export.quantize import WEIGHT_CHOICES


@click.command("export")
@click.option("--model", required=True, type=click.Path(file_okay=False),
              help="Checkpoint folder (with --weights int8|int4 also a float export folder).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Export folder to write (export/NAME).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16", "float32", "float16", "bfloat16"]),
              help="Weight and activation dtype (default: the checkpoint's).")
@click.option("--opset", type=click.IntRange(min=24, max=25), default=24, show_default=True,
              help="ONNX opset (24..25: TensorScatter, the in-place cache write, and ONNX's standard Attention).")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Largest batch the graphs accept.")
@click.option("--max-seq", type=click.IntRange(min=MIN_EXPORT_SEQ), help="Longest sequence (default: the model's max_seq_len).")
@click.option("--weights", type=click.Choice(WEIGHT_CHOICES), help="Weight storage: fp32, fp16, bf16 (the float dtype) or int8, int4 (weight-only "
              "quantization of the linear layers, per-block scales; activations stay in --dtype).")
@click.option("--block-size", type=int, help="int8/int4: input features per scale (16, 32, 64 or 128; default 32, or the largest "
              "smaller one that divides the model's layer sizes).")
@click.option("--quant-method", help="int8/int4: how weights are rounded (rtn: round to nearest; default).")
@click.option("--quantize-embeddings", is_flag=True, help="int8/int4: also store the embedding table quantized.")
@click.option("--force", is_flag=True, help="Replace an existing export folder: one holding plt-deploy's manifest.json "
              "and only what export/build wrote. A folder holding anything else (a file beside the graphs or in "
              "tensorrt/), or any other non-empty folder, is refused in one line naming it; nothing is deleted.")
@click.option("--no-validate", is_flag=True, help="Skip the ONNX Runtime vs PyTorch check after export.")
def command(model, out, dtype, opset, max_batch, max_seq, weights, block_size, quant_method, quantize_embeddings, force,
            no_validate):
    """Export a checkpoint to ONNX with the G-SWA custom op, then validate it against PyTorch.

    With --weights int8|int4, --model may also be a float export folder: its graphs are quantized
    without tracing again (check the result with `plt-deploy check --model CHECKPOINT --onnx OUT`)."""
    from ..backends.folders import check_config, folder_kind, require_kind
    from ..export.quantize import BLOCK_SIZES, FLOAT_WEIGHTS, METHODS, parse_weights

    if block_size is not None and block_size not in BLOCK_SIZES:  # a wrong value is a usage error (exit 2)
        raise click.BadParameter(f"{block_size}: choose from {', '.join(map(str, BLOCK_SIZES))}",
                                 param_hint="--block-size")
    if quant_method is not None and quant_method not in METHODS:
        raise click.BadParameter(f"{quant_method!r} is unknown; this plt-deploy implements {', '.join(METHODS)}",
                                 param_hint="--quant-method")
    dtype = FLOAT_WEIGHTS.get(dtype, dtype)
    dtype, spec = parse_weights(weights, dtype, block_size, quant_method, quantize_embeddings)
    if spec is not None and folder_kind(model) == "export":
        from ..export.quantize_export import quantize_export

        if dtype is not None:
            raise click.UsageError("--dtype does not apply to an export folder (its graphs keep their dtype)")
        ctx = click.get_current_context()
        given = [f"--{n.replace('_', '-')}" for n in ("opset", "max_batch", "max_seq")
                 if ctx.get_parameter_source(n) is not click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"{', '.join(given)} do{'es' if len(given) == 1 else ''} not apply to an export "
                                   "folder (its graphs keep their opset and limits; check it with `plt-deploy check`)")
        path = quantize_export(model, out, spec, force=force, log=lambda line: click.echo(line, err=True))
        click.echo(f"wrote {path} ({spec.format} weights from the export {model})")
        return
    if folder_kind(model) == "export":
        from ..errors import InputError

        raise InputError(f"--model {model} is an export folder; export takes a checkpoint folder (config.json + "
                         "model.safetensors), or a float export folder with --weights int8|int4 to quantize it")
    require_kind(model, "checkpoint", "--model")
    check_config(model)  # a bad config fails before torch loads
    from ..export.exporter import export_model

    path = export_model(model, out, dtype=dtype, opset=opset, max_batch=max_batch, max_seq=max_seq, force=force,
                        validate=not no_validate, log=lambda line: click.echo(line, err=True), weights=spec)
    click.echo(f"wrote {path} ({', '.join(sorted(p.name for p in path.iterdir() if p.is_file()))})")
