"""TensorRT engine building: availability checks, plugin loading, ONNX -> engine, plan checks.

Nothing here imports TensorRT at module import time: `availability.require_tensorrt()` does, so
`plt-deploy --help`, the CPU paths and the CPU tests work on machines without it.

    availability.py  TensorRT + CUDA device present? (one-line BackendUnavailable otherwise)
    plugin.py        find, hash and load libplt_trt_plugins.so; verify the G-SWA creator
    engine.py        parse the export's ONNX with the plugin preferred, profiles, timing cache, plans
    plan_check.py    refuse plans built for another TensorRT version, GPU or plugin library
"""
