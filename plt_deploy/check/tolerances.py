"""(atol, rtol) on logits, per backend under test and dtype: the one table export and check read.

ONNX Runtime fp32 runs the same math as torch on the same CPU: 1e-5. TensorRT picks its own
kernels and summation orders: fp32 within 1e-4, fp16 within 1e-2 relative.
"""

TOLERANCES = {
    "onnxruntime": {"float32": (1e-5, 1e-4), "float16": (2e-2, 2e-2), "bfloat16": (1e-1, 1e-1)},
    "tensorrt": {"float32": (1e-4, 1e-4), "float16": (1e-2, 1e-2), "bfloat16": (1e-1, 1e-1)},
}


def tolerance(backend: str, dtype: str) -> tuple[float, float]:
    """(atol, rtol) for `backend` compared with a reference; unknown backends get ONNX Runtime's."""
    return TOLERANCES.get(backend, TOLERANCES["onnxruntime"])[dtype]
