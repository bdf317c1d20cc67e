"""Two synthetic tasks that a tiny Llama learns in seconds, for the experiments of lessons 02-05.

    copy       a random sequence of 12 tokens, then the same again: the second copy is scored, and can only be
               predicted by reading the first (12 positions back)
    lookback   random tokens; at each position the model must name the token two positions back

Both use a vocabulary of 32 ids (0-2 are kept free, like unk, BOS and EOS), so guessing costs ln 29 nats. The
pretraining stage trains on the toy world; these tasks exist to make one architectural effect measurable in a
few seconds (pre- against post-norm, rotary positions or none, which sub-layer does the copying).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .model import ModelArgs, Transformer

VOCAB = 32
FIRST_ID = 3  # tokens are drawn from 3..VOCAB-1
GUESSING_LOSS = math.log(VOCAB - FIRST_ID)  # a uniform guess among the 29 possible tokens
COPY_LENGTH = 12
LOOKBACK_LENGTH, LOOKBACK = 16, 2
TASKS = ("copy", "lookback")
IGNORE = -100  # a target that is not scored


def tiny_args(n_layers: int = 2, n_kv_heads: int | None = None) -> ModelArgs:
    """The tasks' model: width 64, 4 query heads, `n_kv_heads` key/value heads (None: multi-head)."""
    return ModelArgs(dim=64, n_layers=n_layers, n_heads=4, n_kv_heads=n_kv_heads, vocab_size=VOCAB, multiple_of=32,
                     max_seq_len=32)  # fmt: skip


def tiny_model(n_layers: int = 2, n_kv_heads: int | None = None, seed: int = 0) -> Transformer:
    """A freshly initialised tiny model; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return Transformer(tiny_args(n_layers, n_kv_heads))


def task_batch(task: str, generator: torch.Generator, batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of one batch, both (batch, S); targets are IGNORE where nothing is scored."""
    if task == "copy":
        first = torch.randint(FIRST_ID, VOCAB, (batch, COPY_LENGTH), generator=generator)
        tokens = torch.cat([first, first], dim=1)
        targets = tokens[:, 1:].clone()
        targets[:, : COPY_LENGTH - 1] = IGNORE  # the first copy cannot be predicted; its last token predicts the second
        return tokens[:, :-1], targets
    if task == "lookback":
        tokens = torch.randint(FIRST_ID, VOCAB, (batch, LOOKBACK_LENGTH), generator=generator)
        targets = torch.full_like(tokens, IGNORE)
        targets[:, LOOKBACK:] = tokens[:, :-LOOKBACK]  # position i names the token at i - 2
        return tokens, targets
    raise ValueError(f"unknown task {task!r}: choose one of {TASKS}")


def task_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the scored positions."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE)


def evaluation_batch(task: str, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch that training never draws (its own seed), to measure a trained model on."""
    return task_batch(task, torch.Generator().manual_seed(12345), batch)


def train_on_task(model: Transformer, task: str, steps: int = 100, lr: float = 3e-3, warmup: int = 0, seed: int = 0,
                  batch: int = 16) -> list[float]:  # fmt: skip
    """Train in place with AdamW (betas 0.9, 0.95, as in §2.2; no weight decay) at a constant learning rate,
    after a linear warmup over `warmup` steps if asked; returns the training loss of every step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed + 1)
    losses = []
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) if warmup else lr
        inputs, targets = task_batch(task, generator, batch)
        loss = task_loss(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def final_loss(losses: list[float], last: int = 10) -> float:
    """The mean of the last `last` training losses: one number for where a run ended."""
    tail = losses[-last:]
    return sum(tail) / len(tail)


__all__ = [
    "GUESSING_LOSS",
    "TASKS",
    "VOCAB",
    "evaluation_batch",
    "final_loss",
    "task_batch",
    "task_loss",
    "tiny_args",
    "tiny_model",
    "train_on_task",
]
