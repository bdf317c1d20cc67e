"""Checkers for lesson 10 (rejection sampling, §3.2.3): best-of-K selection over a batch of prompts, and the max
and median reward among the first k samples (Fig 7)."""

from __future__ import annotations

import torch

from .core import make_checker

# --- 10.1 best_of_k -----------------------------------------------------------------------------------------


def best_of_k(rewards: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards (P, K_max) of K_max samples per prompt -> (index (P,), reward (P,)) of the best among the first k."""
    best, index = rewards[:, :k].max(dim=1)
    return index, best


def _best_cases():
    g = torch.Generator().manual_seed(101)
    return [
        ("3 prompts, 4 samples, k = 4", (torch.randn(3, 4, generator=g), 4)),
        ("5 prompts, 16 samples, k = 8: only the first 8 count", (torch.randn(5, 16, generator=g), 8)),
        ("2 prompts, k = 1: the first sample", (torch.randn(2, 6, generator=g), 1)),
    ]


def _best_all_samples(rewards, k):
    best, index = rewards.max(dim=1)
    return index, best


def _best_argmin(rewards, k):
    best, index = rewards[:, :k].min(dim=1)
    return index, best


def _best_over_prompts(rewards, k):
    best, index = rewards[:, :k].max(dim=0)
    return index, best


check_best_of_k = make_checker(
    "10.1 best_of_k",
    best_of_k,
    _best_cases,
    [
        (_best_all_samples, "every sample is used: best-of-k looks at the first k samples only (rewards[:, :k])."),
        (_best_argmin, "the lowest reward is picked: keep the highest."),
        (_best_over_prompts, "the max runs over prompts (dim 0): pick the best sample of each prompt (dim 1)."),
    ],
)

# --- 10.2 max_and_median ------------------------------------------------------------------------------------


def max_and_median(rewards: torch.Tensor, k: int) -> tuple[float, float]:
    """rewards (P, K_max) -> (mean over prompts of the max, mean over prompts of the median) of the first k; the
    median of an even number of samples is the mean of the two middle ones (torch.quantile(x, 0.5))."""
    first = rewards[:, :k]
    return first.max(dim=1).values.mean().item(), first.quantile(0.5, dim=1).mean().item()


def _curve_cases():
    g = torch.Generator().manual_seed(102)
    return [
        ("4 prompts, k = 5 (odd)", (torch.randn(4, 8, generator=g), 5)),
        ("3 prompts, k = 3 of 16", (torch.randn(3, 16, generator=g), 3)),
        ("6 prompts, k = 1", (torch.randn(6, 4, generator=g), 1)),
    ]


def _curve_mean(rewards, k):
    first = rewards[:, :k]
    return first.max(dim=1).values.mean().item(), first.mean().item()


def _curve_global(rewards, k):
    first = rewards[:, :k]
    return first.max().item(), first.quantile(0.5).item()


check_max_and_median = make_checker(
    "10.2 max_and_median",
    max_and_median,
    _curve_cases,
    [
        (_curve_mean, "the mean is taken instead of the median: Fig 7 shows the median reward of the k samples."),
        (
            _curve_global,
            "the max and median are taken over all prompts at once: take them per prompt (dim 1), "
            "then average over prompts.",
        ),  # fmt: skip
    ],
)
