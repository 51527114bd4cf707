"""The KV-cache write as one op: ONNX TensorScatter (opset 24), TensorRT's IKVCacheUpdateLayer.

`kv_cache_update(cache, update, write_indices)` is ONNX's `TensorScatter(past_cache, update,
write_indices, axis=-2, mode="linear")`: cache [B, H, T, D], update [B, H, S, D], write_indices
[B] int64; the result is the cache with `update[b, :, s]` written at slot `write_indices[b] + s`
(s < S). It is functional (a new tensor) so that export traces it; the exporter maps it to one
TensorScatter node (export/onnx_op.translation_table), whose output a runtime binds to the
memory of its input (ONNX Runtime: IOBinding; TensorRT: the engine's aliased input), so the
write is in place and costs S slots, not the cache.

The form is the one TensorRT's ONNX parser turns into IKVCacheUpdateLayer (onnx-tensorrt
onnxOpImporters.cpp, TensorRT >= 10.15; docs/tensorrt.md): 4-D cache and update, axis -2,
linear mode, the cache a network input. Ring buffers are written the same way: one position at
slot pos % W is a linear write of S = 1.
"""

from __future__ import annotations

import torch

TORCH_OP = "plt::kv_cache_update"
ONNX_OP, ONNX_OPSET = "TensorScatter", 24  # ONNX's standard op (default domain) and the opset it appeared in
AXIS, MODE = -2, "linear"  # the only axis and mode TensorRT's importer accepts


def _index(update: torch.Tensor, write_indices: torch.Tensor) -> torch.Tensor:
    """Scatter index [B, H, S, D]: slot write_indices[b] + s for update[b, :, s]."""
    S = update.shape[-2]
    slots = write_indices.to(torch.int64)[:, None] + torch.arange(S, device=update.device)  # [B, S]
    return slots[:, None, :, None].expand(update.shape)


def kv_cache_update_reference(cache: torch.Tensor, update: torch.Tensor, write_indices: torch.Tensor) -> torch.Tensor:
    """The plain definition: a copy of cache [B, H, T, D] with update [B, H, S, D] at slots
    write_indices[b] .. write_indices[b] + S - 1 (all in range: T >= write_indices[b] + S)."""
    return cache.scatter(-2, _index(update, write_indices), update)


def write_in_place(cache: torch.Tensor, update: torch.Tensor, write_indices: torch.Tensor) -> torch.Tensor:
    """The same write into `cache` itself (runtimes): the fast path beside the op."""
    return cache.scatter_(-2, _index(update, write_indices), update)


@torch.library.custom_op(TORCH_OP, mutates_args=())
def kv_cache_update(cache: torch.Tensor, update: torch.Tensor, write_indices: torch.Tensor) -> torch.Tensor:
    if cache.dim() != 4 or update.dim() != 4 or update.shape[:2] != cache.shape[:2] or update.shape[3] != cache.shape[3]:
        raise ValueError(f"kv_cache_update needs cache [B, H, T, D] and update [B, H, S, D], got "
                         f"{tuple(cache.shape)} and {tuple(update.shape)}")
    return kv_cache_update_reference(cache, update, write_indices)


@kv_cache_update.register_fake
def _(cache, update, write_indices):
    return torch.empty_like(cache)
