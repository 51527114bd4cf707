"""TensorRT engine building: availability checks, plugin loading, ONNX -> engine, plan checks.

Nothing here imports TensorRT at module import time: `availability.require_tensorrt()` does, so
`plt-deploy --help`, the CPU paths and the CPU tests work on machines without it.

    availability.py  TensorRT + CUDA device present? (one-line BackendUnavailable otherwise)
    plugin.py        find, hash and load libplt_trt_plugins.so; verify the G-SWA creator
    engine.py        ONNX -> plan through Polygraphy's loaders; one G-SWA plugin layer per node, profiles
    availability.py also checks the CUDA toolkit's major version against TensorRT's (gpu-check.sh)
    plan_check.py    refuse plans built for another TensorRT version, GPU or plugin library
"""
