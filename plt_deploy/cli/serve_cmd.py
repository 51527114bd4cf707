"""plt-deploy serve: an OpenAI-compatible HTTP server (continuous batching over slots)."""

from __future__ import annotations

import signal
import sys

import click

from .options import finite

from ..backends import LOADERS


@click.command("serve")
@click.option("--model", required=True, help="Checkpoint folder (torch) or export folder (onnxruntime, tensorrt).")
@click.option("--backend", type=click.Choice(list(LOADERS)), default="torch", show_default=True)
@click.option("--slots", type=click.IntRange(min=1), default=4, show_default=True,
              help="Requests decoded together (rows of the one decoder session).")
@click.option("--max-context", type=click.IntRange(min=2),
              help="Prompt + generated tokens per request.  [default: 256, or the model's limit if smaller]")
@click.option("--max-queue", type=click.IntRange(min=0), default=64, show_default=True,
              help="Requests that may wait while every slot is taken (0: none wait); beyond it: 429. "
                   "A request that finds a free slot is always admitted.")
@click.option("--max-step-tokens", type=click.IntRange(min=1),
              help="Tokens per engine step: one per decoding slot, the rest for prompt chunks (chunked prefill), "
                   "so a long prompt cannot stall running streams. At least --slots. "
                   "[default: max(128, 2 x --slots)]")
@click.option("--prefix-cache-mb", type=click.FloatRange(min=0, min_open=True), callback=finite, default=256, show_default=True,
              help="Memory for the prefix cache: prompt prefixes already prefilled are reused (LRU).")
@click.option("--no-prefix-cache", is_flag=True, help="Prefill every prompt from its first token.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless you say so).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", help="Require `Authorization: Bearer KEY` on /v1 (default: $PLT_API_KEY).")
@click.option("--served-model-name", help="Model id in the API (default: the folder's name).")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=1 << 20, show_default=True,
              help="Larger request bodies get 413.")
@click.option("--max-header-bytes", type=click.IntRange(min=1024), default=16384, show_default=True,
              help="Request line + headers; larger get 431.")
@click.option("--max-connections", type=click.IntRange(min=1), default=256, show_default=True,
              help="Requests served at once (open streams included); more get a JSON 503 with Retry-After, "
                   "while /health and /metrics are still answered. Connections beyond twice this many "
                   "(idle ones included) get uvicorn's plain 503, /health too.")
@click.option("--timeout-keep-alive", type=click.FloatRange(min=0.1), callback=finite, default=5.0, show_default=True,
              help="Seconds a connection may stay silent (idle, or sending its headers or body) before it is closed.")
@click.option("--max-tokens-limit", type=click.IntRange(min=1), help="Largest max_tokens accepted (default: --max-context).")
@click.option("--shutdown-timeout", type=click.FloatRange(min=0), callback=finite, default=30.0, show_default=True,
              help="Seconds open streams get to finish after SIGTERM/SIGINT; then they end with an error chunk.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the runtime.")
@click.option("--provider", help="ONNX Runtime execution provider (cpu, cuda, tensorrt).")
@click.option("--plugin", help="TensorRT plugin library (tensorrt backend).")
@click.option("--ort-spinning/--no-ort-spinning", default=False, show_default=True,
              help="ONNX Runtime threads busy-wait between runs (off: they leave the CPU to the server).")
@click.option("--replicas", type=click.IntRange(min=1), help="Run as a Ray Serve deployment with N replicas.")
@click.option("--max-replicas", type=click.IntRange(min=1), help="Autoscale between --replicas and this many.")
@click.option("--ray-address", help="Existing Ray cluster (default: a local one on 127.0.0.1).")
@click.option("--ray-cpus", type=click.IntRange(min=1), help="CPUs of the local Ray instance (default: replicas).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="warning",
              show_default=True)
def command(model, backend, slots, max_context, max_queue, max_step_tokens, prefix_cache_mb, no_prefix_cache, host,
            port, api_key,
            served_model_name, max_body_bytes, max_header_bytes, max_connections, timeout_keep_alive,
            max_tokens_limit, shutdown_timeout, threads, provider, plugin,
            ort_spinning, replicas, max_replicas, ray_address, ray_cpus, log_level):
    """Serve --model over HTTP: /v1/completions, /v1/chat/completions, /v1/models, /health, /metrics."""
    from ..backends.folders import preflight
    from ..serve.deps import require_serve_packages

    ray_only = [f for f, v in (("--max-replicas", max_replicas), ("--ray-address", ray_address),
                               ("--ray-cpus", ray_cpus)) if v is not None]
    if ray_only and not replicas:  # they would be ignored: the single-process server has no Ray
        raise click.UsageError(f"{', '.join(ray_only)} go{'es' if len(ray_only) == 1 else ''} with --replicas N")
    require_serve_packages(ray=bool(replicas))  # one line naming the extra, before anything loads
    preflight(backend, model)
    if replicas and ray_address:  # the proxies run on the cluster's nodes: their port cannot be checked here
        if port == 0:
            raise click.BadParameter("0 cannot name a port on a Ray cluster's nodes; give one", param_hint="--port")
    else:  # this machine listens (the single server, or a local Ray's proxy): a busy port fails now, in
        from ..serve.deps import claim_port  # one line; 0 becomes the real port

        port = claim_port(host, port)
    options = dict(model=model, backend=backend, slots=slots, max_context=max_context, max_queue=max_queue,
                   max_step_tokens=max_step_tokens, prefix_cache_mb=0 if no_prefix_cache else prefix_cache_mb,
                   host=host, port=port, api_key=api_key, threads=threads,
                   plugin=plugin, provider=provider, model_name=served_model_name, max_body_bytes=max_body_bytes,
                   max_tokens_limit=max_tokens_limit, ort_spinning=ort_spinning)
    if replicas:
        from ..serve.ray_app import run_ray

        click.echo(f"loading {model} ({backend}, {replicas} Ray Serve replica{'s' if replicas > 1 else ''} x "
                   f"{slots} slots) to serve on http://{host}:{port}", err=True)
        stopped_by = run_ray(replicas=replicas, max_replicas=max_replicas, ray_address=ray_address, ray_cpus=ray_cpus,
                             **options)
    else:
        from ..serve.server import serve_forever

        click.echo(f"loading {model} ({backend}, {slots} slots) to serve on http://{host}:{port}", err=True)
        stopped_by = serve_forever(shutdown_timeout=shutdown_timeout, log_level=log_level,
                                   max_connections=max_connections, max_header_bytes=max_header_bytes,
                                   timeout_keep_alive=timeout_keep_alive, **options)
    click.echo("stopped", err=True)
    if stopped_by == signal.SIGINT:
        sys.exit(130)  # like every plt-deploy command interrupted by Ctrl-C
