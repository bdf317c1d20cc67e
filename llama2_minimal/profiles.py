"""Profiles choose the size of everything: the world, the corpus, the model and the training steps.

    ci       the whole pipeline in a few minutes: for tests and CI
    laptop   the default for learners and `llama2-minimal pipeline`: minutes on a 2-core CPU
    gpu      larger, for a CUDA device (bf16 autocast)

Chosen by `--profile` on the command line, or by the environment variable LLAMA2_MINIMAL_PROFILE (which the
notebooks read, so CI runs the lessons in `ci` while a learner gets `laptop`).

A profile also chooses the training precision: "auto" (bf16 autocast where the device computes bf16 natively: CUDA,
CPUs with AVX512-BF16, AMX or ARM's BF16; fp32 elsewhere), "bf16" or "fp32". $LLAMA2_MINIMAL_PRECISION or
`--precision` overrides it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from .world import WorldConfig

PROFILE_ENV = "LLAMA2_MINIMAL_PROFILE"
PRECISION_ENV = "LLAMA2_MINIMAL_PRECISION"
PRECISIONS = ("auto", "bf16", "fp32")  # resolved by train/loop.py resolve_precision
SEED_ENV = "LLAMA2_MINIMAL_SEED"  # another seed for the notebooks too (benchmarks/seed_spread.py runs them under it)


@dataclass(frozen=True)
class PretrainSettings:
    steps: int
    batch_size: int  # sequences per optimiser step (the global batch, over all processes)
    micro_batch: int  # sequences per forward pass (gradient accumulation makes up the rest)
    seq_len: int
    lr: float  # the peak (Llama 2: 3e-4 for 7B; a toy model takes a larger one)
    warmup: int
    validation_fraction: float = 0.05


@dataclass(frozen=True)
class SFTSettings:
    """§3.1: cosine from 2e-5, weight decay 0.1, batch 64 x 4096 tokens, 2 epochs; scaled for a toy model."""

    epochs: float = 4.0  # the paper's 2 leaves a toy model short of its demonstrations
    batch_size: int = 2  # packed rows per optimiser step (about 12 dialogs)
    seq_len: int = 256
    lr: float = 3e-4  # higher rates erase more of what pretraining taught (held-out facts drop)
    fraction: float = 0.5  # of the training prompts get a demonstration; RLHF samples on all of them


@dataclass(frozen=True)
class RewardSettings:
    """§3.2: preference data from several model variants and temperatures; 1 epoch, cosine to 10%, warmup 3%."""

    sft_temperatures: tuple[float, ...] = (0.7, 1.0, 1.4)  # the SFT model's samples (plus base and sloppy SFT at 1.0)
    flaws_per_prompt: int = 4  # hard negatives written with one flaw each
    pairs_per_prompt: int = 8
    batch_size: int = 16  # pairs per optimiser step (the paper: 512)
    lr: float = 1e-3  # the paper: 1e-5 (5e-6 for 70B)
    epochs: float = 1.0
    data_fractions: tuple[float, ...] = (0.25, 0.5)  # the data lever (Fig 6): RMs on a share of the prompts
    # The RM also reads the SFT model's log-probabilities of the response (train/reward.py RewardModel), where the
    # facts are, besides the final hidden state that the paper's head reads: that head alone ranks a wrong value above
    # the right one about as often as not on held-out facts. False builds the paper's design (lesson 09 compares).
    reads_predictions: bool = True
    # §3.2.1's iterative loop: after RLHF-V1, a second preference batch is collected on V1's samples and batch 1's
    # reward models are trained one more epoch on it for RLHF-V2 (they have then seen both batches). False: V2 uses
    # batch 1's reward models.
    iterative: bool = True
    next_batch_temperatures: tuple[float, ...] = (0.7, 1.4)  # V1's samples in batch 2
    next_batch_pairs_per_prompt: int = 4


@dataclass(frozen=True)
class RejectionSettings:
    """§3.2.3: K samples per prompt, the best by the reward model kept, fine-tuned on; iterations RLHF-V1, V2."""

    k: int = 16  # the largest K the iterations may use; K and temperature are chosen on validation prompts
    temperature: float = 1.0  # of lesson 10's first samples (the paper gives none for Fig 7); the iterations' is chosen
    iterations: int = 2
    epochs: float = 2.0
    lr: float = 2e-4
    batch_size: int = 2  # packed rows per optimiser step
    curve_ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    curve_temperatures: tuple[float, ...] = (0.4, 0.7, 1.0, 1.3, 1.6)


@dataclass(frozen=True)
class Profile:
    name: str
    world: WorldConfig
    vocab_size: int
    model: dict  # ModelArgs fields except vocab_size
    pretrain: PretrainSettings
    corpus_mix: dict = field(default_factory=dict)
    eval_batch: int = 32
    sft: SFTSettings = SFTSettings()
    reward: RewardSettings = RewardSettings()
    rejection: RejectionSettings = RejectionSettings()
    eval_samples: int = 2  # sampled answers per held-out prompt when judging chat models
    precision: str = "auto"  # of every training stage: auto, bf16 or fp32 (train/loop.py resolve_precision)


PROFILES = {
    "ci": Profile(
        name="ci",
        # 16 countries and 16 people rather than 8 and 8: enough held-out facts and privacy prompts that SFT over base
        # and Table 7's diagonal clear the spread between seeds and CPUs (benchmarks/seed_spread.py)
        world=WorldConfig(seed=0, n_countries=16, n_people=16, n_arithmetic_pages=60, n_stories=60),
        vocab_size=512,
        model=dict(dim=128, n_layers=3, n_heads=4, n_kv_heads=2, multiple_of=32, max_seq_len=256),
        pretrain=PretrainSettings(steps=600, batch_size=16, micro_batch=16, seq_len=128, lr=3e-3, warmup=30),
        corpus_mix={"country": 10, "person": 8, "dialogue": 12},  # question-and-answer pages: a prior for answering
        eval_samples=4,
        # fp32 on every CPU: the tests assert effects whose margins were measured in fp32, on AVX2 and AVX-512 kernels
        # (benchmarks/seed_spread.py); a model this small gains little from bf16
        precision="fp32",
    ),
    "laptop": Profile(
        name="laptop",
        world=WorldConfig(seed=0, n_countries=24, n_people=36, n_arithmetic_pages=1200, n_stories=1200),
        vocab_size=2048,
        model=dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, multiple_of=64, max_seq_len=512),
        pretrain=PretrainSettings(steps=600, batch_size=16, micro_batch=16, seq_len=256, lr=2e-3, warmup=60),
        corpus_mix={"country": 30, "person": 24, "town": 6, "dialogue": 12},
    ),
    "gpu": Profile(
        name="gpu",
        world=WorldConfig(seed=0, n_countries=48, n_people=72, n_arithmetic_pages=2000, n_stories=2000),
        vocab_size=4096,
        model=dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, multiple_of=128, max_seq_len=1024),
        pretrain=PretrainSettings(steps=4000, batch_size=64, micro_batch=64, seq_len=512, lr=1e-3, warmup=200),
        corpus_mix={"country": 40, "person": 24, "town": 6, "dialogue": 6},
        eval_batch=128,
    ),
}


def get_profile(name: str | None = None, seed: int | None = None, precision: str | None = None) -> Profile:
    """The profile named, else the one in $LLAMA2_MINIMAL_PROFILE, else `laptop`.

    `seed` (else $LLAMA2_MINIMAL_SEED, else the profile's own, 0) replaces the world's seed, which every stage
    derives its own seeds from (the world itself, the data's order, initialisation, sampling): another seed builds
    another world and other models of the same sizes, cached apart from the default ones. benchmarks/seed_spread.py
    uses it to measure how far results move between runs.

    `precision` (else $LLAMA2_MINIMAL_PRECISION, else the profile's) replaces the training precision: auto, bf16 or
    fp32. The precision it resolves to on this machine is part of every stage's cache key."""
    name = name or os.environ.get(PROFILE_ENV) or "laptop"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: choose one of {sorted(PROFILES)} (--profile or ${PROFILE_ENV})")
    if seed is None and os.environ.get(SEED_ENV, "").strip():
        text = os.environ[SEED_ENV].strip()
        if not text.isdigit():
            raise ValueError(f"${SEED_ENV} must be a whole number of 0 or more, got {text!r}: set it so or unset it")
        seed = int(text)
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be 0 or more, got {seed}")
    if precision is None and os.environ.get(PRECISION_ENV, "").strip():
        precision = os.environ[PRECISION_ENV].strip()
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}: "
                         f"fix --precision or ${PRECISION_ENV}")  # fmt: skip
    profile = PROFILES[name]
    if seed is not None:
        profile = replace(profile, world=replace(profile.world, seed=seed))
    return profile if precision is None else replace(profile, precision=precision)
