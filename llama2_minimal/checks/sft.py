"""Checkers for lesson 08 (supervised fine-tuning, §3.1): the answer-only mask of a dialog in Meta's chat format,
and the shifted targets that put the loss on answer tokens only.

The references are llama2_minimal.data's: `sft_example` builds the mask from encode_dialog_turns, and pack_sft
shifts it so that target j (token j + 1) is learned only when token j + 1 is an answer token.
"""

from __future__ import annotations

import torch

from ..data import IGNORE
from .core import make_checker

# --- 8.1 answer_mask ----------------------------------------------------------------------------------------


def answer_mask(turns: list[tuple[list[int], list[int]]]) -> tuple[list[int], list[int]]:
    """turns: (prompt ids, answer ids) of each completed turn, the answer's ids ending with EOS -> (ids, mask)."""
    ids, mask = [], []
    for prompt, answer in turns:
        ids += prompt + answer
        mask += [0] * len(prompt) + [1] * len(answer)
    return ids, mask


def _turns_cases():
    g = torch.Generator().manual_seed(8)

    def ids(n, eos=False):
        body = torch.randint(3, 90, (n,), generator=g).tolist()
        return [1, *body] if not eos else [*body, 2]

    return [
        ("one turn: prompt of 6 ids, answer of 4 ids with its EOS", ([(ids(5), ids(3, eos=True))],)),
        ("two turns", ([(ids(7), ids(4, eos=True)), (ids(6), ids(2, eos=True))],)),
        (
            "three turns, a one-token answer (only EOS)",
            ([(ids(3), [2]), (ids(4), ids(5, eos=True)), (ids(2), ids(1, eos=True))],),
        ),  # fmt: skip
    ]


def _mask_without_eos(turns):
    ids, mask = answer_mask(turns)
    return ids, [0 if i == 2 else m for i, m in zip(ids, mask)]


def _mask_first_turn_only(turns):
    ids, mask = answer_mask(turns[:1])
    for prompt, answer in turns[1:]:
        ids += prompt + answer
        mask += [0] * (len(prompt) + len(answer))
    return ids, mask


def _mask_on_prompts(turns):
    ids, mask = answer_mask(turns)
    return ids, [1 - m for m in mask]


check_answer_mask = make_checker(
    "8.1 answer_mask",
    answer_mask,
    _turns_cases,
    [
        (_mask_without_eos, "the answers' EOS is not learned: mark it 1 too, or the model never learns to stop."),
        (_mask_first_turn_only, "only the first turn's answer is marked: mark every assistant answer of the dialog."),
        (_mask_on_prompts, "the mask is inverted: 1 on the answers (what the model must learn), 0 on the prompts."),
    ],
)

# --- 8.2 sft_targets ---------------------------------------------------------------------------------------


def sft_targets(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, L) and mask (B, L) (1 on answer tokens) -> inputs (B, L-1), targets (B, L-1) where a target that
    is not an answer token is IGNORE (-100)."""
    return ids[:, :-1], ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE)


def _targets_cases():
    g = torch.Generator().manual_seed(9)
    out = []
    for description, (b, length) in (("one row of 12 tokens", (1, 12)), ("3 rows of 20 tokens", (3, 20))):
        ids = torch.randint(3, 90, (b, length), generator=g)
        mask = (torch.rand(b, length, generator=g) > 0.5).long()
        mask[:, 0] = 0  # a row starts with BOS, never an answer token
        out.append((description, (ids, mask)))
    return out


def _targets_mask_not_shifted(ids, mask):
    return ids[:, :-1], ids[:, 1:].masked_fill(mask[:, :-1] == 0, IGNORE)


def _targets_not_shifted(ids, mask):
    return ids[:, :-1], ids[:, :-1].masked_fill(mask[:, :-1] == 0, IGNORE)


def _targets_zero_not_ignore(ids, mask):
    return ids[:, :-1], ids[:, 1:].masked_fill(mask[:, 1:] == 0, 0)


check_sft_targets = make_checker(
    "8.2 sft_targets",
    sft_targets,
    _targets_cases,
    [
        (
            _targets_mask_not_shifted,
            "the mask is not shifted with the targets: target j is token j + 1, so it is "
            "learned when mask[j + 1] is 1 (use mask[:, 1:]).",
        ),  # fmt: skip
        (
            _targets_not_shifted,
            "the targets are not shifted: the model at position j predicts token j + 1, so the targets are ids[:, 1:].",
        ),  # fmt: skip
        (
            _targets_zero_not_ignore,
            "masked targets are set to 0, a real token id: set them to IGNORE (-100), the index cross_entropy skips.",
        ),  # fmt: skip
    ],
)
