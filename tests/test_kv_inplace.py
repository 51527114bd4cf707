"""Caches written in place: every decode cache output is one TensorScatter of its input, in the form
TensorRT imports as IKVCacheUpdateLayer; ONNX Runtime runs it without copying the cache; the
cache op's in-place path equals its reference; serving joins write only their rows.

The TensorRT side of the contract (the engine aliases each output to its input, one buffer per
cache, KV bytes on the device = formula) runs on a GPU: tests/test_trt.py and scripts/gpu-check.sh.
"""

import numpy as np
import onnx
import pytest
import torch

from plt_deploy.backends.ort_backend import OrtBackend
from plt_deploy.cache import PLTCache, kv_bytes_formula
from plt_deploy.export import io_spec
from plt_deploy.export.manifest import read_manifest
from plt_deploy.ops import kv_update

MODES = ("plt", "looped", "vanilla")


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _shapes(model) -> dict[str, tuple]:
    """Value name -> (elem_type, dims) after ONNX shape inference (graph inputs included)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tt = v.type.tensor_type
        out[v.name] = (tt.elem_type, tuple(d.dim_value if d.HasField("dim_value") else d.dim_param
                                           for d in tt.shape.dim))
    return out


@pytest.mark.parametrize("mode", MODES)
def test_every_cache_output_is_a_kv_cache_update(tiny_exports, mode):
    """onnx-tensorrt's TensorScatter importer (TensorRT >= 10.15) makes IKVCacheUpdateLayer of a node
    whose cache and update are 4-D, axis -2, mode linear; the layer needs the cache to be a network
    input (docs/tensorrt.md). Each in_place decode output must be exactly that node on its alias_of."""
    assert_caches_written_by_kv_cache_update(tiny_exports[mode][1])


def assert_caches_written_by_kv_cache_update(ex) -> None:
    """The check above on one export folder (also used by test_hf_loopcoder.py)."""
    m = read_manifest(ex)
    model = onnx.load(str(m.graph_path("decode")), load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import}[""] >= kv_update.ONNX_OPSET
    producer = {o: n for n in model.graph.node for o in n.output}
    graph_inputs = {i.name for i in model.graph.input}
    shapes = _shapes(model)
    spec = m.graphs["decode"]
    caches = [o for o in spec.state_outputs() if o.in_place]
    assert len(caches) == len([o for o in spec.state_outputs() if o.role != "carry"]) > 0
    for o in caches:
        node = producer[o.name]
        assert (node.op_type, node.domain) == ("TensorScatter", ""), o.name
        assert node.input[0] == o.alias_of and o.alias_of in graph_inputs, o.name
        assert _attr(node, "axis", -2) in (-2, 2) and _attr(node, "mode", b"linear") in (b"linear", "linear")
        cache_t, cache_dims = shapes[node.input[0]]
        upd_t, upd_dims = shapes[node.input[1]]
        idx_t, idx_dims = shapes[node.input[2]]
        assert len(cache_dims) == 4 and len(upd_dims) == 4 and upd_t == cache_t, (o.name, cache_dims, upd_dims)
        assert upd_dims[2] == 1 and upd_dims[1] == cache_dims[1] and upd_dims[3] == cache_dims[3]
        assert idx_t == onnx.TensorProto.INT64 and len(idx_dims) == 1
        assert o.shape == tuple(spec.inputs[[t.name for t in spec.inputs].index(o.alias_of)].shape)
    # nothing else writes a cache: no ScatterElements / ScatterND left anywhere
    assert not [n.op_type for n in model.graph.node if n.op_type.startswith("Scatter")]
    carry = spec.maybe("carry", "outputs")
    if carry is not None:
        assert not carry.in_place and producer[carry.name].op_type != "TensorScatter"


@pytest.mark.parametrize("mode", MODES)
def test_prefill_writes_the_kv_state_in_place(tiny_exports, mode):
    """The prefill (extend) graph takes the state: each K/V output is one TensorScatter (linear, axis
    -2) of its own state input at start_pos, the form TensorRT imports as KVCacheUpdate; the rings
    and carry are new tensors (rewritten whole)."""
    m = read_manifest(tiny_exports[mode][1])
    model = onnx.load(str(m.graph_path("prefill")), load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}
    spec = m.graphs["prefill"]
    own = {held: name for name, held in io_spec.state_inputs(spec, m.graphs["decode"]).items()}
    start = spec.one("start").name
    kv = [o for o in spec.state_outputs() if o.role in ("key", "value")]
    assert kv and all(o.in_place for o in kv)
    for o in kv:
        node = producer[o.name]
        assert (node.op_type, node.domain) == ("TensorScatter", ""), o.name
        assert node.input[0] == own[o.alias_of] and node.input[2] == start, (o.name, list(node.input))
        assert _attr(node, "axis", -2) in (-2, 2) and _attr(node, "mode", b"linear") in (b"linear", "linear")
    assert not [o.name for o in spec.state_outputs() if o.role not in ("key", "value") and o.in_place]


def _write_warnings(capfd, run) -> str:
    capfd.readouterr()
    run()
    return capfd.readouterr().err


def test_onnxruntime_writes_in_place_without_copy(tiny_exports, capfd):
    """ORT's TensorScatter logs "in-place optimization not activated" when present is not past's
    buffer; the backend's bound decode step never does, a plain run of the same graph does."""
    import onnxruntime as ort

    _, ex = tiny_exports["plt"]
    be = OrtBackend(ex)
    opts = ort.SessionOptions()
    opts.log_severity_level = 1  # warnings
    be.sessions["decode"] = ort.InferenceSession(str(be.manifest.graph_path("decode")), opts,
                                                 providers=["CPUExecutionProvider"])
    s = be.start(2, 40)
    s.prefill(torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]]), torch.tensor([4, 3]))
    bound = _write_warnings(capfd, lambda: s.decode(torch.tensor([3, 4])))
    assert "in-place optimization not activated" not in bound
    spec = be.manifest.graphs["decode"]
    feeds = {t.name: s.cache_arrays()[t.name] for t in spec.inputs if t.name in s.cache_arrays()}
    feeds[spec.one("tokens").name] = np.array([3, 4], dtype=np.int64)
    feeds[spec.one("position").name] = np.array([5, 4], dtype=np.int64)
    plain = _write_warnings(capfd, lambda: be.sessions["decode"].run(None, feeds))
    assert "in-place optimization not activated" in plain  # the control: the log line is real


@pytest.mark.parametrize("S", [1, 3])
def test_cache_op_in_place_equals_reference_and_export_form(S):
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(3, 4, 10, 8, generator=g)
    update = torch.randn(3, 4, S, 8, generator=g)
    pos = torch.tensor([0, 5, 10 - S])
    ref = kv_update.kv_cache_update_reference(cache, update, pos)
    for b in range(3):  # the definition, slot by slot
        torch.testing.assert_close(ref[b, :, pos[b]:pos[b] + S], update[b], rtol=0, atol=0)
        keep = [j for j in range(10) if not pos[b] <= j < pos[b] + S]
        torch.testing.assert_close(ref[b, :, keep], cache[b, :, keep], rtol=0, atol=0)
    torch.testing.assert_close(torch.ops.plt.kv_cache_update(cache, update, pos), ref, rtol=0, atol=0)
    inplace = cache.clone()
    assert kv_update.write_in_place(inplace, update, pos).data_ptr() == inplace.data_ptr()
    torch.testing.assert_close(inplace, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\[B, H, T, D\]"):
        torch.ops.plt.kv_cache_update(cache[0], update[0], pos)


def test_rings_are_4d_and_kv_bytes_still_the_formula(tiny_exports):
    """The rings moved to [B, (L-1)*Hkv, W, D] (KVCacheUpdate takes 4-D caches): same bytes."""
    from plt_deploy.config import PLTConfig

    cfg = PLTConfig.from_name("tiny", mode="plt", loops=3)
    c = PLTCache.allocate(cfg, 2, 64, torch.float32)
    assert all(t.dim() == 4 and t.shape[1] == 2 * cfg.n_kv_heads for t in (*c.local_k, *c.local_v))
    assert c.kv_bytes() == kv_bytes_formula(cfg, 2, 64, 4)
    _, ex = tiny_exports["plt"]
    s = OrtBackend(ex).start(2, 48)
    assert s.kv_bytes() == kv_bytes_formula(read_manifest(ex).config, 2, 48, 4)


def test_prefill_slots_writes_only_the_joining_rows(tiny_exports):
    """A join rewrites its own rows of every buffer and leaves the running rows bitwise untouched."""
    _, ex = tiny_exports["plt"]
    s = OrtBackend(ex).start(3, 40)
    s.prefill(torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0], [1, 2, 3, 4]]), torch.tensor([4, 3, 4]))
    for _ in range(2):
        s.decode(torch.tensor([3, 4, 5]))
    before = {k: v.copy() for k, v in s.cache_arrays().items()}
    s.prefill_slots([1], torch.tensor([[1, 9, 9, 9, 9]]), torch.tensor([5]))
    after = s.cache_arrays()
    for name in before:
        np.testing.assert_array_equal(after[name][[0, 2]], before[name][[0, 2]], err_msg=name)
        assert not np.array_equal(after[name][1], before[name][1]), name
    assert s.lengths.tolist() == [6, 5, 6]


def test_decode_logits_are_the_callers_own(tiny_exports):
    """The logits buffer is bound once and rewritten every step: a step's returned logits must not
    change when the next step runs (regression: a stream of steps stacked to the last one's)."""
    _, ex = tiny_exports["plt"]
    s = OrtBackend(ex).start(2, 40)
    s.prefill(torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]]), torch.tensor([4, 3]))
    first = s.decode(torch.tensor([3, 4]))
    kept = first.clone()
    second = s.decode(torch.tensor([9, 10]))
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    assert not torch.equal(first, second)
