"""From documents to training batches: cleaning (private data, duplicates), tokenisation and packing."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .world.entities import EMAIL, PHONE

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


# --- supervised fine-tuning (§3.1): prompt and answer concatenated, the loss on answer tokens only ---

IGNORE = -100  # the target that cross-entropy skips (train/loop.py's next_token_loss ignores it)


def sft_example(dialog: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """(ids, answer mask) of a dialog that ends with the assistant's answer, in Meta's chat format: the mask is 1
    on every answer token and its EOS (the model must learn to stop), 0 on the prompts ("we zero-out the loss on
    tokens from the user prompt", §3.1)."""
    from .chat import encode_dialog_turns

    ids, mask = [], []
    for prompt, answer in encode_dialog_turns(dialog, tokenizer, allow_assistant_last=True):
        ids += prompt + answer
        mask += [0] * len(prompt) + [1] * len(answer)
    return ids, mask


def pack_sft(examples: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Examples packed whole into rows of seq_len + 1 tokens (several dialogs share a row, none is split, the rest
    of a row is padding), as inputs (n, seq_len) and targets (n, seq_len) where every target that is not an answer
    token is IGNORE."""
    rows: list[tuple[list[int], list[int]]] = []
    ids, mask = [], []
    for example_ids, example_mask in examples:
        if len(example_ids) > seq_len + 1:
            raise ValueError(f"an example of {len(example_ids)} tokens does not fit a row of {seq_len + 1}: "
                             "raise seq_len or shorten the dialog")  # fmt: skip
        if len(ids) + len(example_ids) > seq_len + 1:
            rows.append((ids, mask))
            ids, mask = [], []
        ids, mask = ids + example_ids, mask + example_mask
    if ids:
        rows.append((ids, mask))
    tokens = torch.full((len(rows), seq_len + 1), pad_id, dtype=torch.long)
    answer = torch.zeros((len(rows), seq_len + 1), dtype=torch.bool)
    for i, (row_ids, row_mask) in enumerate(rows):
        tokens[i, : len(row_ids)] = torch.tensor(row_ids)
        answer[i, : len(row_mask)] = torch.tensor(row_mask, dtype=torch.bool)
    targets = tokens[:, 1:].masked_fill(~answer[:, 1:], IGNORE)  # target j is token j + 1: learned if an answer
    return {"inputs": tokens[:, :-1], "targets": targets}
