"""Pretraining (§2.2): the world's corpus, cleaned, tokenised with the course's SentencePiece tokenizer,
packed into fixed-length rows, and next-token prediction with the shared loop."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..checkpoint import save_checkpoint
from ..data import clean_corpus, pack, split_rows
from ..model import ModelArgs, Transformer
from ..profiles import Profile
from ..tokenizer import Tokenizer, train_tokenizer
from ..world import World
from .loop import TrainConfig, distributed, train


def corpus_texts(profile: Profile, clean: bool = True) -> tuple[list[str], dict]:
    """The pretraining documents of the profile's world, cleaned (or not), with the cleaning report."""
    texts = [d.text for d in World(profile.world).corpus(profile.corpus_mix)]
    if not clean:
        return texts, {"documents_in": len(texts), "cleaned": False}
    cleaned, report = clean_corpus(texts)
    return cleaned, {**asdict(report), "cleaned": True}


def tokenizer_texts(profile: Profile) -> list[str]:
    """What the tokenizer is trained on: the cleaned corpus and the world's prompts and good answers (the
    text that the later stages put in front of the model)."""
    texts, _ = corpus_texts(profile, clean=True)
    prompts = World(profile.world).prompts()
    return texts + [p.text for p in prompts] + [p.reference for p in prompts]


def build_tokenizer(profile: Profile, path: str | os.PathLike) -> Tokenizer:
    return train_tokenizer(tokenizer_texts(profile), path, vocab_size=profile.vocab_size)


def model_args(profile: Profile, vocab_size: int) -> ModelArgs:
    return ModelArgs(vocab_size=vocab_size, **profile.model)


_ROWS: dict[tuple, tuple] = {}  # tokenising the corpus takes seconds: lessons and the pipeline ask repeatedly


def pretraining_rows(profile: Profile, tokenizer_path: str | os.PathLike, clean: bool = True):
    """(train rows, validation rows, report): packed (n, seq_len + 1) token rows, computed once per process."""
    key = (repr(profile), str(tokenizer_path), clean)
    if key not in _ROWS:
        tokenizer = Tokenizer(tokenizer_path)
        texts, report = corpus_texts(profile, clean)
        rows = pack([tokenizer.encode(t, bos=False) for t in texts], profile.pretrain.seq_len, tokenizer.bos_id,
                    tokenizer.eos_id)  # fmt: skip
        train_rows, val_rows = split_rows(rows, profile.pretrain.validation_fraction, seed=profile.world.seed)
        report = {**report, "tokens": rows.numel(), "train_rows": len(train_rows), "validation_rows": len(val_rows)}
        if len(_ROWS) >= 4:
            _ROWS.clear()
        _ROWS[key] = (train_rows, val_rows, report)
    return _ROWS[key]


class RowBatches:
    """The micro-batch of (step, micro, rank): a fresh seeded permutation of the rows every epoch, the step's
    global batch cut into equal parts over accumulation steps and processes, so that any number of processes
    sees the same global batch."""

    def __init__(self, rows: torch.Tensor, batch_size: int, grad_accum: int, seed: int = 0):
        self.rows, self.batch_size, self.grad_accum, self.seed = rows, batch_size, grad_accum, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms[epoch] = torch.randperm(
                len(self.rows), generator=torch.Generator().manual_seed(self.seed + epoch)
            )
        return self._perms[epoch]

    def __call__(self, step: int, micro: int, rank: int = 0, world_size: int = 1) -> dict:
        parts = self.grad_accum * world_size
        if self.batch_size % parts:
            raise ValueError(f"batch_size={self.batch_size} must divide into {self.grad_accum} micro-batches x "
                             f"{world_size} processes")  # fmt: skip
        size = self.batch_size // parts
        first = step * self.batch_size + (micro * world_size + rank) * size
        index = [self._perm(i // len(self.rows))[i % len(self.rows)] for i in range(first, first + size)]
        batch = self.rows[torch.stack(index)]
        return {"inputs": batch[:, :-1], "targets": batch[:, 1:]}


def pretrain(
    profile: Profile,
    out_dir: str | os.PathLike,
    tokenizer_path: str | os.PathLike,
    clean: bool = True,
    steps: int | None = None,
    device: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Pretrain the profile's model; writes out_dir/model (a Meta checkpoint with its tokenizer.model),
    out_dir/metrics.jsonl, out_dir/data.json (the cleaning report) and a resumable out_dir/checkpoint."""
    out = Path(out_dir)
    settings = profile.pretrain
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    train_rows, _val_rows, report = pretraining_rows(profile, tokenizer_path, clean)
    tokenizer = Tokenizer(tokenizer_path)
    torch.manual_seed(profile.world.seed)
    model = Transformer(model_args(profile, tokenizer.n_words)).to(device)
    total = steps or settings.steps
    config = TrainConfig(steps=total, lr=settings.lr, warmup=settings.warmup, log_every=max(1, total // 100),
                         checkpoint_every=max(50, total // 10),  # an interrupted run resumes from here
                         grad_accum=settings.batch_size // settings.micro_batch, seed=profile.world.seed,
                         precision=profile.precision)  # fmt: skip
    if steps is not None:
        config = replace(config, warmup=min(config.warmup, max(1, steps // 10)))
    batches = RowBatches(train_rows, settings.batch_size, config.grad_accum, seed=profile.world.seed)
    train(model, batches, config, out, desc=f"pretrain{'' if clean else ' (uncleaned)'} [{profile.name}]",
          progress=progress, stop_after=stop_after)  # fmt: skip
    rank, _ = distributed()
    if rank == 0 and (stop_after is None or stop_after >= config.steps):
        save_checkpoint(model.cpu().float(), out / "model", tokenizer_model=tokenizer_path, overwrite=True)
        (out / "data.json").write_text(json.dumps(report, indent=1) + "\n")
    return out / "model"


__all__ = [
    "RowBatches",
    "build_tokenizer",
    "corpus_texts",
    "model_args",
    "pretrain",
    "pretraining_rows",
]
