"""`plt-deploy check` as a library function: torch reference vs every other backend, JSON report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..backends import BACKEND_NAMES as KNOWN
from ..errors import InputError
from .compare import RULE
from .parity import compare_backends, compare_greedy, fit_workload



def greedy_prompts(vocab: int, lengths=(9, 5), seed: int = 1) -> list[list[int]]:
    g = np.random.default_rng(seed)
    return [[1] + g.integers(3, min(vocab, 259), size=n - 1).tolist() for n in lengths]


WRITTEN_BY = "plt-deploy check"


def is_check_report(data: dict) -> bool:
    """An earlier report of `check --report` (those before WRITTEN_BY are known by their keys)."""
    return data.get("written_by") == WRITTEN_BY or {"reference", "rule", "backends", "passed"} <= data.keys()


def run_check(model: str | Path, onnx: str | Path, backends=("onnxruntime",), report: str | Path | None = None,
              steps: int = 32, new_tokens: int = 64, threads: int | None = None, provider: str | None = None,
              console=None, log=None) -> dict:
    """Compare each backend against the torch reference of `model`; returns the report (passed or not).

    `log(line)` receives progress lines (what is being compared, notes on adapted sizes).
    """
    from ..backends import load_backend
    from ..backends.torch_backend import load as load_torch
    from ..checkpoint import atomic_write_bytes, weight_files, weights_header
    from ..export.manifest import read_manifest

    log = log or (lambda line: None)
    backends = list(dict.fromkeys(b.strip() for b in backends if b.strip()))
    unknown = [b for b in backends if b not in KNOWN]
    if unknown:
        raise InputError(f"unknown backend {unknown[0]!r} in --backends; choose from {', '.join(KNOWN)}")
    tested = [b for b in backends if b != "torch"]
    if not tested:
        raise InputError("--backends names nothing to compare: torch is the reference; add onnxruntime or tensorrt")
    if report:  # an unwritable --report, or one that would replace an input, fails now, not after the comparison
        from ..output_folder import check_report_path, check_writable

        check_report_path(report, "--report", {"--model": model, "--onnx": onnx}, is_check_report)
        check_writable(Path(report).parent, "--report")
    for path in weight_files(model):  # a damaged checkpoint is named as such, not as "another model"
        weights_header(path)
    manifest = read_manifest(onnx, expect_model=model)  # refuses damaged files or another model's export
    if "tensorrt" in tested:  # what loading it would refuse, refused before the other backends' comparisons
        from ..build import availability, plan_check

        plan_check.trt_section(manifest.data, Path(onnx) / "manifest.json")
        availability.require()
    dtype = manifest.dtype
    asked_new_tokens = new_tokens
    batch, prompt_lengths, steps, new_tokens, notes = fit_workload(manifest.max_batch, manifest.max_seq, 2, steps,
                                                                   new_tokens)
    if manifest.quantized:  # compared on its own workload (check.quant_error), fitted with its own notes
        notes, new_tokens = [], asked_new_tokens
    for note in notes:
        log(f"note: {note}")
    reference = load_torch(model, dtype=dtype if dtype != "bfloat16" else "float32")
    out = {"written_by": WRITTEN_BY, "model": str(model), "export": str(onnx), "dtype": dtype, "export_versions": manifest.data["versions"],
           "reference": "torch", "rule": RULE, "notes": notes, "backends": {}, "passed": True}
    if manifest.quantized:
        from .quant_error import RULE as QUANT_RULE, BOUNDS

        out["rule"] = QUANT_RULE.format(bound=BOUNDS[manifest.weights["format"]])
        out["weights"] = manifest.weights["format"]
    for name in tested:
        options = {"threads": threads}
        if provider and name == "onnxruntime":
            options["provider"] = provider
        if manifest.quantized:
            out["backends"][name] = entry = _quantization_entry(reference, name, onnx, options, manifest, log,
                                                                new_tokens)
            out["passed"] &= entry["passed"]
            continue
        with load_backend(name, str(onnx), **options) as be:
            log(f"check {name}: prefill + {steps} decode steps, batch {batch}, against torch")
            parity = compare_backends(reference, be, steps=steps, batch=batch, dtype=dtype,
                                      prompt_lengths=prompt_lengths)
            log(f"check {name}: {new_tokens} greedy tokens for {batch} prompt{'s' if batch != 1 else ''}")
            greedy = compare_greedy(reference, be, greedy_prompts(manifest.config.vocab_size, prompt_lengths),
                                    new_tokens)
        entry = {"parity": parity, "greedy": greedy, "passed": parity["passed"] and greedy["passed"]}
        if name == "tensorrt":  # graph level: Polygraphy TrtRunner per engine (plugin loaded) vs OnnxrtRunner
            from .trt import compare_graphs

            log("check tensorrt: each engine against ONNX Runtime on the same graph")
            entry["graphs"] = compare_graphs(onnx)
            entry["passed"] = entry["passed"] and entry["graphs"]["passed"]
        out["backends"][name] = entry
        out["passed"] &= entry["passed"]
    if console is not None:  # the verdict first: a failed write below does not hide it
        print_report(out, console)
    if report:
        atomic_write_bytes(Path(report), (json.dumps(out, indent=2) + "\n").encode())
    return out


def _quantization_entry(reference, name: str, onnx, options: dict, manifest, log, new_tokens: int) -> dict:
    """A quantized export against the float torch model: quantization error (check.quant_error), not parity."""
    from ..backends import load_backend
    from .quant_error import POSITIONS, quantization_error

    fmt = manifest.weights["format"]
    with load_backend(name, str(onnx), **options) as be:
        log(f"check {name}: {fmt} weights, quantization error against the float torch model "
            f"({POSITIONS} teacher-forced positions, {new_tokens} greedy tokens)")
        q = quantization_error(reference, be, fmt, greedy_tokens=new_tokens)
    for note in q["notes"]:
        log(f"note: {note}")
    return {"quantization": q, "passed": q["passed"]}


def print_report(report: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    if report.get("weights"):
        return _print_quantization(report, console)

    table = Table(title=f"check: torch vs {', '.join(report['backends'])} ({report['dtype']})",
                  caption=f"pass rule (every row and the verdict): {report['rule']}; "
                          "'used' = worst max|d| / allowed")
    for col in ("backend", "output", "iterations", "max |d|", "allowed", "used", "atol", "rtol", "result"):
        table.add_column(col)
    for name, entry in report["backends"].items():
        p = entry["parity"]
        for out_name, s in p["summary"].items():
            table.add_row(name, out_name, str(s["iterations"]), f"{s['max_abs']:.3g}", f"{s['allowed']:.3g}",
                          f"{s['used']:.2f}", f"{p['atol']:.1g}", f"{p['rtol']:.1g}", _verdict(s["passed"]))
        g = entry["greedy"]
        detail = ", ".join("identical" if x["identical"] else f"differs at token {x['first_mismatch']}"
                           for x in g["prompts"])
        table.add_row(name, f"greedy x{len(g['prompts'])}", str(g["new_tokens"]), "-", "-", "-", "-", "-",
                      _verdict(g["passed"]) + f" ({detail})")
        graphs = entry.get("graphs")  # tensorrt: TrtRunner vs OnnxrtRunner, worst output per graph
        for graph, gr in (graphs or {}).get("graphs", {}).items():
            w = max(gr["results"], key=lambda r: r["used"])
            table.add_row(name, f"{graph} graph vs ORT ({w['name']})", str(len(gr["results"])), f"{w['max_abs']:.3g}",
                          f"{w['allowed']:.3g}", f"{w['used']:.2f}", f"{graphs['atol']:.1g}", f"{graphs['rtol']:.1g}",
                          _verdict(gr["passed"]))
    console.print(table)
    for note in report.get("notes", []):
        console.print(escape(f"note: {note}"))
    console.print("[bold green]PASSED[/]" if report["passed"] else "[bold red]FAILED[/]")


def _print_quantization(report: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"check: {report['weights']} weights vs the float torch model ({report['dtype']} activations)",
                  caption=f"quantization error, not parity; pass rule: {report['rule']}")
    for col in ("backend", "positions", "top-1 agreement", "bound", "logit RMS error", "relative",
                "greedy agreement (tokens)", "result"):
        table.add_column(col)
    for name, entry in report["backends"].items():
        q = entry["quantization"]
        table.add_row(name, str(q["positions"]), f"{q['top1_agreement']:.4f}", str(q["bound"]),
                      f"{q['logit_rms_error']:.3g}", f"{q['logit_rms_error_relative'] or 0:.2%}",
                      f"{q['greedy_agreement_lengths']} of {q['greedy_new_tokens']}", _verdict(q["passed"]))
    console.print(table)
    console.print("[bold green]PASSED[/]" if report["passed"] else "[bold red]FAILED[/]")


def _verdict(ok: bool) -> str:
    return "[green]pass[/]" if ok else "[red]FAIL[/]"
