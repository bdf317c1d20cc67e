"""Checkers for lesson 06 (pretraining, §2.2 and §4.1): the warmup + cosine learning-rate schedule, packing
documents into fixed-length rows with BOS/EOS, and scrubbing private data from the corpus."""

from __future__ import annotations

import math
import re

import torch

from ..data import REDACTED, pack, scrub_private
from ..train.loop import TrainConfig, lr_at
from ..world.entities import EMAIL, PHONE
from .core import make_checker

# --- 6.1 lr_schedule ------------------------------------------------------------------------------------------


def lr_schedule_reference(step: int, max_lr: float, warmup: int, total_steps: int, min_ratio: float) -> float:
    """The package's schedule (llama2_minimal.train.loop.lr_at) with the learner's signature."""
    return lr_at(step, TrainConfig(steps=total_steps, lr=max_lr, warmup=warmup, min_lr_ratio=min_ratio))


PAPER = (3e-4, 2000, 500_000, 0.1)  # peak 3e-4, 2000 warmup steps, 2T tokens / 4M tokens per step, floor 10%


def _lr_cases():
    return [
        ("step 0 of the paper's schedule (peak 3e-4, 2000 warmup steps, 500,000 steps, floor 10%)", (0, *PAPER)),
        ("the last step (499,999) of the paper's schedule", (499_999, *PAPER)),
        ("step 250,000 of the paper's schedule, half-way through", (250_000, *PAPER)),
        ("step 1999, the last warmup step: the peak", (1999, *PAPER)),
        ("step 2000, the first step after warmup", (2000, *PAPER)),
        ("step 19, the last of a short run (5 warmup steps of 20, peak 1e-2, floor 20%)", (19, 1e-2, 5, 20, 0.2)),
        ("step 7 of the same short run", (7, 1e-2, 5, 20, 0.2)),
        ("step 0 without warmup (warmup=0): the peak at once", (0, 3e-3, 0, 300, 0.1)),
        ("step 150 without warmup", (150, 3e-3, 0, 300, 0.1)),
    ]


def _cosine(step, max_lr, start, span, floor_ratio):
    progress = min(1.0, (step - start) / max(1, span))
    floor = max_lr * floor_ratio
    return floor + 0.5 * (max_lr - floor) * (1 + math.cos(math.pi * progress))


def _lr_warmup_from_zero(step, max_lr, warmup, total_steps, min_ratio):
    if step < warmup:
        return max_lr * step / warmup
    return _cosine(step, max_lr, warmup, total_steps - warmup - 1, min_ratio)


def _lr_to_zero(step, max_lr, warmup, total_steps, min_ratio):
    if step < warmup:
        return max_lr * (step + 1) / warmup
    return _cosine(step, max_lr, warmup, total_steps - warmup - 1, 0.0)


def _lr_cosine_over_whole_run(step, max_lr, warmup, total_steps, min_ratio):
    if step < warmup:
        return max_lr * (step + 1) / warmup
    return _cosine(step, max_lr, 0, total_steps - 1, min_ratio)


def _lr_no_warmup(step, max_lr, warmup, total_steps, min_ratio):
    return _cosine(step, max_lr, 0, total_steps - 1, min_ratio)


def _lr_span_off_by_one(step, max_lr, warmup, total_steps, min_ratio):
    if step < warmup:
        return max_lr * (step + 1) / warmup
    return _cosine(step, max_lr, warmup, total_steps - warmup, min_ratio)


check_lr_schedule = make_checker(
    "6.1 lr_schedule",
    lr_schedule_reference,
    _lr_cases,
    [
        (
            _lr_warmup_from_zero,
            "warmup is off by one: step 0 must already train, with max_lr * (step + 1) / warmup, so that "
            "the last warmup step (warmup - 1) reaches the peak.",
        ),
        (
            _lr_to_zero,
            "the cosine decays to 0: Llama 2 decays to 10% of the peak (§2.2), "
            "min_lr = min_ratio * max_lr, lr = min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2.",
        ),
        (
            _lr_cosine_over_whole_run,
            "the cosine's progress counts from step 0: it starts after warmup, "
            "progress = (step - warmup) / (total_steps - warmup - 1).",
        ),
        (_lr_no_warmup, "there is no warmup: the first `warmup` steps rise linearly to the peak."),
        (
            _lr_span_off_by_one,
            "the decay ends one step too late: the last step (total_steps - 1) must reach min_lr exactly, "
            "so divide by total_steps - warmup - 1.",
        ),
    ],
    atol=0.0,
    rtol=1e-9,
)

# --- 6.2 pack -------------------------------------------------------------------------------------------------


def _pack_cases():
    g = torch.Generator().manual_seed(6)

    def documents(n, low, high):
        lengths = torch.randint(low, high, (n,), generator=g).tolist()
        return [torch.randint(3, 500, (k,), generator=g).tolist() for k in lengths]

    return [
        ("4 short documents, seq_len 3 (BOS 1, EOS 2)", ([[5, 6], [7], [8, 9, 10], [11]], 3, 1, 2)),
        ("one long document that runs over several rows, seq_len 4", ([list(range(10, 31))], 4, 1, 2)),
        ("30 random documents of 1-40 tokens, seq_len 16", (documents(30, 1, 40), 16, 1, 2)),
        ("documents that fill the rows exactly (nothing left over), seq_len 3", ([[5, 6], [7, 8]], 3, 1, 2)),
        ("other special ids (BOS 7, EOS 9), seq_len 1", ([[20, 21, 22], [23]], 1, 7, 9)),
    ]


def _stream(token_lists, bos_id, eos_id, bos=True, eos=True):
    return [t for ids in token_lists for t in ([bos_id] if bos else []) + list(ids) + ([eos_id] if eos else [])]


def _cut(stream, width, keep_rest=False):
    rows = len(stream) // width
    if keep_rest and len(stream) % width:
        stream = stream + [0] * (width - len(stream) % width)
        rows += 1
    return torch.tensor(stream[: rows * width], dtype=torch.long).view(rows, width)


check_pack = make_checker(
    "6.2 pack",
    pack,
    _pack_cases,
    [
        (
            lambda docs, seq_len, bos, eos: _cut(_stream(docs, bos, eos, bos=False), seq_len + 1),
            "the documents have no BOS: each one starts with bos_id, as every Llama sequence does.",
        ),
        (
            lambda docs, seq_len, bos, eos: _cut(_stream(docs, bos, eos, eos=False), seq_len + 1),
            "the documents have no EOS: each one ends with eos_id, so the model learns where a document stops.",
        ),
        (
            lambda docs, seq_len, bos, eos: _cut(_stream(docs, bos, eos), seq_len + 1, keep_rest=True),
            "the incomplete last row is kept (padded): drop it, len(stream) // (seq_len + 1) rows only.",
        ),
        (
            lambda docs, seq_len, bos, eos: _cut(_stream(docs, bos, eos), seq_len),
            "the rows have seq_len tokens: they need seq_len + 1, since the inputs are a row's first seq_len "
            "tokens and the targets its last seq_len.",
        ),
    ],
)

# --- 6.3 scrub_private ----------------------------------------------------------------------------------------

DIRECTORY = (
    "Directory of Loan.\nRuna Jansen's phone number is 415-2000 and e-mail address is runa.jansen@owl.example.\n"
    "12 - 3 = 9."
)


def _scrub_cases():
    return [
        ("a directory page with a phone number, an e-mail address and a difference", (DIRECTORY,)),
        (
            "two people on one line",
            ("You can reach Mira Holt at 312-4578 or mira.holt@post.example, and Bram Lind at 990-1234.",),
        ),
        ("an arithmetic page (nothing private)", ("38 - 31 = 7.\n35 + 46 = 81.\n50 - 0 = 50.",)),
        ("an encyclopedia page with a year (nothing private)", ("Lysvaess was founded in 1103. 1103 - 100 = 1003.",)),
        (
            "several directory lines",
            (
                "Directory of Vaith.\nIvo Krol, phone 201-3344, e-mail ivo.krol@mail.example.\n"
                "Ada Ek's phone number is 777-0001 and e-mail address is ada.ek@post.example.",
            ),
        ),  # fmt: skip
        ("an empty text", ("",)),
    ]


def _scrub_phones_only(text):
    text, phones = PHONE.subn(REDACTED, text)
    return text, phones, 0


def _scrub_emails_only(text):
    text, emails = EMAIL.subn(REDACTED, text)
    return text, 0, emails


def _scrub_whole_lines(text):
    kept, phones, emails = [], 0, 0
    for line in text.split("\n"):
        p, e = len(PHONE.findall(line)), len(EMAIL.findall(line))
        phones, emails = phones + p, emails + e
        if not (p or e):
            kept.append(line)
    return "\n".join(kept), phones, emails


GREEDY_PHONE = re.compile(r"\d+\s*-\s*\d+")


def _scrub_greedy(text):
    text, emails = EMAIL.subn(REDACTED, text)
    text, phones = GREEDY_PHONE.subn(REDACTED, text)
    return text, phones, emails


check_scrub_private = make_checker(
    "6.3 scrub_private",
    scrub_private,
    _scrub_cases,
    [
        (_scrub_phones_only, "only phone numbers are scrubbed: replace e-mail addresses (name@host.example) too."),
        (_scrub_emails_only, "only e-mail addresses are scrubbed: replace phone numbers (ddd-dddd) too."),
        (
            _scrub_whole_lines,
            "whole lines are removed: replace only the private datum with REDACTED and keep the rest of the "
            "text (the name and the sentence are public).",
        ),
        (
            _scrub_greedy,
            "the phone pattern also matches arithmetic such as '12 - 3': a phone number is exactly 3 digits, a "
            "dash and 4 digits, with no spaces, between word boundaries: r'\\b\\d{3}-\\d{4}\\b'.",
        ),
    ],
)

__all__ = ["check_lr_schedule", "check_pack", "check_scrub_private", "lr_schedule_reference"]
