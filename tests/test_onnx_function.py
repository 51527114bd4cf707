"""The G-SWA FunctionProto on its own: a one-node model through onnx.reference and ONNX Runtime."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from plt_deploy.export import onnx_op
from plt_deploy.ops import contract
from plt_deploy.ops.vectors import load_vectors

CASES = load_vectors()
IDS = [attrs["name"] for attrs, _ in CASES]


def one_node_model(attrs: dict, elem: int, opset: int = 23, static: dict | None = None) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(s.name, TensorProto.INT64 if s.dtype == "int64" else elem, list(s.shape))
           for s in contract.INPUTS]
    outs = [helper.make_tensor_value_info(s.name, elem, list(s.shape)) for s in contract.OUTPUTS]
    node = helper.make_node(contract.OP_NAME, [s.name for s in contract.INPUTS], [s.name for s in contract.OUTPUTS],
                            domain=contract.OP_DOMAIN, **{a.name: attrs[a.name] for a in contract.ATTRIBUTES})
    model = helper.make_model(helper.make_graph([node], "gswa", ins, outs),
                              opset_imports=[helper.make_opsetid("", opset)], ir_version={23: 11, 24: 12}[opset])
    onnx_op.attach_function(model, static)
    onnx_op.add_plugin_attributes(model)
    return model


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_function_matches_torch_op(case):
    attrs, t = CASES[case]
    if t["query"].dtype == torch.bfloat16:
        pytest.skip("numpy has no bfloat16: neither onnx.reference nor ORT's numpy API can feed it")
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    elem = helper.np_dtype_to_tensor_dtype(t["query"].numpy().dtype)
    model = one_node_model(attrs, elem)
    onnx.checker.check_model(model, full_check=True)
    feeds = {s.name: t[s.name].numpy() for s in contract.INPUTS}
    torch_out = torch.ops.plt.gated_sliding_window_attention(
        *[t[s.name] for s in contract.INPUTS], attrs["window"], attrs["scale"], attrs["global_rows"]).float().numpy()
    fp32 = t["query"].dtype == torch.float32
    np.testing.assert_allclose(torch_out, t["expected"].float().numpy(), atol=1e-6 if fp32 else 1e-3)
    tol = 1e-5 if fp32 else 2e-3
    ref = ReferenceEvaluator(model).run(None, feeds)[0]
    assert ref.dtype == t["query"].numpy().dtype
    np.testing.assert_allclose(ref.astype(np.float32), torch_out, atol=tol, rtol=0)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, feeds)[0]
    np.testing.assert_allclose(out.astype(np.float32), torch_out, atol=tol, rtol=0)


DECODE = [i for i, (a, t) in enumerate(CASES) if t["query"].shape[3] == 1 and t["query"].dtype != torch.bfloat16]


@pytest.mark.parametrize("case", DECODE, ids=[IDS[i] for i in DECODE])
def test_function_specialised_to_static_dims_matches(case):
    """The body the exporter attaches to a decode graph (static R, G, S = 1, D, W, Hkv; opset 24: no
    global mask, Attention's nonpad_kv_seqlen, query heads of a KV head and rows in one query axis)
    computes the same as the generic one."""
    import onnxruntime as ort

    attrs, t = CASES[case]
    _, R, _, S, D = t["query"].shape
    static = {"R": R, "G": attrs["global_rows"], "S": S, "D": D, "W": t["key_local"].shape[3],
              "Hkv": t["key_global"].shape[1]}
    elem = helper.np_dtype_to_tensor_dtype(t["query"].numpy().dtype)
    model = one_node_model(attrs, elem, opset=24, static=static)
    onnx.checker.check_model(model, full_check=True)
    fn_ops = {n.op_type for n in model.functions[0].node}
    assert "Shape" not in fn_ops and "Tile" not in fn_ops  # every dim a constant, no global mask
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {s.name: t[s.name].numpy() for s in contract.INPUTS})[0]
    tol = 1e-5 if t["query"].dtype == torch.float32 else 2e-3
    np.testing.assert_allclose(out.astype(np.float32), t["expected"].float().numpy(), atol=tol, rtol=0)


def test_function_uses_only_standard_ops_of_the_model_opset():
    for opset in (23, 24):
        fn = onnx_op.build_function(opset)
        assert [o.domain for o in fn.opset_import] == [""] and fn.opset_import[0].version == opset
        for node in fn.node:
            assert node.domain == ""
            onnx.defs.get_schema(node.op_type, opset, "")  # raises if not a standard op at this opset
        assert set(fn.attribute) == {a.name for a in contract.ATTRIBUTES if a.default is None}
    with pytest.raises(ValueError, match="opset >= 23"):
        onnx_op.build_function(22)


def test_node_attributes_follow_the_contract():
    attrs, _ = CASES[0]
    model = one_node_model(attrs, TensorProto.FLOAT)
    node = model.graph.node[0]
    got = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert got["plugin_namespace"] == b"plt" and got["plugin_version"] == b"2"
    assert {a.name for a in contract.ATTRIBUTES} <= set(got)
    assert any(o.domain == contract.OP_DOMAIN and o.version == contract.OP_VERSION for o in model.opset_import)


def test_function_gives_zero_for_rows_without_valid_keys():
    """Empty local slots (-1) and a negative query position: the contract's 0, never NaN."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    from plt_deploy.ops.gswa import gswa_reference

    g = torch.Generator().manual_seed(0)
    B, R, G, Hq, Hkv, S, T, W, D = 2, 2, 1, 2, 1, 2, 5, 3, 4
    x = {"query": torch.randn(B, R, Hq, S, D, generator=g), "key_global": torch.randn(B, Hkv, T, D, generator=g),
         "value_global": torch.randn(B, Hkv, T, D, generator=g),
         "key_local": torch.randn(B, R - G, Hkv, W, D, generator=g),
         "value_local": torch.randn(B, R - G, Hkv, W, D, generator=g),
         "query_pos": torch.tensor([[-1, 2], [3, 4]]), "local_pos": torch.tensor([[-1, -1, -1], [-1, 4, 0]]),
         "gate_weight": torch.randn(Hq, D, generator=g), "gate_bias": torch.randn(Hq, generator=g)}
    attrs = {"window": 2, "scale": 0.5, "num_heads": Hq, "num_kv_heads": Hkv, "global_rows": G}
    expected = gswa_reference(**x, window=2, scale=0.5, global_rows=G).numpy()
    assert (expected[0, :, :, 0] == 0).all()  # position -1: no global, no local key
    model = one_node_model(attrs, TensorProto.FLOAT)
    feeds = {k: v.numpy() for k, v in x.items()}
    for out in (ReferenceEvaluator(model).run(None, feeds)[0],
                ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]):
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)
