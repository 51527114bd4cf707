"""plt-deploy build: TensorRT engines (prefill + decode) from an export folder."""

from __future__ import annotations

import click

from ..config import MIN_EXPORT_SEQ


@click.command("build")
@click.option("--onnx", "export_dir", required=True, type=click.Path(file_okay=False),
              help="Export folder from `plt-deploy export` (manifest.json + prefill/decode ONNX).")
@click.option("--plugin", type=click.Path(dir_okay=False),
              help="libplt_trt_plugins.so (default: $PLT_TRT_PLUGIN, then plugins/build/ and build/plugins/).")
@click.option("--max-batch", type=click.IntRange(min=1), help="Largest batch the engines accept (default: the export's).")
@click.option("--max-seq", type=click.IntRange(min=MIN_EXPORT_SEQ),
              help="Longest prompt + generation, also the decode cache length (default: the export's).")
@click.option("--opt-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch size the kernels are tuned for.")
@click.option("--opt-prompt", type=click.IntRange(min=1), default=128, show_default=True,
              help="Prompt length the prefill kernels are tuned for.")
@click.option("--workspace", help="Builder workspace limit, e.g. 4G or 512M (default: TensorRT's).")
@click.option("--opt-level", type=click.IntRange(0, 5), help="builder_optimization_level (TensorRT default 3).")
@click.option("--timing-cache", type=click.Path(dir_okay=False),
              help="Timing cache file (default: <export>/tensorrt/timing.cache), read and updated.")
@click.option("--verbose", is_flag=True, help="TensorRT's verbose log.")
def command(export_dir, plugin, max_batch, max_seq, opt_batch, opt_prompt, workspace, opt_level, timing_cache, verbose):
    """Build TensorRT engines for an export: the G-SWA plugin preferred over the ONNX function,
    prefill and decode optimisation profiles, a timing cache; records the TensorRT version, the
    GPU's compute capability and the plugin's sha256 in the export's manifest."""
    from ..build import availability
    from ..build.engine import BuildOptions, build_engines, parse_size

    availability.require()  # one line (what is missing, how to install) before anything else
    opts = BuildOptions(max_batch=max_batch, max_seq=max_seq, opt_batch=opt_batch, opt_prompt=opt_prompt,
                        workspace=parse_size(workspace) if workspace else None, opt_level=opt_level,
                        timing_cache=timing_cache, verbose=verbose)
    section = build_engines(export_dir, plugin=plugin, options=opts, log=click.echo)
    click.echo(f"TensorRT {section['version']} on {section['device']} (sm {section['compute_capability']}): "
               f"engines recorded in {export_dir}/manifest.json")
