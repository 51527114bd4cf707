"""CPU training on a synthetic task, and held-out exact-match accuracy with greedy decoding."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .backends.torch_backend import TorchBackend
from .generate import SamplingParams, generate
from .model import PLT
from .tasks import Task
from .tokenizer import ByteTokenizer


@dataclass
class TrainSettings:
    steps: int = 1500
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100
    seed: int = 0
    eval_examples: int = 256
    max_seconds: float | None = None  # stop early after this wall time


def make_batch(task: Task, tok: ByteTokenizer, rng: random.Random, batch: int, held_out: bool = False):
    """tokens [B, T] right-padded, loss mask [B, T-1] (1 on targets inside the answer and <eos>)."""
    T = task.max_len
    tokens = torch.full((batch, T), tok.pad_id, dtype=torch.int64)
    mask = torch.zeros(batch, T - 1)
    for b in range(batch):
        prompt, answer = task.sample(rng, held_out)
        p, a = tok.encode(prompt), tok.encode(answer, add_bos=False) + [tok.eos_id]
        tokens[b, : len(p) + len(a)] = torch.tensor(p + a)
        mask[b, len(p) - 1: len(p) - 1 + len(a)] = 1.0  # position i predicts token i+1
    return tokens, mask


def loss_fn(model: PLT, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])  # [B, T-1, V]
    nll = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
    return (nll * mask.flatten()).sum() / mask.sum()


def train(model: PLT, task: Task, settings: TrainSettings,
          on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """AdamW with linear warm-up and cosine decay. Returns the loss of every step."""
    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    tok = ByteTokenizer()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                            betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / settings.warmup) * 0.5 * (
        1 + torch.cos(torch.tensor(torch.pi * min(s, settings.steps) / settings.steps)).item()))
    model.train()
    losses, start = [], time.monotonic()
    for step in range(settings.steps):
        tokens, mask = make_batch(task, tok, rng, settings.batch)
        loss = loss_fn(model, tokens, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
        if settings.max_seconds is not None and time.monotonic() - start > settings.max_seconds:
            break
    model.eval()
    return losses


@torch.no_grad()
def held_out_accuracy(model: PLT, task: Task, examples: int = 256, seed: int = 1234, batch: int = 64) -> float:
    """Exact match of the greedy answer (up to <eos>) on held-out examples."""
    rng = random.Random(seed)
    tok = ByteTokenizer()
    backend = TorchBackend(model)
    pairs = [task.sample(rng, held_out=True) for _ in range(examples)]
    correct = 0
    for i in range(0, examples, batch):
        chunk = pairs[i: i + batch]
        params = SamplingParams(max_new_tokens=task.digits + 3, stop_tokens=(tok.eos_id,))
        outs = generate(backend, [tok.encode(p) for p, _ in chunk], params, pad_id=tok.pad_id)
        correct += sum(tok.decode(o) == a and o[-1:] == [tok.eos_id] for o, (_, a) in zip(outs, chunk))
    return correct / examples
