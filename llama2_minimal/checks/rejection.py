"""Checkers for lesson 10 (rejection sampling, §3.2.3).

The lesson's own computations (best-of-k among the first k samples, Fig 7's max and median) are kept here as
references the lesson checks itself against. The exercises go further: 10.1 measures best-of-k as its expected
value over disjoint groups of samples, for the reward model's pick and the judge's; 10.2 is an experiment against the
one-sample baseline: which reward model's selection gains more over one sample."""

from __future__ import annotations

import torch

from ..train.rejection import best_of_k_per_prompt
from .core import make_checker, make_experiment

# --- the lesson's references ------------------------------------------------------------------------------


def best_of_k(rewards: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards (P, K_max) of K_max samples per prompt -> (index (P,), reward (P,)) of the best among the first k."""
    best, index = rewards[:, :k].max(dim=1)
    return index, best


def max_and_median(rewards: torch.Tensor, k: int) -> tuple[float, float]:
    """rewards (P, K_max) -> (mean over prompts of the max, mean over prompts of the median) of the first k; the
    median of an even number of samples is the mean of the two middle ones (torch.quantile(x, 0.5))."""
    first = rewards[:, :k]
    return first.max(dim=1).values.mean().item(), first.quantile(0.5, dim=1).mean().item()


def best_of_k_groups(rewards: torch.Tensor, gold: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards, gold (P, N) of N samples per prompt -> (pick (P,), oracle (P,)): over the N // k disjoint groups of
    k consecutive samples (the last N % k samples make no group), the mean gold score of the reward model's pick
    (the highest reward of the group) and the mean of the group's best gold score: the package's
    train.rejection.best_of_k_per_prompt, on tensors."""
    row = best_of_k_per_prompt(rewards.tolist(), gold.tolist(), k)
    return torch.tensor(row["pick"], dtype=gold.dtype), torch.tensor(row["oracle"], dtype=gold.dtype)


def _groups_cases():
    g = torch.Generator().manual_seed(103)

    def draw(p, n):
        return torch.randn(p, n, generator=g), torch.rand(p, n, generator=g).round()  # gold of 0 or 1, as a judge's

    return [
        ("4 prompts, 8 samples, k = 2", (*draw(4, 8), 2)),
        ("3 prompts, 10 samples, k = 4: two groups, the last 2 samples unused", (*draw(3, 10), 4)),
        ("5 prompts, 6 samples, k = 1: each sample is its own group", (*draw(5, 6), 1)),
        ("2 prompts, 16 samples, k = 16: one group", (*draw(2, 16), 16)),
    ]


def _groups_first_k(rewards, gold, k):
    index = rewards[:, :k].argmax(1, keepdim=True)
    return gold.gather(1, index).squeeze(1), gold[:, :k].max(1).values


def _groups_pick_by_gold(rewards, gold, k):
    return best_of_k_groups(gold, gold, k)


def _groups_overlapping(rewards, gold, k):
    r, g = rewards.unfold(1, k, 1), gold.unfold(1, k, 1)  # every window of k consecutive samples
    pick = g.gather(-1, r.argmax(-1, keepdim=True)).squeeze(-1).mean(-1)
    return pick, g.max(-1).values.mean(-1)


def _groups_strided(rewards, gold, k):
    groups = rewards.shape[1] // k
    order = torch.arange(groups * k).reshape(k, groups).T.reshape(-1)  # group j: samples j, j + G, j + 2G ...
    return best_of_k_groups(rewards[:, order], gold[:, order], k)


def _groups_reward_not_gold(rewards, gold, k):
    groups = rewards.shape[1] // k
    r = rewards[:, : groups * k].reshape(rewards.shape[0], groups, k)
    g = gold[:, : groups * k].reshape(gold.shape[0], groups, k)
    return r.max(-1).values.mean(-1), g.max(-1).values.mean(-1)


check_best_of_k_groups = make_checker(
    "10.1 best_of_k_groups",
    best_of_k_groups,
    _groups_cases,
    [
        (_groups_first_k, "only the first k samples are used: average best-of-k over all N // k groups of k."),
        (_groups_pick_by_gold, "the pick is made by the gold score: the reward model picks (highest reward), the "
                               "judge only scores its pick."),  # fmt: skip
        (_groups_overlapping, "the groups overlap (a sliding window): split the samples into disjoint groups."),
        (_groups_strided, "the groups take every G-th sample: each group is k consecutive samples."),
        (_groups_reward_not_gold, "the pick's reward is returned: return the gold score of the picked sample."),
    ],
)

# --- 10.2 selection_experiment: what does the selection gain over one sample? -------------------------------


def selection_gains_reference(rewards: dict, gold: torch.Tensor, k: int) -> dict:
    """rewards {name: (P, N)} of several reward models on the same samples, gold (P, N) -> {name: (gain, ceiling)}:
    the mean over prompts of the gold score of that reward model's best-of-k pick minus the mean gold score of one
    sample (the baseline), and the same for the judge's own pick (the ceiling), as Python floats."""
    one = gold.mean().item()
    out = {}
    for name, r in rewards.items():
        pick, oracle = best_of_k_groups(r, gold, k)
        out[name] = (pick.mean().item() - one, oracle.mean().item() - one)
    return out


def _selection_cases():
    g = torch.Generator().manual_seed(104)
    gold = torch.rand(6, 8, generator=g).round()
    informed = gold + 0.8 * torch.randn(6, 8, generator=g)  # a reward that tracks the judge
    contrary = -gold + 0.8 * torch.randn(6, 8, generator=g)  # one that prefers what the judge rejects
    return [
        ("two reward models, 6 prompts, 8 samples, k = 4", ({"informed": informed, "contrary": contrary}, gold, 4)),
        ("one reward model, k = 2", ({"informed": informed}, gold, 2)),
        ("k = 8: one group", ({"contrary": contrary, "informed": informed}, gold, 8)),
    ]


def _selection_no_control(rewards, gold, k):
    out = {}
    for name, r in rewards.items():
        pick, oracle = best_of_k_groups(r, gold, k)
        out[name] = (pick.mean().item(), oracle.mean().item())
    return out


def _selection_first_sample(rewards, gold, k):
    one = gold[:, 0].mean().item()
    return {name: (v[0] + gold.mean().item() - one, v[1] + gold.mean().item() - one)
            for name, v in selection_gains_reference(rewards, gold, k).items()}  # fmt: skip


def _selection_against_oracle(rewards, gold, k):
    out = {}
    for name, r in rewards.items():
        pick, oracle = best_of_k_groups(r, gold, k)
        out[name] = (pick.mean().item() - oracle.mean().item(), oracle.mean().item() - gold.mean().item())
    return out


def _selection_outcome(result: dict) -> tuple[str, str]:
    gains = {name: gain for name, (gain, _) in result.items()}
    account = "the gold of the best-of-k pick, minus one sample's: " + ", ".join(
        f"{name} {gain:+.3f} (the judge's own pick {result[name][1]:+.3f})" for name, gain in gains.items())
    return max(gains, key=gains.get), account


check_selection_experiment = make_experiment(
    "10.2 selection_experiment",
    selection_gains_reference,
    _selection_cases,
    [
        (_selection_no_control, "the gold of the pick is returned as it is: subtract the gold of one sample (the "
                                "mean over every sample), the baseline that says what selection gains."),  # fmt: skip
        (_selection_first_sample, "the baseline is the first sample only: one sample's expected gold is the mean "
                                  "over all samples."),  # fmt: skip
        (_selection_against_oracle, "the gain is measured against the judge's pick: measure both against one "
                                    "sample."),  # fmt: skip
    ],
    choices={
        "reads": "the reward model that reads the SFT model's predictions gains more over one sample",
        "head": "the paper's design, the head alone, gains more over one sample",
    },
    outcome=_selection_outcome,
)

__all__ = [
    "best_of_k",
    "best_of_k_groups",
    "check_best_of_k_groups",
    "check_selection_experiment",
    "max_and_median",
    "selection_gains_reference",
]
