"""Intervals for the course's comparisons: the percentile bootstrap over prompts (Efron & Tibshirani 1993, ch. 13).

Two models judged on the same held-out prompts differ by the mean of their per-prompt differences; resampling the
prompts with replacement and recomputing that mean many times shows how far another draw of prompts could move it.
The interval is the middle 95% of the resampled means. Prompts are the unit: several sampled answers to one prompt
are averaged into that prompt's score first, since they share its difficulty.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

LEVEL = 0.95
RESAMPLES = 2000


def bootstrap_interval(values: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """The percentile interval of the mean of `values` (one per prompt), from `resamples` resamples."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to resample: an interval needs at least one prompt's score")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    low = means[min(resamples - 1, max(0, math.floor(tail * resamples)))]
    high = means[min(resamples - 1, max(0, math.ceil((1 - tail) * resamples) - 1))]
    return low, high


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], level: float = LEVEL,
                      resamples: int = RESAMPLES, seed: int = 0) -> dict[str, float]:  # fmt: skip
    """a - b over the prompts both were judged on (prompt id -> score): {"difference", "low", "high", "prompts"}.
    Prompts only one side has are an error: the comparison would then mix a difference of models with one of
    prompts."""
    if set(a) != set(b):
        raise ValueError(f"the two sides were judged on different prompts ({len(set(a) ^ set(b))} differ): "
                         "judge both models on the same prompts")  # fmt: skip
    keys = sorted(a)
    differences = [a[k] - b[k] for k in keys]
    low, high = bootstrap_interval(differences, level, resamples, seed)
    return {"difference": sum(differences) / len(differences), "low": low, "high": high, "prompts": len(keys)}


def per_prompt_means(ids: Sequence[str], scores: Sequence[float]) -> dict[str, float]:
    """Scores of answers (several may share a prompt id) -> each prompt's mean score."""
    sums: dict[str, list[float]] = {}
    for i, s in zip(ids, scores, strict=True):
        sums.setdefault(i, []).append(float(s))
    return {i: sum(v) / len(v) for i, v in sums.items()}


def describe(comparison: Mapping[str, float], digits: int = 3) -> str:
    """A comparison as "+0.052 [+0.021, +0.087] (above)": the difference, its interval, and whether the interval
    lies above zero, below it, or holds it (a tie)."""
    d, lo, hi = comparison["difference"], comparison["low"], comparison["high"]
    verdict = "above" if lo > 0 else "below" if hi < 0 else "a tie"
    return f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] ({verdict})"
