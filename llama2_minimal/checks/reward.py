"""Checkers for lesson 09 (reward modelling, §3.2.2-3.2.3): the one reward that RLHF optimises, built from the two
reward models by the paper's safety gate and whitened; and an experiment on what the gate does to the ranking of
answers to helpful prompts. References: llama2_minimal.train.reward's combined_reward, and
ranking_agreement_reference below."""

from __future__ import annotations

import math

import torch

from ..train.reward import SAFETY_GATE, combined_reward
from .core import make_checker, make_experiment

# --- 9.1 gated_reward ---------------------------------------------------------------------------------------


def _gate_cases():
    g = torch.Generator().manual_seed(91)
    edge = math.log(SAFETY_GATE / (1 - SAFETY_GATE))  # logit(0.15) = -1.7346
    return [
        ("4 responses to helpful prompts, safety scores on both sides of logit(0.15)",
         (torch.tensor([2.0, 0.5, -1.0, 3.0]), torch.tensor([edge + 0.05, edge - 0.05, 4.0, 0.5]),
          torch.tensor([False, False, False, False]))),
        ("6 responses, two to prompts tagged unsafe (one with a high safety score)",
         (torch.randn(6, generator=g), torch.tensor([3.0, -0.5, 0.2, -3.0, 1.0, 0.1]),
          torch.tensor([True, False, False, False, True, False]))),
        ("8 responses, raw scores between 0 and 1 (not probabilities: still logits)",
         (torch.rand(8, generator=g), torch.rand(8, generator=g), torch.zeros(8, dtype=torch.bool))),
        ("5 responses, large rewards",
         (5 * torch.randn(5, generator=g), 5 * torch.randn(5, generator=g), torch.tensor([0, 1, 0, 0, 1]).bool())),
    ]  # fmt: skip


def _whiten(raw):
    return (raw - raw.mean()) / torch.sqrt(raw.var(correction=0) + 1e-8)


def _gate_reversed(helpfulness, safety, unsafe):
    edge = math.log(SAFETY_GATE / (1 - SAFETY_GATE))
    return _whiten(torch.where(unsafe | (safety >= edge), safety, helpfulness))


def _gate_ignores_tag(helpfulness, safety, unsafe):
    return combined_reward(helpfulness, safety, torch.zeros_like(unsafe))


def _gate_on_raw_probability(helpfulness, safety, unsafe):
    return _whiten(torch.where(unsafe | (safety < SAFETY_GATE), safety, helpfulness))


def _gate_not_whitened(helpfulness, safety, unsafe):
    edge = math.log(SAFETY_GATE / (1 - SAFETY_GATE))
    return torch.where(unsafe | (safety < edge), safety, helpfulness)


def _gate_only_centred(helpfulness, safety, unsafe):
    raw = _gate_not_whitened(helpfulness, safety, unsafe)
    return raw - raw.mean()


def _gate_whitens_probabilities(helpfulness, safety, unsafe):
    return _whiten(torch.sigmoid(_gate_not_whitened(helpfulness, safety, unsafe)))


check_gated_reward = make_checker(
    "9.1 gated_reward",
    combined_reward,
    _gate_cases,
    [
        (_gate_reversed, "the gate is reversed: the safety score takes over where it is LOW (below logit(0.15)), "
                         "where the answer looks unsafe, and on prompts tagged unsafe."),  # fmt: skip
        (_gate_ignores_tag, "a prompt tagged unsafe always gets the safety reward, whatever its score."),
        (_gate_on_raw_probability, "the raw score is compared with 0.15 itself: the inputs are logits (their "
                                   "probability is sigmoid(x)): compare with logit(0.15) = log(0.15 / 0.85)."),
        (_gate_not_whitened, "the gated reward is returned raw: whiten it over the batch (minus the mean, over the "
                             "standard deviation)."),  # fmt: skip
        (_gate_only_centred, "the reward is centred but not scaled: divide by the batch's standard deviation."),
        (_gate_whitens_probabilities, "the probabilities are whitened: logit(sigmoid(x)) = x, so whiten the raw "
                                      "score itself."),  # fmt: skip
    ],
)

# --- 9.2 agreement_experiment: does the gate change how answers to helpful prompts are ranked? ---------------


def ranking_agreement_reference(rewards: dict, gold: torch.Tensor) -> dict:
    """rewards {name: (P, N)} of the same N answers to each of P prompts, gold (P, N) -> {name: agreement}: over
    every pair of answers to the same prompt that the judge scores differently, the share the reward orders the
    judge's way (a tie in reward counts one half), as a Python float (nan when the judge separates no pair)."""
    better = gold[:, :, None] > gold[:, None, :]  # (P, N, N): answer i scored above answer j by the judge
    out = {}
    for name, r in rewards.items():
        diff = r[:, :, None] - r[:, None, :]
        agree = (diff > 0).float() + 0.5 * (diff == 0).float()
        count = better.sum().item()
        out[name] = (agree * better).sum().item() / count if count else float("nan")
    return out


def _agreement_cases():
    g = torch.Generator().manual_seed(92)
    gold = torch.rand(5, 6, generator=g).round()
    gold[0] = torch.tensor([1.0, 0.5, 0.5, 0.0, 1.0, 0.0])
    informed = gold + 0.6 * torch.randn(5, 6, generator=g)
    noisy = torch.randn(5, 6, generator=g)
    tied = torch.zeros(5, 6)
    tied[:, :3] = 1.0  # many ties in reward
    return [
        ("two reward sets, 5 prompts, 6 answers", ({"informed": informed, "noisy": noisy}, gold)),
        ("a reward with ties", ({"tied": tied, "informed": informed}, gold)),
        ("answers on different scales for each prompt", ({"shifted": informed + 10 * torch.arange(5.0)[:, None]},
                                                          gold)),  # fmt: skip
    ]


def _agreement_counts_judge_ties(rewards, gold):
    out = {}
    for name, r in rewards.items():
        diff = r[:, :, None] - r[:, None, :]
        judged = gold[:, :, None] >= gold[:, None, :]
        off_diagonal = ~torch.eye(gold.shape[1], dtype=torch.bool)[None]
        mask = judged & off_diagonal
        out[name] = ((diff > 0).float() + 0.5 * (diff == 0).float())[mask].mean().item()
    return out


def _agreement_across_prompts(rewards, gold):
    flat_gold = gold.reshape(1, -1)
    return ranking_agreement_reference({n: r.reshape(1, -1) for n, r in rewards.items()}, flat_gold)


def _agreement_ties_count_fully(rewards, gold):
    better = gold[:, :, None] > gold[:, None, :]
    return {name: ((r[:, :, None] >= r[:, None, :]).float() * better).sum().item() / better.sum().item()
            for name, r in rewards.items()}  # fmt: skip


def _agreement_outcome(result: dict) -> tuple[str, str]:
    account = "of the pairs of answers to one helpful prompt that the judge scores differently, the share each " \
              "reward orders the judge's way: " + ", ".join(f"{name} {v:.3f}" for name, v in result.items())
    if abs(result["gated"] - result["helpfulness"]) < 0.005:
        return "same", account
    return max(("gated", "helpfulness"), key=result.get), account


check_agreement_experiment = make_experiment(
    "9.2 agreement_experiment",
    ranking_agreement_reference,
    _agreement_cases,
    [
        (_agreement_counts_judge_ties, "pairs the judge scores the same are counted: no order is right for them, so "
                                       "count only the pairs whose gold scores differ."),  # fmt: skip
        (_agreement_across_prompts, "answers to different prompts are compared: only two answers to the same "
                                    "prompt compete in best-of-K, and rewards of different prompts need not share "
                                    "a scale."),  # fmt: skip
        (_agreement_ties_count_fully, "a tie in reward is counted as agreement: it is a coin flip, count it one "
                                      "half."),  # fmt: skip
    ],
    choices={
        "gated": "the gated reward orders answers to helpful prompts the judge's way more often",
        "helpfulness": "the helpfulness reward model alone orders them the judge's way more often",
        "same": "the two agree with the judge equally often (within half a point)",
    },
    outcome=_agreement_outcome,
)

__all__ = ["check_agreement_experiment", "check_gated_reward", "ranking_agreement_reference"]
