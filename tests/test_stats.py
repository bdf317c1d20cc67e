"""The bootstrap intervals of the course's comparisons (llama2_minimal/stats.py)."""

import random
import statistics

import pytest

from llama2_minimal.stats import bootstrap_interval, describe, paired_difference, per_prompt_means


def test_the_interval_has_the_width_of_the_normal_approximation_and_holds_the_mean():
    rng = random.Random(1)
    values = [rng.gauss(0.3, 1.0) for _ in range(400)]
    low, high = bootstrap_interval(values, seed=0)
    mean, half = statistics.fmean(values), 1.96 * statistics.stdev(values) / len(values) ** 0.5
    assert low < mean < high
    assert (high - low) == pytest.approx(2 * half, rel=0.15)  # the textbook interval, within resampling noise
    assert low < 0.3 < high  # the mean the values were drawn around
    assert bootstrap_interval([0.5] * 30) == (0.5, 0.5)  # no spread, no width
    narrow = bootstrap_interval(values, level=0.5, seed=0)
    assert low < narrow[0] < narrow[1] < high


def test_a_paired_difference_is_taken_prompt_by_prompt():
    a = {f"p{i}": 0.5 + 0.1 * (i % 3) for i in range(60)}
    better = {k: v + 0.2 for k, v in a.items()}
    row = paired_difference(better, a)
    assert row["difference"] == pytest.approx(0.2) and row["prompts"] == 60
    assert row["low"] == pytest.approx(0.2) and row["high"] == pytest.approx(0.2)  # the same gain on every prompt
    rng = random.Random(0)
    noisy = {k: v + rng.choice([-0.3, 0.3]) for k, v in a.items()}
    tie = paired_difference(noisy, a)
    assert tie["low"] < 0 < tie["high"] and describe(tie).endswith("(a tie)")
    assert describe(row) == "+0.200 [+0.200, +0.200] (above)"
    assert describe(paired_difference(a, better)).endswith("(below)")
    with pytest.raises(ValueError, match="different prompts"):
        paired_difference(a, {**a, "extra": 1.0})
    with pytest.raises(ValueError, match="at least one prompt"):
        bootstrap_interval([])


def test_several_answers_to_one_prompt_are_averaged_first():
    assert per_prompt_means(["a", "b", "a", "a"], [1.0, 0.0, 0.0, 0.5]) == {"a": 0.5, "b": 0.0}
    with pytest.raises(ValueError):
        per_prompt_means(["a"], [1.0, 2.0])
