"""Plain PyTorch reference of G-SWA and of causal attention over a cache.

`gswa_reference` is the oracle: every other implementation (the ONNX function body, the CUDA
kernels' host-side math, the TensorRT plugin, and `gswa_fast`, which the torch op runs) is tested
against it. It is written for clarity, not speed: full score matrices, explicit masks, fp32
throughout. `causal_cache_attention` is the same kind of reference for causal attention over a
cache (the `plt::causal_attention` op runs torch's fused SDPA beside it). The contract (v2) is in
contract.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import contract


def masked_softmax_attention(scores: torch.Tensor, valid: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """softmax over the valid keys only, times values; rows with no valid key give 0 (the oracle's form).

    scores [..., S, K] fp32, valid [..., S, K] bool (broadcastable), values [..., K, D] fp32.
    """
    scores = scores.masked_fill(~valid, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)  # [..., S, 1]
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(scores - row_max).masked_fill(~valid, 0.0)  # [..., S, K]
    denom = p.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return (p @ values) / denom  # [..., S, D]


def repeat_kv(x: torch.Tensor, n_rep: int, dim: int) -> torch.Tensor:
    """Grouped-query heads: repeat each KV head n_rep times along `dim`."""
    return x if n_rep == 1 else torch.repeat_interleave(x, n_rep, dim=dim)


def causal_mask(query_pos: torch.Tensor, n_slots: int) -> torch.Tensor:
    """Which cache slots each query sees: slot j = position j, visible iff j <= t.

    query_pos [B, S] int64 -> [B, 1, S, n_slots] bool. Depends on the step only: the model
    computes it once per step (or per prefill) and every layer reuses it.
    """
    slots = torch.arange(n_slots, device=query_pos.device)
    return (slots[None, None, :] <= query_pos[:, :, None])[:, None]  # [B, 1, S, T]


def causal_cache_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of queries over a cache: loop 1 of PLT's prefill, vanilla and looped.

    query [B, Hq, S, D], key/value [B, Hkv, T, D] (slot j = position j), mask [B, 1, S, T] bool
    from `causal_mask` (every query must see at least one slot). Returns [B, Hq, S, D] in the
    query's dtype, computed in fp32. Grouped-query heads are handled by folding the n_rep query
    heads of a KV head into the query axis, so the cache is read once and never repeated (query
    head h uses KV head h // n_rep, as repeat_kv). Exported as ONE standard ONNX `Attention` node.
    """
    B, Hq, S, D = query.shape
    Hkv, T = key.shape[1], key.shape[2]
    n_rep = Hq // Hkv
    q = query.float().reshape(B, Hkv, n_rep * S, D)  # row r*S + s = head kvh*n_rep + r, query s
    scores = scale * (q @ key.float().transpose(-1, -2))  # [B, Hkv, n_rep*S, T]: K read once, never expanded
    scores = scores.view(B, Hkv, n_rep, S, T).masked_fill(~mask[:, :, None], float("-inf"))  # mask [B, 1, 1, S, T]
    out = scores.softmax(dim=-1).view(B, Hkv, n_rep * S, T) @ value.float()  # [B, Hkv, n_rep*S, D]
    return out.reshape(B, Hq, S, D).to(query.dtype)


def gswa_reference(query: torch.Tensor, key_global: torch.Tensor, value_global: torch.Tensor,
                   key_local: torch.Tensor, value_local: torch.Tensor, query_pos: torch.Tensor,
                   local_pos: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor,
                   window: int, scale: float, global_rows: int) -> torch.Tensor:
    """Gated sliding-window attention over a shared cache, contract v2 (see contract.py).

    query [B, R, Hq, S, D]; key_global/value_global [B, Hkv, T, D];
    key_local/value_local [B, R-G, Hkv, W, D]; query_pos [B, S]; local_pos [B, W];
    gate_weight [Hq, D]; gate_bias [Hq]; G = global_rows. Returns [B, R, Hq, S, D] in the
    query's dtype: rows < G are y_global, rows >= G mix in their own local keys.
    """
    B, R, Hq, S, D = query.shape
    Hkv = key_global.shape[1]
    G = global_rows
    contract.check_attributes(window, scale, Hq, Hkv, G, R)
    if key_local.shape[1] != R - G or value_local.shape[1] != R - G:
        raise ValueError(f"key_local/value_local must have R - G = {R - G} rows, got {key_local.shape[1]}")
    n_rep = Hq // Hkv
    q = query.float()

    # Global part: every row attends to the shared cache, causally.
    kg = repeat_kv(key_global.float(), n_rep, 1)[:, None]  # [B, 1, Hq, T, D]
    vg = repeat_kv(value_global.float(), n_rep, 1)[:, None]
    slots = torch.arange(key_global.shape[2], device=query.device)
    valid_g = slots[None, None, None, None, :] <= query_pos[:, None, None, :, None]  # [B, 1, 1, S, T]
    y_global = masked_softmax_attention(scale * (q @ kg.transpose(-1, -2)), valid_g, vg)  # [B, R, Hq, S, D]
    if G == R:
        return y_global.to(query.dtype)

    # Local part, rows G..R-1 only: each row attends to its own keys inside the window (t - w, t].
    ql = q[:, G:]  # [B, R-G, Hq, S, D]
    kl = repeat_kv(key_local.float(), n_rep, 2)  # [B, R-G, Hq, W, D]
    vl = repeat_kv(value_local.float(), n_rep, 2)
    t = query_pos[:, None, None, :, None]  # [B, 1, 1, S, 1]
    p = local_pos[:, None, None, None, :]  # [B, 1, 1, 1, W]
    valid_l = (p >= 0) & (p <= t) & (p > t - window)  # [B, 1, 1, S, W]
    y_local = masked_softmax_attention(scale * (ql @ kl.transpose(-1, -2)), valid_l, vl)  # [B, R-G, Hq, S, D]

    # Per-head, per-token sigmoid gate computed from the query.
    gate_logit = torch.einsum("brhsd,hd->brhs", ql, gate_weight.float()) + gate_bias.float()[:, None]
    g = torch.sigmoid(gate_logit)[..., None]  # [B, R-G, Hq, S, 1]
    mixed = g * y_local + (1.0 - g) * y_global[:, G:]  # [B, R-G, Hq, S, D]
    return torch.cat([y_global[:, :G], mixed], dim=1).to(query.dtype)  # [B, R, Hq, S, D]


def gswa_fast(query: torch.Tensor, key_global: torch.Tensor, value_global: torch.Tensor,
              key_local: torch.Tensor, value_local: torch.Tensor, query_pos: torch.Tensor,
              local_pos: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor,
              window: int, scale: float, global_rows: int) -> torch.Tensor:
    """The same function as gswa_reference, shaped for speed (the torch op runs this).

    The same plan as the ONNX function body (export/onnx_op.py): the R rows folded into the query
    axis, q [B, Hq, R*S, D], so ONE fused attention (torch's scaled_dot_product_attention, grouped
    heads) reads every shared K/V slot once for all rows and heads (the v2 promise); ONE more over
    the R-G rings side by side with a block-diagonal mask; the gate closed for rows < G. SDPA gives
    0 for a query whose mask row is all False (checked against the oracle, incl. t < 0 and empty
    rings). Measured per call at decode shapes (R=2, Hq=8, Hkv=4, T=612, 1 thread): 0.37 ms
    against 0.52 ms for the same math in plain matmul/softmax ops and 5.4 ms for the oracle.
    """
    B, R, Hq, S, D = query.shape
    Hkv, T = key_global.shape[1], key_global.shape[2]
    G, RL, W = global_rows, R - global_rows, key_local.shape[3]
    if key_local.shape[1] != RL or value_local.shape[1] != RL:
        raise ValueError(f"key_local/value_local must have R - G = {RL} rows, got {key_local.shape[1]}")
    dev = query.device
    q = query.float().transpose(1, 2).reshape(B, Hq, R * S, D)  # query row r*S + s
    slots = torch.arange(T, device=dev)
    valid_g = slots <= query_pos[:, :, None]  # [B, S, T]
    mask_g = valid_g[:, None, None].expand(B, 1, R, S, T).reshape(B, 1, R * S, T)
    y_g = F.scaled_dot_product_attention(q, key_global.float(), value_global.float(), attn_mask=mask_g,
                                         scale=scale, enable_gqa=True)  # [B, Hq, R*S, D]
    if RL == 0:
        return y_g.view(B, Hq, R, S, D).transpose(1, 2).to(query.dtype)

    t, p = query_pos[:, :, None], local_pos[:, None, :]  # [B, S, 1], [B, 1, W]
    valid_l = (p >= 0) & (p <= t) & (p > t - window)  # [B, S, W]
    block = torch.arange(R, device=dev)[:, None] == torch.arange(RL, device=dev)[None, :] + G  # [R, R-G]
    mask_l = (block[None, :, None, :, None] & valid_l[:, None, :, None, :]).reshape(B, 1, R * S, RL * W)
    kl = key_local.float().transpose(1, 2).reshape(B, Hkv, RL * W, D)  # rings side by side
    vl = value_local.float().transpose(1, 2).reshape(B, Hkv, RL * W, D)
    y_l = F.scaled_dot_product_attention(q, kl, vl, attn_mask=mask_l, scale=scale, enable_gqa=True)
    gate = q @ gate_weight.float()[:, :, None] + gate_bias.float()[:, None, None]  # [B, Hq, R*S, 1]
    local_row = (torch.arange(R * S, device=dev) // S >= G)[:, None]  # [R*S, 1]
    g = torch.sigmoid(gate) * local_row
    y = y_g + g * (y_l - y_g)  # [B, Hq, R*S, D]
    return y.view(B, Hq, R, S, D).transpose(1, 2).to(query.dtype)  # [B, R, Hq, S, D]


# torch.library registration: one op that export maps to one ONNX node ----------------------

@torch.library.custom_op(contract.TORCH_OP, mutates_args=())
def gated_sliding_window_attention(query: torch.Tensor, key_global: torch.Tensor, value_global: torch.Tensor,
                                   key_local: torch.Tensor, value_local: torch.Tensor,
                                   query_pos: torch.Tensor, local_pos: torch.Tensor,
                                   gate_weight: torch.Tensor, gate_bias: torch.Tensor,
                                   window: int, scale: float, global_rows: int) -> torch.Tensor:
    contract.check_attributes(window, scale, query.shape[2], key_global.shape[1], global_rows, query.shape[1])
    return gswa_fast(query, key_global, value_global, key_local, value_local, query_pos, local_pos,
                          gate_weight, gate_bias, window, scale, global_rows)


@gated_sliding_window_attention.register_fake
def _(query, key_global, value_global, key_local, value_local, query_pos, local_pos, gate_weight, gate_bias,
      window, scale, global_rows):
    return torch.empty_like(query)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:9])
    ctx.window, ctx.scale, ctx.global_rows = inputs[9], inputs[10], inputs[11]


def _backward(ctx, grad_output):
    """Gradients by differentiating the reference (training runs on the CPU reference anyway)."""
    saved = ctx.saved_tensors
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_(t.is_floating_point()) for t in saved]
        out = gswa_reference(*inputs, ctx.window, ctx.scale, ctx.global_rows)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_output, allow_unused=True))
    return (*[next(grads) if t.requires_grad else None for t in inputs], None, None, None)


gated_sliding_window_attention.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op(contract.TORCH_ATTENTION_OP, mutates_args=())
def causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """causal_cache_attention as one op, so export emits one standard ONNX Attention node.

    Runs torch's fused scaled_dot_product_attention (grouped heads): at decode shapes (Hq=8,
    Hkv=4, T=612, 1 thread) 0.09 ms against 0.15 ms for causal_cache_attention, the plain
    reference it is tested against.
    """
    out = F.scaled_dot_product_attention(query.float(), key.float(), value.float(), attn_mask=mask, scale=scale,
                                         enable_gqa=True)
    return out.to(query.dtype)


@causal_attention.register_fake
def _(query, key, value, mask, scale):
    return torch.empty_like(query)
