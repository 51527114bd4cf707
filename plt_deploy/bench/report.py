"""Presenting a benchmark: rich tables and the JSON file (written atomically)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def _mib(n):
    return "-" if n is None else f"{n / 2**20:.2f} MiB"


def results_table(result: dict) -> Table:
    t = Table(title="decode benchmark (median over interleaved steps)")
    for col in ("variant", "backend", "batch", "prompt", "ctx", "prefill ms", "decode ms med", "decode ms p90",
                "tok/s", "x vanilla", "KV alloc", "KV formula", "KV ratio", "expected"):
        t.add_column(col, justify="left" if col in ("variant", "backend") else "right")
    for r in result["rows"]:
        if r["error"]:
            t.add_row(r["variant"], r["backend"], str(r["batch"]), *["-"] * 10, f"[red]{r['error'][:40]}")
            continue
        t.add_row(r["variant"], r["backend"], str(r["batch"]), str(r["prompt_len"]), str(r["ctx"]),
                  _f(r["prefill_ms"], "{:.1f}"), _f(r["decode_ms_median"]), _f(r["decode_ms_p90"]),
                  _f(r["tokens_per_s"], "{:.1f}"), _f(r["latency_vs_vanilla"], "{:.3f}"),
                  _mib(r["kv_bytes_allocated"]), _mib(r["kv_bytes_formula"]),
                  _f(r["kv_ratio_vs_vanilla"], "{:.4f}"), _f(r["kv_ratio_expected"], "{:.4f}"))
    return t


def context_table(ctx: dict) -> Table:
    t = Table(title=f"context scaling (batch 1, {ctx['steps']} decode steps per run)")
    for col in ("variant", "ctx", "session max_seq", "prefill ms", "decode ms med", "decode ms p90"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for p in ctx["points"]:
        t.add_row(p["variant"], str(p["ctx"]), str(p["max_seq"]), _f(p["prefill_ms"], "{:.1f}"),
                  _f(p["decode_ms_median"]), _f(p["decode_ms_p90"]))
    return t


def floor_table(floor: dict) -> Table:
    t = Table(title=f"memory floor: {floor['preset']} on {floor['backend']} at {floor['gbps']:.1f} GB/s copy bandwidth")
    for col in ("variant", "params", "weight bytes", "floor ms", "decode ms med", "x floor"):
        t.add_column(col, justify="left" if col == "variant" else "right")
    for name, v in floor["variants"].items():
        t.add_row(name, f"{v['params'] / 1e6:.1f}M", _mib(v["weight_bytes"]), _f(v["floor_ms"]),
                  _f(v["decode_ms_median"]), _f(v["ratio_vs_floor"]))
    return t


def targets_table(result: dict) -> Table:
    match = result.get("targets_settings", {}).get("this_run_matches")
    t = Table(title="targets" + ("" if match else " (this run is not under the targets' conditions: "
                                 "small, onnxruntime, batch 1, prompt 512, 128 new tokens, fp32)"))
    for col in ("target", "measured", "threshold", "result"):
        t.add_column(col)
    for c in result["targets"]:
        m = c["measured"]
        shown = _f(m, "{:.3f}") if isinstance(m, (int, float)) or m is None else str(m)
        verdict = "[yellow]noisy" if c.get("noisy") else {True: "[green]pass", False: "[red]fail",
                                                           None: "[yellow]n/a"}[c["passed"]]
        t.add_row(c["target"], shown, "-" if c["threshold"] is None else str(c["threshold"]), verdict)
    return t


def print_report(result: dict, console: Console | None = None) -> None:
    if console is None:
        from ..progress import console as default_console

        console = default_console()  # files and pipes: wide enough that no number is cut
    for note in result.get("notes") or ():
        console.print(escape(f"note: {note}"))
    console.print(results_table(result))
    from .targets import NOISE_LIMIT, noisy_rows, spread

    for r in noisy_rows(result["rows"]):
        console.print(escape(f"warning: {r['variant']} batch {r['batch']}: decode p90 is {spread(r):.1f}x its median "
                             f"(> {NOISE_LIMIT}): the machine was busy or the run too short; its latency ratios are "
                             "not meaningful (more --new-tokens and --repeats, a quieter machine)"))
    if not result["peer"].get("available"):
        console.print(escape(f"hf-llama peer: not run ({result['peer'].get('reason')})"))  # keeps [bench]
    if result.get("context_scaling"):
        console.print(context_table(result["context_scaling"]))
    bw = result.get("bandwidth")
    if bw:
        console.print(f"memory bandwidth (copy of {_mib(bw['array_bytes'])}, read + write): best "
                      f"{bw['best_gbps']:.1f} GB/s, median {bw['median_gbps']:.1f} GB/s, {bw['threads']} threads")
    if result.get("floor"):
        console.print(floor_table(result["floor"]))
    console.print(targets_table(result))


def write_json(result: dict, path: str | Path) -> Path:
    """Write the result as JSON through a temporary file and a rename."""
    from ..checkpoint import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, (json.dumps(result, indent=2) + "\n").encode())
    return path


