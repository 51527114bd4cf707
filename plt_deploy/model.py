"""The Parallel Loop Transformer (arXiv 2510.24824), plus the vanilla and sequential-looped baselines.

One N-layer block stack `f` applied L times with the same weights.

  plt     full sequence: H1 = f(E) (its K/V are the shared cache); for l >= 2
          B_l = a*E + b*shift_right(H_{l-1}), H_l = f(B_l) with G-SWA in every layer.
          decode: ONE pass with L rows [e_t, a*e_t + b*h_1(t-1), ...]; logits from row L.
  looped  H_l = f(H_{l-1}), every loop with its own causal KV cache; decode = L sequential passes.
  vanilla L = 1.
  loopcoder  IQuest-Coder-V1 Loop (Hugging Face `iquestloopcoder`): H1 = f(E) (the shared cache);
          for l >= 2 H_l = f(H_{l-1}) at the SAME positions (no embedding mix, no shift) with G-SWA
          in every layer (R = 1, G = 0, local keys = loop l's own). decode: L sequential passes of
          one row; loop 1 writes the shared cache, loop l its own ring. Logits from H_L.
          The published gate weights the GLOBAL part; checkpoint.py negates it at load so that it
          is exactly our op's gate on the local part (1 - sigmoid(x) = sigmoid(-x)).

Entry points: `forward` (training / full-sequence logits, the reference), `extend` (continue
any sequences by a chunk of tokens from their cached state: prefill from 0 is the special case)
and `decode_step` over a `PLTCache`; export traces `extend_core` and `decode_core` with a cache
that writes out of place. Quantities that depend only on the step (RoPE rows, the causal mask, the
ring slot and its positions) are computed once per call, never per layer.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import cache as cache_lib
from .cache import PLTCache
from .config import PLTConfig
from .ops import gswa as _gswa  # noqa: F401  (registers torch.ops.plt.gated_sliding_window_attention)
from .ops.gswa import causal_cache_attention, causal_mask, gswa_reference

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x * rsqrt(mean(x^2) + eps) * weight in fp32; F.rms_norm exports as ONE RMSNormalization."""
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class Linear(nn.Linear):
    """nn.Linear (bias-free) whose eager inference on a few rows avoids MKL's small-M GEMM penalty.

    `python -m plt_deploy.bench.micro linear` (1 thread, 40 weights of 1536x512 fp32, out of cache,
    quiet machine): F.linear 8.4 / 11.5 / 13.8 / 15.9 / 22.1 ms for 1 / 2 / 3 / 8 / 16 rows,
    (W @ x.T).T 9.1 / 5.7 / 8.0 / 12.2 / 23.2 ms, per-row mat-vec 8.7 / 13.2 / 16.2 / 28.1 / 45.5 ms
    (under load the 16-row case went the other way, 42.9 vs 34.8). So decode steps (<= SMALL_M
    rows, from 2) use (W @ x.T).T; training, prefill and export keep F.linear (one MatMul in ONNX).
    """

    SMALL_M = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() or torch.is_grad_enabled():  # export/compile first: no shape guard
            return F.linear(x, self.weight)
        rows = x.numel() // x.shape[-1]
        if rows == 1 or rows > self.SMALL_M:  # one row: F.linear's GEMV is as fast
            return F.linear(x, self.weight)
        return (self.weight @ x.reshape(rows, x.shape[-1]).T).T.reshape(*x.shape[:-1], self.out_features)


def _take_rows(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """h [B, S, d], index [B] -> h[b, index[b]] as [B, d]."""
    return torch.gather(h, 1, index[:, None, None].expand(-1, 1, h.shape[-1]))[:, 0]


def ring_refresh_index(start_pos: torch.Tensor, last: torch.Tensor, n_slots: int) -> torch.Tensor:
    """Where each ring slot's new content lies in [ring before the chunk (n_slots), chunk (S)].

    After a chunk starting at start_pos[b] whose last real token is index last[b], ring slot i
    holds the largest position p <= start_pos + last with p % n_slots == i: from the chunk
    (index n_slots + p - start_pos) if p >= start_pos, else unchanged (index i). [B] -> [B, n_slots].
    """
    p = cache_lib.ring_positions(start_pos + last, n_slots)  # [B, n_slots]
    slots = torch.arange(n_slots, device=start_pos.device)[None, :]
    return torch.where(p >= start_pos[:, None], n_slots + p - start_pos[:, None], slots)


def rope_tables(head_dim: int, max_seq: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [max_seq, head_dim/2] in fp32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., D]; cos/sin [..., D/2] broadcastable to x's leading dims (rotate-half convention)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: PLTConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.head_dim
        self.wq = Linear(cfg.d_model, cfg.n_heads * D, bias=False)
        self.wk = Linear(cfg.d_model, cfg.n_kv_heads * D, bias=False)
        self.wv = Linear(cfg.d_model, cfg.n_kv_heads * D, bias=False)
        self.wo = Linear(cfg.n_heads * D, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(D, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(D, cfg.norm_eps) if cfg.qk_norm else None
        if cfg.uses_gswa:  # G-SWA gate: a vector per head over head_dim plus a bias per head
            self.gate_weight = nn.Parameter(torch.zeros(cfg.n_heads, D))
            self.gate_bias = nn.Parameter(torch.zeros(cfg.n_heads))
        self.scale = 1.0 / math.sqrt(D)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: bool = False):
        """x [B, S, d] -> q [B, Hq, S, D], k/v [B, Hkv, S, D] (q, k after norm and RoPE).

        rows=True (PLT decode, the S axis holds the L loop rows of one position): q [B, S, Hq, 1, D],
        k/v [B, S, Hkv, 1, D], the G-SWA op's own layout, reached by a view (no transpose).
        cos/sin come from `PLT.rope_at` for the same layout.
        """
        B, S, _ = x.shape
        D = self.cfg.head_dim
        split = (lambda t: t.view(B, S, -1, 1, D)) if rows else (lambda t: t.view(B, S, -1, D).transpose(1, 2))
        q, k, v = split(self.wq(x)), split(self.wk(x)), split(self.wv(x))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def out(self, y: torch.Tensor) -> torch.Tensor:
        """y [B, Hq, S, D] (or [B, S, Hq, 1, D] in the rows layout) -> [B, S, d]."""
        if y.dim() == 5:
            return self.wo(y.reshape(y.shape[0], y.shape[1], -1))
        B, _, S, _ = y.shape
        return self.wo(y.transpose(1, 2).reshape(B, S, -1))

    def causal(self, q, k, v, mask):
        """Causal attention over a cache (one ONNX `Attention` node on export). q [B, Hq, S, D]."""
        if self.training and torch.is_grad_enabled():  # same function, autograd-native
            return causal_cache_attention(q, k, v, mask, self.scale)
        return torch.ops.plt.causal_attention(q, k, v, mask, self.scale)

    def gswa(self, q, k_global, v_global, k_local, v_local, query_pos, local_pos, global_rows: int):
        """The G-SWA custom op (one ONNX node on export). q [B, R, Hq, S, D] -> same shape."""
        if self.training and torch.is_grad_enabled():  # same function, but autograd-native (no recompute)
            return gswa_reference(q, k_global, v_global, k_local, v_local, query_pos, local_pos,
                                  self.gate_weight.to(q.dtype), self.gate_bias.to(q.dtype), self.cfg.window,
                                  self.scale, global_rows)
        return torch.ops.plt.gated_sliding_window_attention(
            q, k_global, v_global, k_local, v_local, query_pos, local_pos,
            self.gate_weight.to(q.dtype), self.gate_bias.to(q.dtype), self.cfg.window, self.scale, global_rows)


class MLP(nn.Module):
    def __init__(self, cfg: PLTConfig):
        super().__init__()
        self.w1 = Linear(cfg.d_model, cfg.mlp_hidden, bias=False)  # gate
        self.w3 = Linear(cfg.d_model, cfg.mlp_hidden, bias=False)  # up
        self.w2 = Linear(cfg.mlp_hidden, cfg.d_model, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: PLTConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos, sin, attend: Attend, rows: bool = False) -> torch.Tensor:
        """x [B, S, d]; `attend(q, k, v) -> y` decides what the attention sees (layouts: Attention.qkv)."""
        q, k, v = self.attn.qkv(self.attn_norm(x), cos, sin, rows)
        x = x + self.attn.out(attend(q, k, v))
        return x + self.mlp(self.mlp_norm(x))


class PLT(nn.Module):
    def __init__(self, cfg: PLTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def init_weights(self, seed: int = 0) -> "PLT":
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif "gate" in name:
                    p.zero_()
                else:
                    std = 0.02 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 0.02
                    p.copy_(torch.randn(p.shape, generator=g) * std)
        return self

    def rope_at(self, pos: torch.Tensor, rows: bool = False):
        """pos [B, S] int64 -> cos, sin [B, 1, S, D/2] for q/k [B, H, S, D]; rows=True (pos [B, 1],
        one position for all L rows): [B, 1, 1, 1, D/2] for q/k [B, L, H, 1, D]. Once per step."""
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]  # [B, S, D/2]
        if rows:
            return cos[:, :, None, None], sin[:, :, None, None]
        return cos[:, None], sin[:, None]

    def run_block_stack(self, x: torch.Tensor, cos, sin, attend_for_layer: Callable[[int], Attend],
                        rows: bool = False) -> torch.Tensor:
        """One loop: f applied to x [B, S, d] with layer n attending through attend_for_layer(n)."""
        for n, layer in enumerate(self.layers):
            x = layer(x, cos, sin, attend_for_layer(n), rows)
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(h))

    # Full sequence (training, and the reference for cached decoding) ---------------------------
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, S] -> logits [B, S, V] (all positions, no cache)."""
        return self.logits(self.hidden(tokens))

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Full-sequence forward from position 0 without a cache: H [B, S, d] of the last loop.

        The plain form of the equations (module docstring): each loop over the whole sequence, K/V
        of loop 1 kept for the later loops' global attention, loops >= 2 attending to their own keys
        in the window through the G-SWA op. `extend_core` computes the same thing chunk by chunk.
        """
        cfg = self.cfg
        B, S = tokens.shape
        pos = torch.arange(S, device=tokens.device)[None, :].expand(B, S)  # [B, S]
        cos, sin = self.rope_at(pos)  # once per call
        mask = causal_mask(pos, S)  # [B, 1, S, S], once per call
        E = self.embed(tokens)  # [B, S, d]
        ks, vs = [], []

        def causal_keep(n: int) -> Attend:
            def attend(q, k, v):
                ks.append(k)
                vs.append(v)
                return self.layers[n].attn.causal(q, k, v, mask)
            return attend

        if not cfg.uses_gswa:  # vanilla and looped: each loop attends causally to its own keys
            x = E
            for _ in range(cfg.loops):
                x = self.run_block_stack(x, cos, sin, causal_keep)
            return x

        def own_window(n: int) -> Attend:
            def attend(q, k, v):  # loops >= 2: R = 1 row, G = 0, local keys = the sequence's own
                return self.layers[n].attn.gswa(q[:, None], ks[n], vs[n], k[:, None], v[:, None], pos, pos, 0)[:, 0]
            return attend

        H = self.run_block_stack(E, cos, sin, causal_keep)  # loop 1: its K/V are the shared cache
        for _ in range(1, cfg.loops):
            if cfg.mode == "loopcoder":  # loop l reads H_{l-1} at the same position
                x = H
            else:
                shifted = F.pad(H, (0, 0, 1, 0))[:, :S]  # shift_right: zeros at position 0
                x = cfg.input_scale * E + cfg.carry_scale * shifted
            H = self.run_block_stack(x, cos, sin, own_window)
        return H

    # Continue from a cached state (prefill from any position) -------------------------------
    def extend_core(self, tokens: torch.Tensor, lengths: torch.Tensor, start_pos: torch.Tensor,
                    cache: PLTCache) -> torch.Tensor:
        """Continue each sequence by one chunk of tokens over the state in `cache`: the state primitive.

        tokens [B, S] right-padded (lengths [B] real tokens, >= 1) at positions start_pos[b] + s;
        the cache holds each sequence's state as of start_pos[b] - 1: shared (or per-loop) K/V in
        slots < start_pos, the rings as of start_pos - 1, the carry h_l(start_pos - 1). start_pos 0
        is a prefill from scratch: whatever the rings and carry hold is ignored. Needs
        start_pos[b] + S <= T (the cache's slots). Writes the chunk's state in place (or out of
        place when tracing): K/V at slots start_pos .. start_pos + S - 1 (padding writes slots past
        the real tokens, which no query sees and the next write overwrites), each ring rewritten to
        hold the last w real positions, the carry at the last real position. Returns the logits of
        each chunk's last real token [B, V]. cache.lengths is not touched.

        Every loop runs over the whole chunk (loops one after another, as in `hidden`): loop 1
        writes its K/V then attends causally over the cache; loop l >= 2 calls the G-SWA op (R = 1,
        G = 0) with the local keys = the ring before the chunk followed by the chunk's own keys.
        """
        cfg = self.cfg
        B, S = tokens.shape
        pos = start_pos[:, None] + torch.arange(S, device=tokens.device)[None, :]  # [B, S]
        cos, sin = self.rope_at(pos)  # once per chunk
        mask = causal_mask(pos, cache.max_seq)  # [B, 1, S, T], once per chunk
        E = self.embed(tokens)  # [B, S, d]
        last = lengths - 1  # [B] index of each chunk's last real token

        def causal_into(i: int, n: int) -> Attend:
            def attend(q, k, v):  # q [B, Hq, S, D], k/v [B, Hkv, S, D]
                kc, vc = cache.update(i, start_pos, k, v)  # the chunk's S slots, then attend over the cache
                return self.layers[n].attn.causal(q, kc, vc, mask)
            return attend

        N = cfg.n_layers
        if not cfg.uses_gswa:  # vanilla and looped: every loop its own causal cache
            x = E
            for loop in range(cfg.loops):
                x = self.run_block_stack(x, cos, sin, lambda n: causal_into(loop * N + n, n))
            return self.logits(_take_rows(x, last))

        W = cache.ring_len
        ring_pos = cache_lib.ring_positions(start_pos - 1, W)  # [B, W] positions the rings hold (-1: empty)
        local_pos = torch.cat([ring_pos, pos], dim=1)  # [B, W + S]: the ring, then the chunk
        keep = ring_refresh_index(start_pos, last, W)  # [B, W] where each new ring slot comes from
        new_rings: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {n: {} for n in range(cfg.n_local_layers)}

        def windowed(loop: int) -> Callable[[int], Attend]:
            def for_layer(n: int) -> Attend:
                ring, row = (n, loop - 1) if cfg.mode == "plt" else ((loop - 1) * N + n, 0)  # config.n_local_layers

                def attend(q, k, v):  # q [B, Hq, S, D], k/v [B, Hkv, S, D]
                    rk, rv = cache.local_row(ring, row)  # [B, Hkv, W, D] as of start_pos - 1
                    kl, vl = torch.cat([rk, k], dim=2), torch.cat([rv, v], dim=2)  # [B, Hkv, W + S, D]
                    idx = keep[:, None, :, None].expand(B, kl.shape[1], W, kl.shape[3])
                    new_rings[ring][row] = (torch.gather(kl, 2, idx), torch.gather(vl, 2, idx))
                    y = self.layers[n].attn.gswa(q[:, None], cache.k[n], cache.v[n], kl[:, None], vl[:, None],
                                                 pos, local_pos, 0)
                    return y[:, 0]  # [B, Hq, S, D]
                return attend
            return for_layer

        H = self.run_block_stack(E, cos, sin, lambda n: causal_into(n, n))  # loop 1 fills the shared cache
        carry = [H]
        if cfg.has_carry:  # h_l(start_pos - 1) of loops 1..L-1; zero before position 0
            before = cache.carry * (start_pos > 0).to(cache.carry.dtype)[:, None, None]  # [B, L-1, d]
        for loop in range(1, cfg.loops):
            if cfg.mode == "loopcoder":  # loop l reads H_{l-1} at the same position
                x = H
            else:  # shift_right across the chunk boundary: position start_pos sees the carried h(start_pos - 1)
                shifted = torch.cat([before[:, loop - 1:loop], H[:, :S - 1]], dim=1)  # [B, S, d]
                x = cfg.input_scale * E + cfg.carry_scale * shifted
            H = self.run_block_stack(x, cos, sin, windowed(loop))
            carry.append(H)
        for n, rows in new_rings.items():
            cache.set_local(n, [rows[r] for r in sorted(rows)])
        if cfg.has_carry:
            cache.set_carry(torch.stack([_take_rows(h, last) for h in carry[:-1]], dim=1))  # [B, L-1, d]
        return self.logits(_take_rows(H, last))

    @torch.no_grad()
    def extend(self, tokens: torch.Tensor, lengths: torch.Tensor, start_pos: torch.Tensor,
               cache: PLTCache) -> torch.Tensor:
        """extend_core on a runtime cache (writes in place). The caller advances cache.lengths."""
        return self.extend_core(tokens, lengths, start_pos, cache)

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor, cache: PLTCache) -> torch.Tensor:
        """Prefill from position 0 = extend with start_pos 0. Returns last-token logits [B, V]."""
        return self.extend_core(tokens, lengths, torch.zeros_like(lengths), cache)

    # One decode step ---------------------------------------------------------------------------
    def decode_core(self, tokens: torch.Tensor, pos: torch.Tensor, cache: PLTCache) -> torch.Tensor:
        """One token per sequence at position pos[b]; writes its K/V (and carry) into `cache`.

        tokens [B], pos [B] int64. Returns logits [B, V]. plt: ONE pass of L rows
        [e_t, a*e_t + b*h_1(t-1), ...]; in every layer row 0 (loop 1) writes its key into the shared
        cache, rows 1..L-1 into their rings, then one G-SWA call (R = L, G = 1) attends all rows.
        vanilla / looped: L sequential passes of one row. cache.lengths is not touched.
        """
        cfg = self.cfg
        e = self.embed(tokens)[:, None]  # [B, 1, d]
        query_pos = pos[:, None]  # [B, 1]

        if not cfg.uses_gswa:  # vanilla and looped: L sequential passes of one row
            cos, sin = self.rope_at(query_pos)  # once per step
            mask = causal_mask(query_pos, cache.max_seq)  # [B, 1, 1, T], once per step

            def causal_into(i: int, n: int) -> Attend:
                def attend(q, k, v):  # q [B, Hq, 1, D], k/v [B, Hkv, 1, D]
                    kc, vc = cache.update(i, pos, k, v)
                    return self.layers[n].attn.causal(q, kc, vc, mask)
                return attend

            x, N = e, cfg.n_layers
            for loop in range(cfg.loops):
                x = self.run_block_stack(x, cos, sin, lambda n: causal_into(loop * N + n, n))
            return self.logits(x[:, 0])

        L = cfg.loops
        ring_slot = torch.remainder(pos, cache.ring_len)  # [B], once per step
        local_pos = cache_lib.ring_positions(pos, cache.ring_len)  # [B, ring_len], once per step
        if cfg.mode == "loopcoder":
            return self.logits(self._loopcoder_decode(e, pos, cache, ring_slot, local_pos)[:, 0])
        cos, sin = self.rope_at(query_pos, rows=True)  # every row sits at position t
        x = torch.cat([e, cfg.input_scale * e + cfg.carry_scale * cache.carry], dim=1)  # [B, L, d] rows

        def rows_attend(n: int) -> Attend:
            def attend(q, k, v):  # q [B, L, Hq, 1, D], k/v [B, L, Hkv, 1, D] (rows layout)
                kg, vg = cache.update(n, pos, k[:, 0], v[:, 0])  # row 0 = loop 1: shared cache first
                kl, vl = cache.update_local(n, ring_slot, k[:, 1:], v[:, 1:])  # rows 1..L-1: their rings
                return self.layers[n].attn.gswa(q, kg, vg, kl, vl, query_pos, local_pos, 1)  # [B, L, Hq, 1, D]
            return attend

        x = self.run_block_stack(x, cos, sin, rows_attend, rows=True)  # [B, L, d]
        cache.set_carry(x[:, : L - 1])
        return self.logits(x[:, L - 1])

    def _loopcoder_decode(self, e, pos, cache: PLTCache, ring_slot, local_pos) -> torch.Tensor:
        """loopcoder's step: L sequential passes of one row e [B, 1, d] -> H_L [B, 1, d].

        Loop 1 writes its key at pos into the shared cache and attends causally over it; loop l >= 2
        writes its key into its own ring (cache.update_local, ring (l-2) * N + n) and calls the G-SWA
        op with R = 1, G = 0 over the shared cache (already holding position t) and that ring.
        """
        cfg = self.cfg
        query_pos = pos[:, None]  # [B, 1]
        cos, sin = self.rope_at(query_pos)  # once per step
        mask = causal_mask(query_pos, cache.max_seq)  # [B, 1, 1, T], once per step

        def shared(n: int) -> Attend:
            def attend(q, k, v):  # q [B, Hq, 1, D], k/v [B, Hkv, 1, D]
                kc, vc = cache.update(n, pos, k, v)
                return self.layers[n].attn.causal(q, kc, vc, mask)
            return attend

        def windowed(loop: int) -> Callable[[int], Attend]:
            def for_layer(n: int) -> Attend:
                def attend(q, k, v):
                    kl, vl = cache.update_local((loop - 1) * cfg.n_layers + n, ring_slot, k[:, None], v[:, None])
                    y = self.layers[n].attn.gswa(q[:, None], cache.k[n], cache.v[n], kl, vl, query_pos, local_pos, 0)
                    return y[:, 0]  # [B, Hq, 1, D]
                return attend
            return for_layer

        x = self.run_block_stack(e, cos, sin, shared)
        for loop in range(1, cfg.loops):
            x = self.run_block_stack(x, cos, sin, windowed(loop))
        return x

    @torch.no_grad()
    def decode_step(self, tokens: torch.Tensor, cache: PLTCache) -> torch.Tensor:
        """tokens [B] at positions cache.lengths -> logits [B, V]. The caller advances the cache."""
        return self.decode_core(tokens, cache.lengths, cache)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
