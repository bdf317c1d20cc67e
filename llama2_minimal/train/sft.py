"""Supervised fine-tuning (§3.1): demonstrations in Meta's chat format, packed, the loss on answer tokens only.

The demonstrations are the world's training prompts answered by an annotator: helpful prompts (facts, sums,
stories, borderline questions) with a good answer, and, as safety SFT, unsafe prompts with a refusal that names
the risk. The paper's settings (cosine schedule from 2e-5, weight decay 0.1, batch 64 x 4096 tokens, 2 epochs) are
kept in shape and scaled for the toy model (profiles.SFTSettings). `finetune` is also what rejection sampling
uses to fine-tune on its best samples.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint, save_checkpoint
from ..data import pack_sft, sft_example
from ..model import Transformer
from ..world import World
from ..world.demonstrations import careful, sloppy
from ..world.prompts import Prompt
from .loop import TrainConfig, train

SFT_KINDS = ("fact", "arithmetic", "story", "borderline", "unsafe")


@dataclass(frozen=True)
class Demonstration:
    prompt: Prompt
    answer: str

    def dialog(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt.text}, {"role": "assistant", "content": self.answer}]


def demonstrations(world: World, annotator: str = "careful", fraction: float = 1.0, seed: int = 0,
                   error_rate: float = 0.5, copies: int = 1) -> list[Demonstration]:  # fmt: skip
    """Demonstrations for the world's training prompts: the first `fraction` of them in a seeded order (so a
    smaller share is part of a larger one), each answered `copies` times by the careful or the sloppy annotator."""
    if annotator not in ("careful", "sloppy"):
        raise ValueError(f"annotator={annotator!r}: choose 'careful' or 'sloppy'")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction}: give the share of the training prompts, in (0, 1]")
    prompts = demonstration_prompts(world, seed)
    prompts = prompts[: max(1, round(fraction * len(prompts)))]
    rng = random.Random(seed + 1)
    out = []
    for _ in range(copies):
        for p in prompts:
            answer = careful(p) if annotator == "careful" else sloppy(p, world.entities, rng, error_rate)
            out.append(Demonstration(p, answer))
    return out


def sft_prompts(world: World) -> list[Prompt]:
    return [p for p in world.prompts(split="train") if p.kind in SFT_KINDS]


def demonstration_prompts(world: World, seed: int = 0) -> list[Prompt]:
    """The training prompts in the seeded order in which annotators write demonstrations for them."""
    prompts = sft_prompts(world)
    random.Random(seed).shuffle(prompts)
    return prompts


class PackedRows:
    """Batches of packed SFT rows for the shared loop: a fresh seeded order every epoch."""

    def __init__(self, packed: dict[str, torch.Tensor], batch_size: int, seed: int = 0):
        self.inputs, self.targets = packed["inputs"], packed["targets"]
        self.batch_size, self.seed = batch_size, seed

    def __len__(self) -> int:
        return len(self.inputs)

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self) / self.batch_size)

    def __call__(self, step: int, micro: int, rank: int = 0, world_size: int = 1) -> dict:
        epoch, index = divmod(step, self.steps_per_epoch())
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(self.seed + epoch))
        rows = order[index * self.batch_size : (index + 1) * self.batch_size]
        rows = rows[rank::world_size]
        return {"inputs": self.inputs[rows], "targets": self.targets[rows]}


def finetune(model: Transformer, tokenizer, dialogs: Sequence[list[dict]], epochs: float, batch_size: int,
             lr: float, seq_len: int, out_dir: str | os.PathLike | None = None, seed: int = 0, desc: str = "sft",
             progress: bool = True, precision: str = "fp32") -> list[dict]:  # fmt: skip
    """Fine-tune on dialogs that end with the assistant's answer: packed rows, loss on the answers only, AdamW
    with cosine decay to 10% (warmup 3% of the steps), weight decay 0.1, in `precision` (auto, bf16 or fp32). Returns
    the logged metrics."""
    examples = [sft_example(d, tokenizer) for d in dialogs]
    random.Random(seed).shuffle(examples)  # dialogs of one kind should not fill whole rows
    rows = PackedRows(pack_sft(examples, seq_len, pad_id=tokenizer.eos_id), batch_size, seed)
    steps = max(1, round(epochs * rows.steps_per_epoch()))
    config = TrainConfig(steps=steps, lr=lr, warmup=max(1, round(0.03 * steps)), log_every=max(1, steps // 50),
                         seed=seed, precision=precision)  # fmt: skip
    return train(model, rows, config, out_dir, desc=desc, progress=progress)


def sft(profile, out_dir: str | os.PathLike, base_model: str | os.PathLike, annotator: str = "careful",
        fraction: float | None = None, copies: int = 1, progress: bool = True) -> Path:  # fmt: skip
    """Fine-tune the base model (a checkpoint folder) on the profile's demonstrations; writes out_dir/model,
    out_dir/metrics.jsonl and out_dir/data.json (how many demonstrations, how many of them flawed)."""
    from ..tokenizer import Tokenizer

    out = Path(out_dir)
    settings = profile.sft
    world = World(profile.world)
    tokenizer = Tokenizer(Path(base_model) / "tokenizer.model")
    fraction = settings.fraction if fraction is None else fraction
    demos = demonstrations(world, annotator, fraction, seed=profile.world.seed, copies=copies)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_checkpoint(base_model, device=device)
    torch.manual_seed(profile.world.seed)
    finetune(model, tokenizer, [d.dialog() for d in demos], settings.epochs, settings.batch_size, settings.lr,
             settings.seq_len, out, seed=profile.world.seed, desc=f"sft ({annotator}) [{profile.name}]",
             progress=progress, precision=profile.precision)  # fmt: skip
    save_checkpoint(model.cpu().float(), out / "model", tokenizer_model=Path(base_model) / "tokenizer.model",
                    overwrite=True)  # fmt: skip
    flawed = sum(d.answer != d.prompt.reference for d in demos)
    (out / "data.json").write_text(json.dumps({"demonstrations": len(demos), "flawed": flawed,
                                               "annotator": annotator}, indent=1) + "\n")  # fmt: skip
    return out / "model"
