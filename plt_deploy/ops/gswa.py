"""Plain PyTorch reference of G-SWA and of causal attention over a cache.

`gswa_reference` is the oracle: every other implementation (the ONNX function body, the CUDA
kernels' host-side math, the TensorRT plugin) is tested against it. It is written for clarity,
not speed: full score matrices, explicit masks, fp32 throughout. The contract is in contract.py.
"""

from __future__ import annotations

import torch

from . import contract


def masked_softmax_attention(scores: torch.Tensor, valid: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """softmax over the valid keys only, times values; rows with no valid key give 0.

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
    q = query.float().reshape(B, Hkv, n_rep, S, D)  # head kvh*n_rep + r
    scores = scale * (q @ key.float().transpose(-1, -2)[:, :, None])  # [B, Hkv, n_rep, S, T]
    scores = scores.masked_fill(~mask[:, :, None], float("-inf"))  # mask [B, 1, 1, S, T]
    out = scores.softmax(dim=-1) @ value.float()[:, :, None]  # [B, Hkv, n_rep, S, D]
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

    No K/V is repeated for grouped-query heads: the R rows and n_rep heads of a KV group are folded
    into one query axis, so each shared K/V slot is read once per step for all of them (the v2
    promise). Checked against gswa_reference on the shared vectors and random shapes.
    """
    B, R, Hq, S, D = query.shape
    Hkv, T = key_global.shape[1], key_global.shape[2]
    G, RL, W = global_rows, R - global_rows, key_local.shape[3]
    if key_local.shape[1] != RL or value_local.shape[1] != RL:
        raise ValueError(f"key_local/value_local must have R - G = {RL} rows, got {key_local.shape[1]}")
    n_rep = Hq // Hkv
    q = query.float().view(B, R, Hkv, n_rep, S, D)

    # Global: [B, Hkv, R*n_rep*S, D] queries against each KV head's T keys, read once.
    qg = q.permute(0, 2, 1, 3, 4, 5).reshape(B, Hkv, R * n_rep, S, D)
    scores = scale * (qg @ key_global.float().transpose(-1, -2)[:, :, None])  # [B, Hkv, R*n_rep, S, T]
    slots = torch.arange(T, device=query.device)
    valid_g = (slots[None, None, :] <= query_pos[:, :, None])[:, None, None]  # [B, 1, 1, S, T]
    y_global = masked_softmax_attention(scores, valid_g, value_global.float()[:, :, None])  # [B, Hkv, R*n_rep, S, D]
    y_global = y_global.view(B, Hkv, R, n_rep, S, D).permute(0, 2, 1, 3, 4, 5)  # [B, R, Hkv, n_rep, S, D]
    if RL == 0:
        return y_global.reshape(B, R, Hq, S, D).to(query.dtype)

    # Local: rows G..R-1, each against its own W ring slots.
    ql = q[:, G:]  # [B, RL, Hkv, n_rep, S, D]
    scores_l = scale * (ql.reshape(B, RL, Hkv, n_rep * S, D) @ key_local.float().transpose(-1, -2))
    t = query_pos[:, :, None]  # [B, S, 1]
    p = local_pos[:, None, :]  # [B, 1, W]
    valid_l = ((p >= 0) & (p <= t) & (p > t - window))[:, None, None, None]  # [B, 1, 1, 1, S, W]
    y_local = masked_softmax_attention(scores_l.view(B, RL, Hkv, n_rep, S, W), valid_l,
                                       value_local.float()[:, :, :, None])  # [B, RL, Hkv, n_rep, S, D]
    gate = (ql * gate_weight.float().view(Hkv, n_rep, 1, D)).sum(-1, keepdim=True)  # [B, RL, Hkv, n_rep, S, 1]
    g = torch.sigmoid(gate + gate_bias.float().view(Hkv, n_rep, 1, 1))
    mixed = y_global[:, G:] + g * (y_local - y_global[:, G:])  # [B, RL, Hkv, n_rep, S, D]
    return torch.cat([y_global[:, :G], mixed], dim=1).reshape(B, R, Hq, S, D).to(query.dtype)


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
    """causal_cache_attention as one op, so export emits one standard ONNX Attention node."""
    return causal_cache_attention(query, key, value, mask, scale)


@causal_attention.register_fake
def _(query, key, value, mask, scale):
    return torch.empty_like(query)
