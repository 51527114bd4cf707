"""check's one pass rule and the one helper that reads Polygraphy's run results (issue 9 items 1, 4, 9)."""

import numpy as np
import pytest

from plt_deploy.check.compare import compare_run, error_stats, runner_iterations


def test_rule_is_relative_to_the_row_scale():
    ref = np.array([[150.0, 0.001, -80.0], [0.5, 0.25, -0.1]])
    near_zero_off = ref.copy()
    near_zero_off[0, 1] += 5e-4  # 0.5x the element, but tiny against the row's scale of 150
    s = error_stats(ref, near_zero_off, atol=1e-5, rtol=1e-4)
    assert s["passed"] and s["allowed"] == pytest.approx(1e-5 + 1e-4 * 150)
    small_row_off = ref.copy()
    small_row_off[1, 0] += 5e-4  # the same error in the row whose scale is 0.5 fails
    assert not error_stats(ref, small_row_off, atol=1e-5, rtol=1e-4)["passed"]
    assert not error_stats(ref, np.full_like(ref, np.nan), 1e-5, 1e-4)["passed"]
    assert not error_stats(ref, ref[:1], 1e-5, 1e-4)["passed"]  # shape mismatch


def test_polygraphy_results_of_two_onnxruntime_runners(tiny_exports):
    """RunResults.items() is a generator: the helper must not index it. Two real ORT runners on one graph."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator

    from plt_deploy.check.trt import graph_feeds
    from plt_deploy.export.manifest import read_manifest

    _, ex = tiny_exports["plt"]
    manifest = read_manifest(ex)
    path = str(manifest.graph_path("decode"))
    runners = [OnnxrtRunner(SessionFromOnnx(path, providers=["CPUExecutionProvider"]), name=f"ort{i}")
               for i in range(2)]
    results = Comparator.run(runners, data_loader=graph_feeds(manifest, "decode", batch=2, cache_len=16))
    pairs = runner_iterations(results)
    assert [name for name, _ in pairs] == ["ort0", "ort1"] and len(pairs[0][1]) == 2
    rows = compare_run(results, atol=0.0, rtol=0.0)
    names = {r["name"] for r in rows}
    assert "logits" in names and any(n.startswith("present_") for n in names)
    assert all(r["passed"] and r["max_abs"] == 0.0 for r in rows)  # same graph, same inputs: identical


def test_bfloat16_feeds_for_tensorrt_graph_checks():
    from plt_deploy.check.trt import numpy_dtype

    x = np.zeros(3, dtype=numpy_dtype("bfloat16"))
    assert x.dtype.name == "bfloat16" and x.itemsize == 2
