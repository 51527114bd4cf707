"""plt-deploy bench: decode latency and KV memory of plt / looped / vanilla and a Hugging Face peer."""

from __future__ import annotations

from pathlib import Path

import click

from ..backends import LOADERS
from ..config import PRESETS
from .options import positive_ints, seed_option


@click.command("bench")
@click.option("--model", type=click.Path(exists=True, file_okay=False), help="Checkpoint folder to derive the variants from.")
@click.option("--preset", type=click.Choice(list(PRESETS)), help="Build random-init variants from a preset.")
@click.option("--backend", type=click.Choice(list(LOADERS)), default="torch", show_default=True)
@click.option("--batch", "batches", default="1", show_default=True, callback=positive_ints, help="Batch sizes, e.g. 1,8.")
@click.option("--prompt-len", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--new-tokens", type=click.IntRange(min=1), default=128, show_default=True,
              help="Decode steps timed per run.")
@click.option("--variants", help="Comma-separated subset of plt-2,plt-3,looped-2,vanilla,loopcoder-2 (vanilla "
                                 "required); default all but loopcoder-2.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Interleaved rounds (every variant runs once per round).")
@click.option("--warmup-tokens", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--contexts", default="128,2048", show_default=True, callback=positive_ints,
              help="Short and long context for the decode-latency scaling check.")
@click.option("--ctx-steps", type=click.IntRange(min=1), default=32, show_default=True,
              help="Decode steps timed per context-scaling run.")
@click.option("--no-contexts", is_flag=True, help="Skip the context-scaling measurement.")
@click.option("--peer/--no-peer", default=True, show_default=True, help="Include the transformers Llama peer.")
@click.option("--floor-preset", type=click.Choice(list(PRESETS)),
              help="Also time this (memory-bound) preset against weight bytes / bandwidth, e.g. base. Slow.")
@click.option("--bandwidth-mib", type=click.IntRange(min=1), default=512, show_default=True,
              help="Size of the array copied to measure memory bandwidth.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (torch and the runtime).")
@click.option("--provider", help="ONNX Runtime execution provider.")
@seed_option(default=0, show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False),
              help="Keep exports here (reused when the weights match) instead of a temp folder.")
@click.option("--validate-exports/--no-validate-exports", default=True, show_default=True,
              help="Let the exporter check each export against torch (slower).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write all results as JSON.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def command(model, preset, backend, batches, prompt_len, new_tokens, variants, repeats, warmup_tokens, contexts, ctx_steps,
            no_contexts, peer, floor_preset, bandwidth_mib, threads, provider, seed, workdir, validate_exports, json_path, progress):
    """Benchmark decode latency, tokens/s and KV-cache bytes of plt-2, plt-3, looped-2 and vanilla
    built from one preset (or checkpoint), interleaved in one run, plus a Hugging Face peer."""
    from ..bench import print_report, run_bench, write_json
    from ..progress import progress_reporter

    if (model is None) == (preset is None):
        raise click.UsageError("give exactly one of --model or --preset")
    if model is not None:
        from ..backends.folders import require_kind

        if (Path(model) / "manifest.json").is_file():
            from ..errors import InputError

            raise InputError(f"--model {model} is an export folder; bench builds and exports its own variants from a "
                             "checkpoint folder (to time quantized exports: scripts/quant-bench.py)")
        require_kind(model, "checkpoint", "--model")
    if json_path:  # before the run: it must not replace the checkpoint's files or another file
        from ..bench.suite import SCHEMA
        from ..output_folder import check_report_path

        check_report_path(json_path, "--json", {"--model": model, "--workdir": workdir},
                          lambda data: data.get("schema") == SCHEMA)
    if not no_contexts and len(contexts) != 2:
        raise click.BadParameter("give two contexts, short and long (e.g. 128,2048)", param_hint="--contexts")
    with progress_reporter("bench", None, every=0, enabled=progress) as report:
        result = run_bench(preset=preset, model=model, backend=backend, batches=batches, prompt_len=prompt_len,
                           new_tokens=new_tokens, repeats=repeats,
                           variants=tuple(variants.split(",")) if variants else None, warmup_tokens=warmup_tokens,
                           contexts=None if no_contexts else contexts, ctx_steps=ctx_steps, peer=peer,
                           floor_preset=floor_preset, bandwidth_bytes=bandwidth_mib << 20, threads=threads, provider=provider, seed=seed,
                           workdir=workdir, validate_exports=validate_exports, tick=report.advance,
                           on_total=report.set_total)
    print_report(result)
    if json_path:
        click.echo(f"wrote {write_json(result, json_path)}")
