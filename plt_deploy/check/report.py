"""`plt-deploy check` as a library function: torch reference vs every other backend, JSON report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from .parity import compare_backends, compare_greedy

KNOWN = ("torch", "onnxruntime", "tensorrt")


def greedy_prompts(vocab: int, lengths=(9, 5), seed: int = 1) -> list[list[int]]:
    g = np.random.default_rng(seed)
    return [[1] + g.integers(3, min(vocab, 259), size=n - 1).tolist() for n in lengths]


def run_check(model: str | Path, onnx: str | Path, backends=("torch", "onnxruntime"), report: str | Path | None = None,
              steps: int = 32, new_tokens: int = 64, threads: int | None = None, provider: str | None = None,
              console=None) -> dict:
    """Compare each backend against the torch reference of `model`; returns the report (passed or not)."""
    from ..backends import load_backend
    from ..backends.torch_backend import load as load_torch
    from ..checkpoint import atomic_write_bytes
    from ..export.manifest import read_manifest

    backends = [b.strip() for b in backends if b.strip()]
    unknown = [b for b in backends if b not in KNOWN]
    if unknown:
        raise InputError(f"unknown backend {unknown[0]!r} in --backends; choose from {', '.join(KNOWN)}")
    manifest = read_manifest(onnx, expect_model=model)  # refuses damaged files or another model's export
    dtype = manifest.dtype
    reference = load_torch(model, dtype=dtype if dtype != "bfloat16" else "float32")
    out = {"model": str(model), "export": str(onnx), "dtype": dtype, "export_versions": manifest.data["versions"],
           "reference": "torch", "backends": {}, "passed": True}
    for name in backends:
        if name == "torch":
            continue
        options = {"threads": threads}
        if provider and name == "onnxruntime":
            options["provider"] = provider
        with load_backend(name, str(onnx), **options) as be:
            parity = compare_backends(reference, be, steps=steps, batch=2, dtype=dtype)
            greedy = compare_greedy(reference, be, greedy_prompts(manifest.config.vocab_size), new_tokens)
        entry = {"parity": parity, "greedy": greedy, "passed": parity["passed"] and greedy["passed"]}
        if name == "tensorrt":  # graph level: Polygraphy TrtRunner per engine (plugin loaded) vs OnnxrtRunner
            from .trt import compare_graphs

            entry["graphs"] = compare_graphs(onnx)
            entry["passed"] = entry["passed"] and entry["graphs"]["passed"]
        out["backends"][name] = entry
        out["passed"] &= entry["passed"]
    if report:
        atomic_write_bytes(Path(report), (json.dumps(out, indent=2) + "\n").encode())
    if console is not None:
        print_report(out, console)
    return out


def print_report(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"check: torch vs {', '.join(report['backends']) or '(nothing)'} ({report['dtype']})")
    for col in ("backend", "output", "iterations", "max abs", "max rel", "atol", "rtol", "result"):
        table.add_column(col)
    for name, entry in report["backends"].items():
        p = entry["parity"]
        for out_name, s in p["summary"].items():
            table.add_row(name, out_name, str(s["iterations"]), f"{s['max_abs']:.3g}", f"{s['max_rel']:.3g}",
                          f"{p['atol']:.1g}", f"{p['rtol']:.1g}", _verdict(s["passed"]))
        g = entry["greedy"]
        detail = ", ".join("identical" if x["identical"] else f"differs at token {x['first_mismatch']}"
                           for x in g["prompts"])
        table.add_row(name, f"greedy x{len(g['prompts'])}", str(g["new_tokens"]), "-", "-", "-", "-",
                      _verdict(g["passed"]) + f" ({detail})")
        graphs = entry.get("graphs")  # tensorrt: TrtRunner vs OnnxrtRunner, worst output per graph
        for graph, gr in (graphs or {}).get("graphs", {}).items():
            w = max(gr["results"], key=lambda r: r["max_abs"])
            table.add_row(name, f"{graph} graph vs ORT ({w['name']})", str(len(gr["results"])), f"{w['max_abs']:.3g}",
                          f"{w['max_rel']:.3g}", f"{graphs['atol']:.1g}", f"{graphs['rtol']:.1g}", _verdict(gr["passed"]))
    console.print(table)
    console.print("[bold green]PASSED[/]" if report["passed"] else "[bold red]FAILED[/]")


def _verdict(ok: bool) -> str:
    return "[green]pass[/]" if ok else "[red]FAIL[/]"
