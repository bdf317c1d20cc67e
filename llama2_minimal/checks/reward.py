"""Checkers for lesson 09 (reward modelling, §3.2.2): the binary ranking loss with a margin, and reading the
reward at each response's last token. References: llama2_minimal.train.reward's margin_ranking_loss and
last_token_values."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..train.reward import last_token_values, margin_ranking_loss
from .core import make_checker

# --- 9.1 margin_loss ----------------------------------------------------------------------------------------


def _loss_cases():
    g = torch.Generator().manual_seed(91)
    return [
        ("4 pairs, no margin", (torch.randn(4, generator=g), torch.randn(4, generator=g), torch.zeros(4))),
        ("6 pairs, the small margins (1, 2/3, 1/3, 0)",
         (torch.randn(6, generator=g), torch.randn(6, generator=g), torch.tensor([1, 2 / 3, 1 / 3, 0, 1, 0]))),
        ("5 pairs, the large margins, rewards far apart",
         (3 * torch.randn(5, generator=g), 3 * torch.randn(5, generator=g), torch.tensor([3.0, 2, 1, 0, 3]))),
        # A confident reward model: gaps of about 100 to 200, where sigmoid(x) rounds to 0 in float32 and a naive
        # -log(sigmoid(x)) is infinite (and to 1 for large positive gaps, where it is exactly 0).
        ("4 pairs whose reward gaps are huge (about -200 to +150), the small margins",
         (torch.tensor([-120.0, 90.0, -60.0, 150.0]), torch.tensor([80.0, -20.0, 45.0, 0.0]),
          torch.tensor([1.0, 2 / 3, 1 / 3, 0.0]))),
    ]  # fmt: skip


def _loss_margin_added(chosen, rejected, margin):
    return -F.logsigmoid(chosen - rejected + margin).mean()


def _loss_reversed(chosen, rejected, margin):
    return -F.logsigmoid(rejected - chosen - margin).mean()


def _loss_summed(chosen, rejected, margin):
    return -F.logsigmoid(chosen - rejected - margin).sum()


def _loss_unstable(chosen, rejected, margin):
    return -torch.log(torch.sigmoid(chosen - rejected) - margin).mean()


def _loss_naive_log_sigmoid(chosen, rejected, margin):
    return -torch.log(torch.sigmoid(chosen - rejected - margin)).mean()


check_margin_loss = make_checker(
    "9.1 margin_loss",
    margin_ranking_loss,
    _loss_cases,
    [
        (
            _loss_margin_added,
            "the margin is added: subtract it, r_chosen - r_rejected - m, so a clear preference asks for a larger gap.",
        ),  # fmt: skip
        (_loss_reversed, "chosen and rejected are swapped: the loss should fall as r_chosen rises above r_rejected."),
        (_loss_summed, "the loss is summed over pairs: take the mean, so the scale does not depend on the batch."),
        (_loss_unstable, "the margin is subtracted after the sigmoid: it belongs inside, sigmoid(r_c - r_r - m)."),
        (
            _loss_naive_log_sigmoid,
            "log(sigmoid(x)) overflows for a large reward gap: sigmoid(-200) rounds to 0 in float32 and its log is "
            "-inf. Use F.logsigmoid(x), which computes the same stably (log sigmoid(x) = -softplus(-x)).",
        ),
    ],
)

# --- 9.2 last_token_reward ----------------------------------------------------------------------------------


def _values_cases():
    g = torch.Generator().manual_seed(92)
    return [
        ("3 sequences of lengths 5, 2 and 7, padded to 7", (torch.randn(3, 7, generator=g), torch.tensor([5, 2, 7]))),
        ("one sequence with no padding", (torch.randn(1, 4, generator=g), torch.tensor([4]))),
        ("4 sequences, one of a single token", (torch.randn(4, 6, generator=g), torch.tensor([1, 6, 3, 3]))),
    ]


def _values_last_column(values, lengths):
    return values[:, -1]


def _values_off_by_one(values, lengths):
    return values[torch.arange(values.shape[0]), (lengths % values.shape[1])]


def _values_mean(values, lengths):
    keep = torch.arange(values.shape[1])[None, :] < lengths[:, None]
    return (values * keep).sum(1) / lengths


check_last_token_reward = make_checker(
    "9.2 last_token_reward",
    last_token_values,
    _values_cases,
    [
        (
            _values_last_column,
            "the last column is read: with right padding it is a pad token for shorter sequences; "
            "read position lengths - 1 of each row.",
        ),  # fmt: skip
        (_values_off_by_one, "the position is off by one: a sequence of length n ends at index n - 1."),
        (_values_mean, "the values are averaged over the response: the paper reads one scalar at the last token."),
    ],
)
