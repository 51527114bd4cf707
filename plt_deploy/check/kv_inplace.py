"""GPU checks that TensorRT keeps each KV cache in ONE buffer written in place (scripts/gpu-check.sh).

* `kv_bytes_on_device(export)`: a TensorRT session's cache buffers total `cache.kv_bytes_formula`
  at the engine's cache length (no second copy per cache), and every in_place output is bound to
  its input's address.
* `cache_write_ms(export)`: per decode step, the time of the layers TensorRT made of the decode
  graph's TensorScatter nodes (IKVCacheUpdateLayer), from TensorRT's per-layer profiler, and the
  whole step. `flat_in_cache_length(a, b)` compares two builds of one export with different
  cache lengths (`plt-deploy build --max-seq`): in place, the writes cost one slot, so their time
  must not grow with the cache length (a copy-then-scatter would grow with it).

    python -m plt_deploy.check.kv_inplace bytes EXPORT
    python -m plt_deploy.check.kv_inplace flat EXPORT_SHORT EXPORT_LONG
Each prints one line and exits 1 when the check fails.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

from ..errors import ArtifactError

FLAT_RATIO = 1.5  # long/short cache-write time allowed; a full-cache copy at 16x the length would be ~16x


def kv_bytes_on_device(export_dir: str | Path, batch: int = 2) -> dict:
    from ..backends.trt_backend import TrtBackend
    from ..cache import kv_bytes_formula
    from ..backends.base import DTYPE_BYTES

    with TrtBackend(export_dir) as be:
        s = be.start(batch, be.limits.max_seq)
        got = s.kv_bytes()
        want = kv_bytes_formula(be.config, batch, be.cache_len, DTYPE_BYTES[be.manifest.dtype])
        addr = s.buffer_addresses()
        shared = {o.name: addr[o.name] == addr[o.alias_of]
                  for o in be.manifest.graphs["decode"].state_outputs() if o.in_place}
        s.close()
    ok = got == want and all(shared.values())
    return {"passed": ok, "allocated": got, "formula": want, "cache_len": be.cache_len,
            "not_shared": [k for k, v in shared.items() if not v]}


def _write_layer_names(export_dir: Path) -> set[str]:
    import onnx

    from ..export.manifest import read_manifest

    m = read_manifest(export_dir)
    model = onnx.load(str(m.graph_path("decode")), load_external_data=False)
    return {n.name for n in model.graph.node if n.op_type == "TensorScatter" and n.name}


def cache_write_ms(export_dir: str | Path, batch: int = 1, steps: int = 24) -> dict:
    """Median per-step ms of the cache-write layers and of the whole profiled step."""
    import tensorrt as trt

    from ..backends.trt_backend import TrtBackend

    names = _write_layer_names(Path(export_dir))
    if not names:
        raise ArtifactError(f"{export_dir}: the decode graph has no named TensorScatter node")

    class Profiler(trt.IProfiler):
        def __init__(self):
            super().__init__()
            self.steps: list[list[tuple[str, float]]] = []

        def report_layer_time(self, layer_name, ms):
            self.steps[-1].append((layer_name, ms))

    prof = Profiler()
    with TrtBackend(export_dir, cuda_graph=False) as be:
        s = be.start(batch, be.limits.max_seq)
        s._ctx.profiler = prof
        tok = torch.ones(batch, dtype=torch.int64)
        prof.steps.append([])
        s.prefill(torch.ones(batch, 8, dtype=torch.int64), torch.full((batch,), 8))
        for _ in range(steps):
            prof.steps.append([])
            tok = s.decode(tok).argmax(-1)
        s.close()
    runs = [r for r in prof.steps[3:] if r]  # the first steps warm up
    if not runs:
        raise ArtifactError("TensorRT's profiler reported no layer times")
    write = [sum(ms for name, ms in r if any(n in name for n in names)) for r in runs]
    if not any(write):
        raise ArtifactError(f"no profiled layer is named after a TensorScatter node ({sorted(names)[:2]}...)")
    return {"write_ms": statistics.median(write), "step_ms": statistics.median(sum(ms for _, ms in r) for r in runs),
            "cache_len": be.cache_len}


def flat_in_cache_length(short: str | Path, long: str | Path) -> dict:
    a, b = cache_write_ms(short), cache_write_ms(long)
    ratio = b["write_ms"] / a["write_ms"]
    return {"passed": ratio <= FLAT_RATIO, "ratio": ratio, "short": a, "long": b}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bytes"] and len(argv) == 2:
        r = kv_bytes_on_device(argv[1])
        print(f"KV bytes on device {r['allocated']} {'==' if r['allocated'] == r['formula'] else '!='} formula "
              f"{r['formula']} (cache length {r['cache_len']}); outputs not sharing their input: {r['not_shared']}")
    elif argv[:1] == ["flat"] and len(argv) == 3:
        r = flat_in_cache_length(argv[1], argv[2])
        print(f"cache writes {r['short']['write_ms']:.4f} ms/step at T={r['short']['cache_len']}, "
              f"{r['long']['write_ms']:.4f} at T={r['long']['cache_len']} (x{r['ratio']:.2f}, allowed {FLAT_RATIO}); "
              f"whole step {r['short']['step_ms']:.3f} -> {r['long']['step_ms']:.3f} ms")
    else:
        print("usage: python -m plt_deploy.check.kv_inplace bytes EXPORT | flat EXPORT_SHORT EXPORT_LONG")
        return 2
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
