"""plt-deploy generate: text from a prompt on the torch, onnxruntime or tensorrt backend."""

from __future__ import annotations

import sys

import click

from ..backends import LOADERS


def run_generate(model: str, prompts: list[str], backend: str = "torch", max_new_tokens: int = 64,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                 stop: tuple[str, ...] = (), stream=None, **backend_options) -> list[str]:
    """Library entry point of `plt-deploy generate`; `stream(text)` receives text as it is decoded."""
    from ..backends import load_backend
    from ..generate import SamplingParams, generate
    from ..tokenizer import load_tokenizer

    be = load_backend(backend, model, **backend_options)
    with be:
        tok = load_tokenizer(getattr(be, "tokenizer_dir", model), be.config.vocab_size)
        stop_ids = [tok.eos_id] if tok.eos_id is not None else []
        for s in stop:
            ids = tok.encode(s, add_bos=False)
            if len(ids) != 1:
                raise click.BadParameter(f"stop string {s!r} is {len(ids)} tokens; it must be exactly one",
                                         param_hint="--stop")
            stop_ids.append(ids[0])
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, seed, tuple(stop_ids))
        streaming = stream is not None and len(prompts) == 1
        done: list[int] = []

        def on_tokens(tokens, active):  # print the text each new token adds to the first prompt's output
            if active[0]:
                before = tok.decode(done)
                done.append(int(tokens[0]))
                stream(tok.decode(done)[len(before):])
        outs = generate(be, [tok.encode(p) for p in prompts], params, pad_id=tok.pad_id,
                        on_tokens=on_tokens if streaming else None)
    return [tok.decode(o) for o in outs]


@click.command("generate")
@click.option("--model", required=True, help="Checkpoint folder (torch) or export folder (onnxruntime, tensorrt).")
@click.option("--prompt", "prompts", required=True, multiple=True, help="Prompt text; repeat for a batch.")
@click.option("--backend", type=click.Choice(list(LOADERS)), default="torch", show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, help="Sampling seed.")
@click.option("--stop", multiple=True, help="Extra stop string (one token); EOS always stops.")
@click.option("--stream", is_flag=True, help="Print tokens as they are generated (one prompt).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the runtime.")
@click.option("--provider", help="ONNX Runtime execution provider (cpu, cuda, tensorrt).")
def command(model, prompts, backend, max_new_tokens, temperature, top_k, top_p, seed, stop, stream, threads,
            provider):
    """Generate a continuation of each --prompt."""
    options = {"threads": threads}
    if provider:
        options["provider"] = provider
    streamer = (lambda text: (sys.stdout.write(text), sys.stdout.flush())) if stream and len(prompts) == 1 else None
    outs = run_generate(model, list(prompts), backend, max_new_tokens, temperature, top_k, top_p, seed, stop,
                        stream=streamer, **options)
    if streamer:
        click.echo()
        return
    for prompt, text in zip(prompts, outs):
        click.echo(prompt + text if len(prompts) == 1 else f"[{prompt!r}] {text}")
