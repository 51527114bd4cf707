"""One TensorRT plugin loading path per run, in a fresh process (registration is per process); used by
scripts/gpu-check.sh's plugin-load:* stages. Prints one line, exits 0 (works) or 1 (why not).

    python scripts/plugin-paths.py ctypes          STATIC_LIB
    python scripts/plugin-paths.py load_library    DYNAMIC_LIB
    python scripts/plugin-paths.py both-libraries  STATIC_LIB DYNAMIC_LIB
    python scripts/plugin-paths.py logger          STATIC_LIB
    python scripts/plugin-paths.py trtexec-shapes  EXPORT_DIR     (prints trtexec's --shapes for decode.onnx)

plugins/README.md lists the paths with their commands.
"""

from __future__ import annotations

import ctypes
import os
import sys


def _lookup(trt):
    from plt_deploy.ops import contract

    return trt.get_plugin_registry().get_creator(contract.OP_NAME, str(contract.OP_VERSION), contract.PLUGIN_NAMESPACE)


def _count(trt) -> int:
    from plt_deploy.ops import contract

    return sum(1 for c in trt.get_plugin_registry().all_creators
               if c.name == contract.OP_NAME and c.plugin_namespace == contract.PLUGIN_NAMESPACE)


def ctypes_path(lib: str) -> str:
    import tensorrt as trt

    ctypes.CDLL(lib, mode=os.RTLD_LOCAL)  # what plt-deploy and Triton's Python model do
    assert _lookup(trt) is not None, "dlopen registered no creator"
    assert _count(trt) == 1, f"{_count(trt)} creators registered"
    return "ctypes.CDLL (RTLD_LOCAL) registered the creator once"


def load_library_path(lib: str) -> str:
    import tensorrt as trt

    handle = trt.get_plugin_registry().load_library(lib)
    assert handle is not None, "IPluginRegistry.load_library returned None"
    assert _lookup(trt) is not None and _count(trt) == 1, f"{_count(trt)} creators registered"
    return "IPluginRegistry.load_library registered the creator once"


def both_libraries(static_lib: str, dynamic_lib: str) -> str:
    import tensorrt as trt

    ctypes.CDLL(static_lib, mode=os.RTLD_LOCAL)
    second = trt.get_plugin_registry().load_library(dynamic_lib)  # documented: fails, already registered
    assert second is None, "load_library registered a second copy"
    assert _count(trt) == 1, f"{_count(trt)} creators registered"
    return "second library refused, one creator registered"


def logger_path(static_lib: str) -> str:
    """A plugin error reaches the application's TensorRT logger on the dlopen path."""
    import tensorrt as trt

    class Collect(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages = []

        def log(self, severity, msg):
            self.messages.append(msg)

    logger = Collect()
    runtime = trt.Runtime(logger)  # noqa: F841  (the application's logger)
    ctypes.CDLL(static_lib, mode=os.RTLD_LOCAL)
    creator = _lookup(trt)
    plugin = creator.create_plugin("gswa", trt.PluginFieldCollection([]), trt.TensorRTPhase.BUILD)
    assert plugin is None, "createPlugin without attributes must fail"
    hits = [m for m in logger.messages if "[plt_trt_plugins] createPlugin" in m]
    assert hits, f"the plugin's error did not reach the TensorRT logger ({len(logger.messages)} other messages)"
    return f"plugin error logged through TensorRT's logger: {hits[0][:80]}"


def trtexec_shapes(export_dir: str) -> str:
    from plt_deploy.export.manifest import read_manifest

    m = read_manifest(export_dir)
    sizes = {"batch": 1, "max_seq": int(m.data["tensorrt"]["decode_cache_len"]) if "tensorrt" in m.data else m.max_seq}
    return ",".join(f"{t.name}:{'x'.join(map(str, t.concrete(sizes)))}" for t in m.graphs["decode"].inputs)


def main(argv: list[str]) -> int:
    paths = {"ctypes": ctypes_path, "load_library": load_library_path, "both-libraries": both_libraries,
             "logger": logger_path, "trtexec-shapes": trtexec_shapes}
    if not argv or argv[0] not in paths:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(paths[argv[0]](*argv[1:]))
    except AssertionError as exc:
        print(f"{argv[0]}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
