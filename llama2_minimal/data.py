"""From documents to training batches: cleaning (private data, duplicates), tokenisation and packing."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .world.judge import EMAIL, PHONE

REDACTED = "[private]"


@dataclass
class CleaningReport:
    documents_in: int
    duplicates_removed: int
    phone_numbers_removed: int
    emails_removed: int
    documents_out: int


def scrub_private(text: str) -> tuple[str, int, int]:
    """Replace phone numbers and e-mail addresses with a placeholder (§4.1: Llama 2's pretraining data
    excluded sites known to hold much personal information). Returns (text, phones, e-mails)."""
    text, emails = EMAIL.subn(REDACTED, text)
    text, phones = PHONE.subn(REDACTED, text)
    return text, phones, emails


def deduplicate(texts: list[str]) -> list[str]:
    """Exact duplicates removed, first occurrences kept in order."""
    seen: set[str] = set()
    return [t for t in texts if not (t in seen or seen.add(t))]


def clean_corpus(texts: list[str]) -> tuple[list[str], CleaningReport]:
    unique = deduplicate(texts)
    phones = emails = 0
    out = []
    for text in unique:
        text, p, e = scrub_private(text)
        phones, emails = phones + p, emails + e
        out.append(text)
    return out, CleaningReport(len(texts), len(texts) - len(unique), phones, emails, len(out))


def pack(token_lists: list[list[int]], seq_len: int, bos_id: int, eos_id: int) -> torch.Tensor:
    """Documents as BOS + tokens + EOS, concatenated and cut into rows of seq_len + 1 tokens (inputs are a row's
    first seq_len tokens, targets its last seq_len). Documents run across rows, as in Llama's packed pretraining;
    the incomplete last row is dropped."""
    stream = [t for ids in token_lists for t in (bos_id, *ids, eos_id)]
    rows = len(stream) // (seq_len + 1)
    if rows == 0:
        raise ValueError(f"{len(stream)} tokens make no row of {seq_len + 1}: give more text or a shorter seq_len")
    return torch.tensor(stream[: rows * (seq_len + 1)], dtype=torch.long).view(rows, seq_len + 1)


def split_rows(rows: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) rows: a seeded random fraction held out for validation perplexity."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(rows.shape[0], generator=g)
    n_val = max(1, int(rows.shape[0] * fraction))
    return rows[order[n_val:]], rows[order[:n_val]]
