"""Checkers for lesson 06 (pretraining, §2.2 and §4.1).

The exercises:
6.1 document_mask(inputs, bos_id): the attention mask that keeps packed documents apart (causal, and never across a
    BOS), what Llama 2's packed pretraining does not do and later models (Llama 3) do.
6.2 dedup_lines(texts): line-level deduplication, as Llama 1's CommonCrawl pipeline (CCNet) does it.
6.3 an experiment: predict, then measure, how the loss curve of a tiny model moves with a tenfold learning rate.

The checkers of the lesson's in-the-open builds stay for a learner who writes them again: lr_schedule (the warmup
and cosine schedule), pack (documents into rows with BOS and EOS) and scrub_private (phone numbers and e-mails).
"""

from __future__ import annotations

import math
import re

import torch

from ..data import REDACTED, pack, scrub_private
from ..model import ModelArgs, Transformer
from ..train.loop import TrainConfig, lr_at, train
from ..train.pretrain import RowBatches
from ..world.entities import EMAIL, PHONE
from .core import make_checker, make_experiment

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


# --- 6.1 document_mask: attention that never crosses a BOS ------------------------------------------------------


def document_mask_reference(inputs: torch.Tensor, bos_id: int) -> torch.Tensor:
    """(B, 1, S, S) boolean, True = may attend: token i of a packed row attends to token j when j <= i and both
    belong to the same document, a document starting at each BOS (the tokens before the row's first BOS are the
    end of a document from the previous row). The head axis is 1, so the mask broadcasts over the heads of
    scaled_dot_product_attention and of the package's Transformer(tokens, mask=...)."""
    document = torch.cumsum(inputs == bos_id, dim=1)  # (B, S): how many documents have started up to here
    same = document[:, :, None] == document[:, None, :]
    seqlen = inputs.shape[1]
    causal = torch.ones(seqlen, seqlen, dtype=torch.bool, device=inputs.device).tril()
    return (same & causal)[:, None]


def _mask_cases():
    rows = pack([[5, 6], [7], [8, 9, 10], [11], [12, 13, 14, 15], [16]], seq_len=5, bos_id=1, eos_id=2)
    g = torch.Generator().manual_seed(61)
    lengths = torch.randint(1, 9, (12,), generator=g).tolist()
    random_docs = [torch.randint(3, 50, (n,), generator=g).tolist() for n in lengths]
    return [
        ("3 packed rows of 6 tokens (BOS 1, EOS 2), as inputs row[:-1]", (rows[:, :-1], 1)),
        ("a row that starts in the middle of a document", (torch.tensor([[8, 9, 2, 1, 11, 2, 1, 12]]), 1)),
        ("a row that starts with BOS", (torch.tensor([[1, 5, 6, 2, 1, 7, 2]]), 1)),
        ("a row inside one long document (no BOS)", (torch.tensor([[4, 5, 6, 7, 8]]), 1)),
        ("two BOS in a row (an empty-looking document)", (torch.tensor([[3, 1, 1, 4, 5]]), 1)),
        ("random documents packed into rows of 16, another BOS id (7) and EOS id (9)",
         (pack(random_docs, 16, bos_id=7, eos_id=9)[:, :-1], 7)),
    ]  # fmt: skip


def _dm_causal(inputs, bos_id):
    seqlen = inputs.shape[1]
    causal = torch.ones(seqlen, seqlen, dtype=torch.bool).tril()
    return causal.expand(inputs.shape[0], 1, seqlen, seqlen).clone()


def _dm_bos_in_previous(inputs, bos_id):
    document = torch.cumsum(inputs == bos_id, dim=1) - (inputs == bos_id).long()  # BOS counted with the document before
    same = document[:, :, None] == document[:, None, :]
    return (same & torch.ones(inputs.shape[1], inputs.shape[1], dtype=torch.bool).tril())[:, None]


def _dm_not_causal(inputs, bos_id):
    document = torch.cumsum(inputs == bos_id, dim=1)
    return (document[:, :, None] == document[:, None, :])[:, None]


def _dm_no_head_axis(inputs, bos_id):
    return document_mask_reference(inputs, bos_id)[:, 0]


def _dm_first_row(inputs, bos_id):
    return document_mask_reference(inputs[:1].expand_as(inputs), bos_id)


def _dm_strict(inputs, bos_id):
    document = torch.cumsum(inputs == bos_id, dim=1)
    same = document[:, :, None] == document[:, None, :]
    return (same & torch.ones(inputs.shape[1], inputs.shape[1], dtype=torch.bool).tril(-1))[:, None]


check_document_mask = make_checker(
    "6.1 document_mask",
    document_mask_reference,
    _mask_cases,
    [
        (
            _dm_causal,
            "this is the plain causal mask: tokens still attend across a BOS to the documents before; allow only "
            "pairs of the same document.",
        ),
        (
            _dm_bos_in_previous,
            "a BOS is counted with the document before it: the BOS starts its document (it is the first token the "
            "new document's tokens see).",
        ),
        (_dm_not_causal, "the mask is not causal any more: within a document token i still sees only j <= i."),
        (
            _dm_no_head_axis,
            "the mask is (B, S, S): give it a head axis, (B, 1, S, S), or attention would broadcast the batch over "
            "the heads.",
        ),
        (_dm_first_row, "every row got the first row's documents: find the documents of each row on its own."),
        (_dm_strict, "the diagonal is masked: a token attends to itself (j <= i, not j < i)."),
    ],
    atol=0.0,
    rtol=0.0,
)


# --- 6.2 dedup_lines: line-level deduplication (CCNet, Llama 1's CommonCrawl pipeline) ---------------------------


def dedup_lines_reference(texts: list[str]) -> tuple[list[str], int]:
    """Documents in order, each line kept only the first time the corpus shows it (exact match, whatever the
    document); blank lines are always kept (they are layout, not content); a document left without a non-blank line
    is dropped. Returns (the documents left, the number of lines removed)."""
    seen: set[str] = set()
    kept, removed = [], 0
    for text in texts:
        lines = []
        for line in text.split("\n"):
            if line.strip() and line in seen:
                removed += 1
                continue
            seen.add(line)
            lines.append(line)
        if any(line.strip() for line in lines):
            kept.append("\n".join(lines))
    return kept, removed


def _dedup_cases():
    return [
        ("a page copied twice, with a line repeated inside it", (["The end.\nThe end.\nOnce upon a time."] * 2,)),
        ("two directory pages that share a line", (["Directory of Loan.\nAda Ek, phone 201-3344.",
                                                     "Directory of Vaith.\nAda Ek, phone 201-3344.\nIvo Krol, phone "
                                                     "777-0001."],)),
        ("a page whose lines were all seen before is dropped", (["12 + 3 = 15.\n4 - 1 = 3.", "4 - 1 = 3.\n12 + 3 = 15.",
                                                                  "7 + 1 = 8."],)),
        ("a line repeated inside one page", (["The end.\nThe end.\nOnce upon a time."],)),
        ("blank lines are layout: kept, never counted", (["Title\n\nFirst line.", "\nFirst line.\n\nSecond."],)),
        ("no duplicates at all", (["a\nb", "c", "d\ne"],)),
        ("lines that differ only in case or a trailing space are different lines",
         (["Hello there.", "hello there.", "Hello there. "],)),
        ("an empty corpus", ([],)),
    ]  # fmt: skip


def _dl_documents(texts):
    out, seen = [], set()
    for t in texts:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out, len(texts) - len(out)


def _dl_within_document(texts):
    kept, removed = [], 0
    for text in texts:
        seen, lines = set(), []
        for line in text.split("\n"):
            if line.strip() and line in seen:
                removed += 1
                continue
            seen.add(line)
            lines.append(line)
        kept.append("\n".join(lines))
    return kept, removed


def _dl_keep_empty_documents(texts):
    seen, kept, removed = set(), [], 0
    for text in texts:
        lines = []
        for line in text.split("\n"):
            if line.strip() and line in seen:
                removed += 1
                continue
            seen.add(line)
            lines.append(line)
        kept.append("\n".join(lines))
    return kept, removed


def _dl_blank_lines(texts):
    seen, kept, removed = set(), [], 0
    for text in texts:
        lines = []
        for line in text.split("\n"):
            if line in seen:
                removed += 1
                continue
            seen.add(line)
            lines.append(line)
        if any(line.strip() for line in lines):
            kept.append("\n".join(lines))
    return kept, removed


def _dl_normalised(texts):
    seen, kept, removed = set(), [], 0
    for text in texts:
        lines = []
        for line in text.split("\n"):
            key = line.strip().lower()
            if key and key in seen:
                removed += 1
                continue
            seen.add(key)
            lines.append(line)
        if any(line.strip() for line in lines):
            kept.append("\n".join(lines))
    return kept, removed


def _dl_count_documents(texts):
    kept, _ = dedup_lines_reference(texts)
    return kept, len(texts) - len(kept)


check_dedup_lines = make_checker(
    "6.2 dedup_lines",
    dedup_lines_reference,
    _dedup_cases,
    [
        (
            _dl_documents,
            "whole documents were deduplicated: compare lines, so that a line shared by two different pages is "
            "kept once.",
        ),
        (
            _dl_within_document,
            "lines were compared within each document only: a line goes when ANY earlier document (or an earlier "
            "line of the same one) had it.",
        ),
        (_dl_keep_empty_documents, "a document left without any line is still there: drop it."),
        (_dl_blank_lines, "blank lines were deduplicated too: they are layout, keep them all and never count them."),
        (
            _dl_normalised,
            "lines were compared after stripping or lower-casing: compare them exactly as written (CCNet "
            "normalises first; this exercise does not).",
        ),
        (_dl_count_documents, "the count is of documents dropped: count the lines removed."),
    ],
)


# --- 6.3 the experiment: a tenfold learning rate ----------------------------------------------------------------


def tiny_pretraining_args(vocab_size: int, seq_len: int) -> ModelArgs:
    """The lesson's demonstration model: width 64, 2 layers, 4 query heads sharing 2 key/value heads."""
    return ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab_size, multiple_of=32,
                     max_seq_len=seq_len)  # fmt: skip


def lr_experiment_reference(rows: torch.Tensor, vocab_size: int, lrs: tuple[float, ...], steps: int) -> dict:
    """For each peak learning rate: the tiny model, built after torch.manual_seed(0), trained with the package's
    loop on `rows` (RowBatches of 8 rows, seed 0) for `steps` steps with a warmup of steps // 10 (at least 1), the
    loss logged at every step. Returns {lr: [loss of step 0, 1, ...]}."""
    curves = {}
    for lr in lrs:
        torch.manual_seed(0)
        model = Transformer(tiny_pretraining_args(vocab_size, rows.shape[1] - 1))
        history = train(model, RowBatches(rows, batch_size=8, grad_accum=1, seed=0),
                        TrainConfig(steps=steps, lr=lr, warmup=max(1, steps // 10), log_every=1), progress=False)
        curves[lr] = [m["loss"] for m in history]
    return curves


def _synthetic_rows(seed: int, n_rows: int, width: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(3, vocab, (n_rows, 1), generator=g)
    steps = torch.randint(1, 3, (n_rows, width), generator=g)
    return (3 + (start + steps.cumsum(1)) % (vocab - 3)).long()  # counting sequences with random strides


def _lr_cases():
    return [
        ("32 synthetic rows of 17 tokens, vocabulary 40, 1e-3 and 1e-2, 6 steps", (_synthetic_rows(0, 32, 17, 40), 40,
                                                                                     (1e-3, 1e-2), 6)),
        ("a tenfold rate on 16 other rows, 5 steps", (_synthetic_rows(1, 16, 9, 24), 24, (3e-3, 3e-2), 5)),
    ]  # fmt: skip


def _lr_variant(build_once=False, warmup=None, key="loss", log_every=1):
    def measure(rows, vocab_size, lrs, steps):
        curves, model = {}, None
        for lr in lrs:
            if model is None or not build_once:
                torch.manual_seed(0)
                model = Transformer(tiny_pretraining_args(vocab_size, rows.shape[1] - 1))
            w = max(1, steps // 10) if warmup is None else warmup
            history = train(model, RowBatches(rows, batch_size=8, grad_accum=1, seed=0),
                            TrainConfig(steps=steps, lr=lr, warmup=w, log_every=log_every), progress=False)
            curves[lr] = [m[key] for m in history]
        return curves

    return measure


def _lr_outcome(curves: dict) -> tuple[str, str]:
    lrs = sorted(curves)
    base = next((lr for lr in lrs if any(math.isclose(other, 10 * lr) for other in lrs)), lrs[0])
    tenfold = next(other for other in lrs if math.isclose(other, 10 * base))
    tail = max(1, len(curves[base]) // 6)

    def final(lr):
        return sum(curves[lr][-tail:]) / tail

    early = max(1, len(curves[base]) // 6)
    account = (f"at {base:g} the loss went {curves[base][0]:.2f} -> {curves[base][early]:.2f} (step {early}) -> "
               f"{final(base):.2f} (the last {tail} steps); at {tenfold:g}, {curves[tenfold][0]:.2f} -> "
               f"{curves[tenfold][early]:.2f} -> {final(tenfold):.2f}")  # fmt: skip
    if final(tenfold) > curves[tenfold][0]:
        return "diverges", account
    return ("ends lower" if final(tenfold) < final(base) else "ends higher"), account


check_lr_experiment = make_experiment(
    "6.3 lr_experiment",
    lr_experiment_reference,
    _lr_cases,
    [
        (
            _lr_variant(build_once=True),
            "the same model went on training at the next learning rate: build a fresh model (after "
            "torch.manual_seed(0)) for every run, so that the runs differ in the learning rate only.",
        ),
        (_lr_variant(warmup=0), "the runs have no warmup: use steps // 10 warmup steps (at least 1), as specified."),
        (_lr_variant(key="lr"), "these are the learning rates of the schedule: return the losses (m['loss'])."),
        (
            _lr_variant(log_every=10),
            "the loss was logged every 10 steps: log every step (TrainConfig(log_every=1)) to see the whole curve.",
        ),
    ],
    choices={
        "ends lower": "with the tenfold rate the loss ends lower than at the base rate",
        "ends higher": "with the tenfold rate the loss ends higher (whatever it does at first)",
        "diverges": "with the tenfold rate the loss ends above where it started",
    },
    outcome=_lr_outcome,
    atol=1e-6,
    rtol=1e-5,
)

__all__ = [
    "check_dedup_lines",
    "check_document_mask",
    "check_lr_experiment",
    "check_lr_schedule",
    "check_pack",
    "check_scrub_private",
    "dedup_lines_reference",
    "document_mask_reference",
    "lr_experiment_reference",
    "lr_schedule_reference",
    "tiny_pretraining_args",
]
