"""Sampling and the decode loop, written once against the backend interface."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .backends.base import Backend
from .config import SEED_MAX, SEED_MIN  # noqa: F401  (serve.protocol imports them from here)
from .errors import InputError, ModelError



@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None
    stop_tokens: tuple[int, ...] = field(default_factory=tuple)
    stop_strings: tuple[str, ...] = field(default_factory=tuple)  # text that ends a sequence (not returned)

    def validate(self) -> None:
        def number(name: str, integer: bool = False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
                raise InputError(f"{name} must be {'an integer' if integer else 'a number'}, got {v!r}")
            return v

        if number("max_new_tokens", integer=True) < 0:
            raise InputError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        t = number("temperature")
        try:
            finite = math.isfinite(t)
        except OverflowError:  # an int beyond a float's range
            finite = False
        if not finite or t < 0:
            raise InputError(f"temperature must be a finite number >= 0, got {t}")
        if number("top_k", integer=True) < 0:
            raise InputError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < number("top_p") <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not isinstance(t, str) or not t for t in self.stop_strings):
            raise InputError("stop strings must be non-empty text")
        if self.seed is not None and not SEED_MIN <= number("seed", integer=True) <= SEED_MAX:
            raise InputError(f"seed must be in [{SEED_MIN}, {SEED_MAX}] (a signed 64-bit integer), got {self.seed}")

    def greedy_for(self, dtype: torch.dtype = torch.float32) -> bool:
        """Whether sampling logits of `dtype` is greedy: temperature 0, or one that rounds to 0 in
        that dtype (below ~1e-45 in fp32), where dividing by it would give NaN."""
        return self.temperature == 0.0 or torch.tensor(self.temperature, dtype=dtype).item() == 0.0


class TextStream:
    """Incremental detokenizer of one sequence that applies stop strings.

    push(token) -> (text delta safe to show, stopped). Text is held back while it ends in an
    incomplete UTF-8 character (shown as U+FFFD by the decoders) or in a prefix of a stop string;
    when a stop string appears, the text before it is released and the sequence stops.

    Each push decodes a short window of ids, not the whole sequence (so a long answer costs O(n),
    not O(n^2)): the ids from `prefix` on, minus the text of ids[prefix:read], which keeps the
    decoders' context-dependent pieces right (a SentencePiece word's leading space, bytes of one
    character split over tokens). `text` equals decode(ids).
    """

    def __init__(self, decode: Callable[[list[int]], str], stop_strings: tuple[str, ...] = ()):
        self.decode, self.stops = decode, tuple(stop_strings)
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[:read] are settled into `stable`; ids[prefix:read] give it context
        self.stable = ""  # text of ids[:read], ends on a complete character
        self.sent = 0  # characters of the text already released
        self.text = ""
        self.stopped = False  # a stop string was found: nothing more is released

    def _decode_tail(self) -> str:
        """The text of ids[read:] in the context of ids[prefix:read]; settles it once it is complete."""
        before = self.decode(self.ids[self.prefix:self.read])
        after = self.decode(self.ids[self.prefix:])
        tail = after[len(before):] if len(after) > len(before) and after.startswith(before) else None
        if tail is None:  # the window's text is not an extension of its context: decode it all once
            tail = self.decode(self.ids)[len(self.stable):]
        if tail and not tail.endswith("\ufffd"):
            self.stable += tail
            self.prefix, self.read = self.read, len(self.ids)
            return ""
        return tail

    def push(self, token: int) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        self.ids.append(token)
        settled = len(self.stable)  # text[:settled] was searched by earlier pushes: only the new text is
        pending = self._decode_tail()
        self.text = text = self.stable + pending
        hits = [i for i in (text.find(s, max(self.sent, settled - len(s) + 1)) for s in self.stops) if i >= 0]
        if hits:
            end = min(hits)
            delta, self.sent = text[self.sent:end], end
            self.text, self.stopped = text[:end], True
            return delta, True
        end = len(text.rstrip("\ufffd"))
        safe = end
        for s in self.stops:  # hold back a tail that could still become a stop string
            n = next((n for n in range(min(len(s) - 1, end - self.sent), 0, -1) if text[end - n:end] == s[:n]), 0)
            safe = min(safe, end - n)
        delta = text[self.sent:safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return delta, False

    def flush(self) -> str:
        """The held-back text at the end of the sequence, without a last character whose bytes never
        completed (the sequence ended inside it: decoders show U+FFFD, which is not the model's text).
        `text` is cut the same way."""
        end, floor = len(self.text), max(len(self.stable), self.sent)
        while end > floor and self.text[end - 1] == "\ufffd":
            end -= 1
        self.text = self.text[:end]
        delta, self.sent = self.text[self.sent:], end
        return delta


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] fp32 -> next tokens [B] int64."""
    if not torch.isfinite(logits).all():
        raise ModelError("the model produced NaN or infinite logits; check the weights and the dtype "
                         "(fp16 overflow?)")
    if params.greedy_for(logits.dtype):
        return logits.argmax(dim=-1)
    # Shift by the row maximum before dividing: the best token gets exactly 0, the others a
    # negative number (or -inf for tiny temperatures), so softmax stays finite for any T > 0 and
    # tends to greedy as T -> 0.
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / params.temperature  # [B, V]
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= params.top_p  # keep the token that crosses top_p
        drop_sorted[:, 0] = False  # and always the best one (a top_p that rounds to 0 in fp32 would drop it too)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def pad_prompts(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists -> tokens [B, S], lengths [B]."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputError("every prompt needs at least one token")
    S = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), S), pad_id, dtype=torch.int64)
    for b, p in enumerate(prompts):
        tokens[b, : len(p)] = torch.tensor(p, dtype=torch.int64)
    return tokens, torch.tensor([len(p) for p in prompts], dtype=torch.int64)


def generate(backend: Backend, prompts: list[list[int]], params: SamplingParams, pad_id: int = 0,
             on_tokens: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
             decode: Callable[[list[int]], str] | None = None) -> list[list[int]]:
    """Prefill the prompts, then decode up to max_new_tokens per sequence.

    Returns the generated tokens of each prompt (stop token included when hit; with stop strings,
    up to the token that completed one). on_tokens(tokens [B], active [B] bool) is called after
    every step for streaming. Stop strings need `decode` (the tokenizer's ids -> text).
    """
    params.validate()
    if params.stop_strings and decode is None:
        raise InputError("stop strings need the tokenizer's decode function")
    texts = [TextStream(decode, params.stop_strings) for _ in prompts] if params.stop_strings else None
    tokens, lengths = pad_prompts(prompts, pad_id)
    limit, what = backend.max_seq, backend.max_seq_source
    longest = int(lengths.max())
    if longest + params.max_new_tokens > limit:
        raise InputError(f"prompt of {longest} tokens + {params.max_new_tokens} new tokens exceeds {what} of "
                         f"{limit}; shorten the prompt or lower --max-new-tokens")
    out: list[list[int]] = [[] for _ in prompts]
    if params.max_new_tokens == 0:
        return out
    generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    session = backend.start(len(prompts), longest + params.max_new_tokens)
    logits = session.prefill(tokens, lengths)
    active = torch.ones(len(prompts), dtype=torch.bool)
    stop = torch.tensor(list(params.stop_tokens) or [-1], dtype=torch.int64)
    for step in range(params.max_new_tokens):
        nxt = sample(logits, params, generator)  # [B]
        for b in torch.nonzero(active)[:, 0].tolist():
            out[b].append(int(nxt[b]))
        if on_tokens is not None:
            on_tokens(nxt, active.clone())
        active &= ~torch.isin(nxt, stop)
        if texts is not None:
            for b in torch.nonzero(active)[:, 0].tolist():
                if texts[b].push(int(nxt[b]))[1]:
                    active[b] = False
        if not active.any() or step == params.max_new_tokens - 1:
            break
        logits = session.decode(nxt)
    return out


def generate_text(model: str, prompts: list[str], backend: str = "torch", max_new_tokens: int = 64,
                  temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                  stop: tuple[str, ...] = (), stream: Callable[[str], None] | None = None,
                  **backend_options) -> list[str]:
    """`plt-deploy generate`: load `model` on `backend`, continue each prompt, return the texts.

    `stream(text)` receives the first prompt's text as it is decoded (complete UTF-8 characters
    only); the concatenation of what it receives equals the returned text.
    """
    from .backends import load_backend
    from .tokenizer import load_tokenizer

    be = load_backend(backend, model, **backend_options)
    with be:
        tok = load_tokenizer(getattr(be, "tokenizer_dir", model), be.config.vocab_size, be.config)
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, seed, tuple(tok.eos_ids), tuple(stop))
        decoder = TextStream(tok.decode, params.stop_strings) if stream is not None and len(prompts) == 1 else None

        def on_tokens(tokens, active):  # the first prompt's new text, complete characters only
            if active[0]:
                piece, _ = decoder.push(int(tokens[0]))
                if piece:
                    stream(piece)
        ids = [tok.encode(p) for p in prompts]
        step = be.max_batch or max(1, len(ids))  # more prompts than an export's --max-batch: in batches
        batches = [ids[i:i + step] for i in range(0, len(ids), step)] or [ids]  # none: generate refuses it
        outs = [o for part in batches
                for o in generate(be, part, params, pad_id=tok.pad_id,
                                  on_tokens=on_tokens if decoder is not None else None, decode=tok.decode)]
        if decoder is not None and (rest := decoder.flush()):
            stream(rest)
    return [visible_text(tok.decode, o, params.stop_strings) for o in outs]


def visible_text(decode: Callable[[list[int]], str], ids: list[int], stop_strings: tuple[str, ...] = ()) -> str:
    """The text of generated `ids` as a user sees it: cut before the first stop string, without a
    last character left incomplete (TextStream.flush)."""
    text = TextStream(decode, stop_strings)
    for token in ids:
        if text.push(token)[1]:
            break
    text.flush()
    return text.text
