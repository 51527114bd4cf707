"""plt-deploy loadtest: a bounded load test of a running `plt-deploy serve`."""

from __future__ import annotations

import json

import click

from .options import positive_ints, seed_option, finite


@click.command("loadtest")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The server's base URL.")
@click.option("--requests", "n_requests", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True, help="Streaming clients.")
@click.option("--prompt-lens", default="16,64,96", show_default=True, callback=positive_ints,
              help="Prompt characters (the defaults fit serve's default --max-context 256 with --output-lens).")
@click.option("--output-lens", default="32,64,128", show_default=True, callback=positive_ints, help="max_tokens values.")
@seed_option(default=0, show_default=True)
@click.option("--api-key", envvar="PLT_API_KEY", help="Bearer key (default: $PLT_API_KEY).")
@click.option("--max-seconds", type=click.FloatRange(min=1), callback=finite, default=1800, show_default=True,
              help="No new request starts after this.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the report as JSON.")
def command(url, n_requests, concurrency, prompt_lens, output_lens, seed, api_key, max_seconds, json_path):
    """Send --requests streaming completions from --concurrency clients; report throughput and latency."""
    from ..checkpoint import atomic_write_bytes
    from ..serve.loadtest import LoadSpec, format_report, run_load

    if json_path:  # before the run: it must not replace a file that is not an earlier load-test report
        from ..output_folder import check_report_path

        check_report_path(json_path, "--json", {}, lambda data: {"requests_sent", "requests_ok", "errors"} <= data.keys())
    url = url.rstrip("/").removesuffix("/v1")  # the server's root, also given as an OpenAI base URL (.../v1)
    spec = LoadSpec(url=url, requests=n_requests, concurrency=concurrency, prompt_lens=prompt_lens,
                    output_lens=output_lens, seed=seed, api_key=api_key, max_seconds=max_seconds)
    report = run_load(spec)
    click.echo(format_report(report))
    if json_path:
        from pathlib import Path

        atomic_write_bytes(Path(json_path), (json.dumps(report, indent=2) + "\n").encode())
        click.echo(f"wrote {json_path}")
    if report["errors"]:
        from ..errors import PLTError

        raise PLTError(f"{report['errors']} of {report['requests_sent']} requests failed")
