"""The Hugging Face peer: transformers' LlamaForCausalLM of the same shape as our vanilla model.

Randomly initialised from a LlamaConfig (no download), decoding through `generate` with its own
KV cache (DynamicCache). A streamer timestamps every token `generate` emits: the first interval is
the prefill (plus its first token), each later one a decode step, so the peer is timed per step
exactly like our backends. transformers is optional: `make_peer` returns (None, reason) without it.
"""

from __future__ import annotations

import time

import torch

from ..config import PLTConfig
from .runner import Sample


def llama_config(cfg: PLTConfig):
    """A LlamaConfig with the shape of the vanilla PLT built from `cfg`."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len, rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
        pad_token_id=0, bos_token_id=None, eos_token_id=None,
    )


class _Clock:
    """A generate() streamer that only records when each batch of tokens arrives."""

    def __init__(self):
        self.stamps: list[float] = []

    def put(self, value):
        self.stamps.append(time.perf_counter())

    def end(self):
        pass


class HFPeer:
    name = "hf-llama"

    def __init__(self, cfg: PLTConfig, seed: int = 0, threads: int | None = None):
        import transformers
        from transformers import LlamaForCausalLM

        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.version = transformers.__version__
        self.config = llama_config(cfg)
        self.model = LlamaForCausalLM(self.config).to(getattr(torch, cfg.dtype)).eval()
        self.attn_implementation = getattr(self.config, "_attn_implementation", None)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def run(self, tokens: torch.Tensor, new_tokens: int) -> Sample:
        """Prefill `tokens`, then `new_tokens` decode steps (generate emits new_tokens + 1 tokens)."""
        clock = _Clock()
        out = self.model.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=new_tokens + 1,
                                  min_new_tokens=new_tokens + 1, do_sample=False, streamer=clock,
                                  return_dict_in_generate=True, pad_token_id=0)
        stamps = clock.stamps  # [prompt, after prefill, after each decode step]
        steps = [1e3 * (b - a) for a, b in zip(stamps[1:], stamps[2:])]
        kv = 0
        for layer in getattr(out.past_key_values, "layers", []):
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, torch.Tensor):
                    kv += t.numel() * t.element_size()
        max_seq = tokens.shape[1] + new_tokens  # the last emitted token is never fed back
        return Sample(1e3 * (stamps[1] - stamps[0]), steps, kv, max_seq)


def make_peer(cfg: PLTConfig, seed: int = 0, threads: int | None = None):
    """(HFPeer, None), or (None, why not) when transformers is missing or fails to build the model."""
    try:
        return HFPeer(cfg, seed, threads), None
    except ImportError as exc:
        return None, f"transformers is not installed ({exc}); pip install 'plt-deploy[bench]'"
    except Exception as exc:  # a transformers version whose LlamaConfig differs: report, keep benchmarking
        return None, f"could not build the transformers peer: {type(exc).__name__}: {exc}"
