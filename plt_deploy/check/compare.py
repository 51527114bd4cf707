"""The one pass rule of `plt-deploy check` (and of export's self-validation), and the one helper
that reads Polygraphy's run results.

Rule, per output, per iteration, per batch row b:

    max_i |out[b, i] - ref[b, i]|  <=  atol + rtol * max_i |ref[b, i]|

Errors are judged against the scale of the row, not element by element: float32 rounding of a
logit vector grows with its largest entries, so an element-wise `atol + rtol * |ref[i]|` rejects
correct exports whose logits reach 50-170 wherever a logit happens to be near 0, while a real bug
(a wrong weight, a wrong mask) moves the row by far more than rtol of its scale. Polygraphy's own
verdict (element-wise, failing where |d| > atol AND |d|/|ref| > rtol) is a different rule, so it is
not computed at all: one rule gives every row of the table and the exit code.
"""

from __future__ import annotations

import numpy as np

RULE = "max|d| <= atol + rtol*max|ref| per row"


def as_float64(x) -> np.ndarray:
    """numpy or torch (Polygraphy's runners return torch tensors when fed torch, e.g. bfloat16) -> float64."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def error_stats(ref, out, atol: float, rtol: float) -> dict:
    """Statistics and verdict of one output of one iteration (rows = the leading batch axis)."""
    ref64 = as_float64(ref)
    out64 = as_float64(out)
    if ref64.shape != out64.shape:
        return {"max_abs": float("inf"), "scale": float("nan"), "allowed": 0.0, "used": float("inf"),
                "atol": atol, "rtol": rtol, "passed": False,
                "error": f"shape {list(out64.shape)} != reference {list(ref64.shape)}"}
    rows = max(1, ref64.shape[0]) if ref64.ndim else 1
    diff = np.abs(out64 - ref64).reshape(rows, -1)  # [rows, n]
    scale = np.abs(ref64).reshape(rows, -1).max(axis=1)  # [rows]
    row_err = diff.max(axis=1)  # [rows]
    allowed = atol + rtol * scale  # [rows]
    finite = bool(np.isfinite(out64).all())
    used = np.where(allowed > 0, row_err / np.where(allowed > 0, allowed, 1.0), np.where(row_err > 0, np.inf, 0.0))
    worst = int(np.argmax(used))
    return {"max_abs": float(row_err.max()), "scale": float(scale[worst]), "allowed": float(allowed[worst]),
            "used": float(used[worst]), "atol": atol, "rtol": rtol,
            "passed": finite and bool(np.all(row_err <= allowed))}


def runner_iterations(run_results) -> list[tuple[str, list]]:
    """Polygraphy RunResults -> [(runner name, [iteration outputs])]. `items()` is a generator in
    current Polygraphy and a list in older ones: never index it."""
    return [(name, list(iters)) for name, iters in run_results.items()]


def compare_run(run_results, atol: float, rtol: float) -> list[dict]:
    """Every output of every iteration of the second runner against the first, by the rule above."""
    pairs = runner_iterations(run_results)
    if len(pairs) != 2:
        raise ValueError(f"expected the results of 2 runners, got {len(pairs)}")
    (_, ref_iters), (_, test_iters) = pairs
    rows = []
    for i, (r_it, t_it) in enumerate(zip(ref_iters, test_iters)):
        for name in r_it.keys():
            if name not in t_it.keys():
                rows.append({"name": name, "iteration": i, "max_abs": float("inf"), "allowed": 0.0,
                             "used": float("inf"), "scale": float("nan"), "atol": atol, "rtol": rtol,
                             "passed": False, "error": "missing from the tested runner's outputs"})
                continue
            rows.append({"name": name, "iteration": i, **error_stats(r_it[name], t_it[name], atol, rtol)})
    return rows


def summarize(rows: list[dict]) -> dict:
    """name -> worst row over iterations (the one closest to or furthest past its allowance)."""
    out = {}
    for name in dict.fromkeys(r["name"] for r in rows):
        mine = [r for r in rows if r["name"] == name]
        worst = max(mine, key=lambda r: r["used"])
        out[name] = {"iterations": len(mine), "max_abs": max(r["max_abs"] for r in mine), "allowed": worst["allowed"],
                     "used": worst["used"], "worst_iteration": worst["iteration"],
                     "passed": all(r["passed"] for r in mine)}
    return out


def quiet_polygraphy() -> None:
    """Polygraphy logs only errors, and never its colour warning on a pipe."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR
    G_LOGGER.colors = False  # also skips its "'colored' module is not installed" warning
