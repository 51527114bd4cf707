"""Memory bandwidth of this machine and the decode floor it implies.

A decode step of a memory-bound model must read every weight once, so weight_bytes / bandwidth is
a lower bound on its time. Bandwidth is measured with a large array copy (torch, all its threads)
and counted STREAM-style: bytes read + bytes written per second.
"""

from __future__ import annotations

import time

import numpy as np
import torch


def copy_bandwidth(nbytes: int = 512 << 20, repeats: int = 7) -> dict:
    """Best and median GB/s (1e9 bytes/s, read + write) of copying an nbytes fp32 array."""
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    traffic = 2 * n * 4
    t = np.asarray(times)
    return {"array_bytes": n * 4, "repeats": repeats, "threads": torch.get_num_threads(),
            "best_gbps": traffic / t.min() / 1e9, "median_gbps": traffic / float(np.median(t)) / 1e9}


def floor_ms(weight_bytes: int, gbps: float) -> float:
    """Milliseconds to stream weight_bytes once at gbps."""
    return 1e3 * weight_bytes / (gbps * 1e9)
