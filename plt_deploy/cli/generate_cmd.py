"""plt-deploy generate: text from a prompt on the torch, onnxruntime or tensorrt backend."""

from __future__ import annotations

import sys

import click

from ..backends import BACKEND_NAMES
from .options import finite, non_empty, seed_option


def _prompt_text(f) -> str:
    """A --prompt-file's text: UTF-8, one trailing newline dropped (the rest as it is)."""
    data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"{f.name}: not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r})",
                                 param_hint="--prompt-file") from None
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


@click.command("generate")
@click.option("--model", required=True, help="Checkpoint folder (torch) or export folder (onnxruntime, tensorrt).")
@click.option("--prompt", "prompts", multiple=True, help="Prompt text; repeat for a batch.")
@click.option("--prompt-file", "prompt_files", multiple=True, type=click.File("rb"),
              help="Read a prompt from this UTF-8 file ('-' = stdin), for prompts too long for the shell; "
                   "repeatable. One trailing newline (what echo and editors add) is dropped.")
@click.option("--backend", type=click.Choice(BACKEND_NAMES), default="torch", show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, callback=finite,
              help="0 = greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True,
              help="Sample from the k most likely tokens (0: no top-k cut).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), callback=finite, default=1.0, show_default=True)
@seed_option(help="Sampling seed.")
@click.option("--stop", multiple=True, callback=non_empty, help="Stop when this text appears (not printed; repeatable); EOS always stops.")
@click.option("--stream", is_flag=True, help="Print tokens as they are generated (one prompt).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the runtime.")
@click.option("--provider", help="ONNX Runtime execution provider (cpu, cuda, tensorrt).")
def command(model, prompts, prompt_files, backend, max_new_tokens, temperature, top_k, top_p, seed, stop, stream, threads,
            provider):
    """Generate a continuation of each --prompt (the prompt is printed, then the new text)."""
    from ..backends.folders import preflight

    prompts = prompts + tuple(_prompt_text(f) for f in prompt_files)
    if not prompts:
        raise click.UsageError("give a prompt: --prompt TEXT or --prompt-file PATH ('-' = stdin)")

    preflight(backend, model)  # a wrong folder or a bad config fails before torch loads
    from ..generate import generate_text
    from ..tokenizer import printable

    options = {"threads": threads}
    if provider:
        options["provider"] = provider
    streaming = stream and len(prompts) == 1
    if stream and not streaming:
        click.echo("note: --stream streams one prompt; with several, each is printed when done", err=True)

    from . import StreamedLine

    def streamer(text):
        sys.stdout.write(text)
        sys.stdout.flush()
        StreamedLine.open = True

    if streaming:
        streamer(printable(prompts[0]))
    outs = generate_text(model, list(prompts), backend, max_new_tokens, temperature, top_k, top_p, seed, stop,
                         stream=streamer if streaming else None, **options)
    if streaming:
        click.echo()
        StreamedLine.open = False
        return
    for prompt, text in zip(prompts, outs):  # one line per prompt: the prompt, then its continuation
        click.echo(printable(prompt) + text)
