"""Checkers for lesson 01 (the tokenizer): merge (1.1), bpe_encode (1.2) and bpe_train (1.3), compared with
llama2_minimal.bpe on hand-made and trained cases."""

from __future__ import annotations

from llama2_minimal.bpe import BytePairTokenizer, get_pair_counts, merge

from .core import make_checker

__all__ = ["check_bpe_encode", "check_bpe_train", "check_merge"]

A, B, C, D = (ord(c) for c in "abcd")

# A small English-like text with numbers and a few non-ASCII characters, for training and encoding.
TEXT = (
    "the cat sat on the mat, and the rat sat on the hat. "
    "in 2023 the cat ate 12 rats; the rat ate 3 hats. "
    "a café in zürich sold 45 crêpes — the cat said: naïve! "
) * 3


# --- Exercise 1.1: merge(ids, pair, new_id) -------------------------------------------------------------


def merge_cases():
    return [
        ('"aaabdaaabac" with pair (a, a)', (list(b"aaabdaaabac"), (A, A), 256)),
        ("[b, a, b, a] with pair (a, b)", ([B, A, B, A], (A, B), 256)),
        ('"aaa" with pair (a, a) (overlapping occurrences)', ([A, A, A], (A, A), 256)),
        ('"aaaa" with pair (a, a)', ([A, A, A, A], (A, A), 300)),
        ("ids that are already merged tokens", ([256, 257, 256, 257, 99, 256], (256, 257), 258)),
        ("a pair that does not occur", ([C, D, C], (D, D), 256)),
        ("a single id", ([A], (A, A), 256)),
        ("an empty list", ([], (A, B), 256)),
    ]


def _merge_overlapping(ids, pair, new_id):
    out = []
    for i, x in enumerate(ids):
        out.append(new_id if tuple(ids[i : i + 2]) == tuple(pair) else x)
    return out


def _merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return [*ids[:i], new_id, *ids[i + 2 :]]
    return list(ids)


def _merge_drops_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _merge_any_order(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) in {tuple(pair), tuple(pair)[::-1]}:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


check_merge = make_checker(
    "1.1 merge",
    merge,
    merge_cases,
    mistakes=[
        (
            _merge_overlapping,
            "an id was used by two merges (overlapping occurrences, e.g. a a a -> Z Z): after replacing a pair, "
            "skip both of its elements (i += 2).",
        ),
        (
            _merge_first_only,
            "only the first occurrence of the pair was replaced: keep scanning to the end of the list.",
        ),
        (
            _merge_drops_last,
            "the last id was dropped: when the loop stops at len(ids) - 1, append the last id if it was not "
            "merged (loop while i < len(ids) and check i + 1 < len(ids) before comparing a pair).",
        ),
        (
            _merge_any_order,
            "(b, a) was merged as if it were (a, b): a pair is ordered, compare ids[i] with pair[0] and "
            "ids[i + 1] with pair[1].",
        ),
    ],
)


# --- Exercise 1.2: bpe_encode(text, merges) ---------------------------------------------------------------


def _bpe_encode(text: str, merges: dict) -> list[int]:
    return BytePairTokenizer(merges).encode(text)


def encode_cases():
    trained = BytePairTokenizer().train(TEXT, 256 + 60).merges
    return [
        # Rank order gives aa b c ab; leftmost-first, most-frequent-first and highest-rank-first each differ.
        (
            '"aabcab" with merges {(a, a): 256, (a, b): 257, (c, a): 258}',
            ("aabcab", {(A, A): 256, (A, B): 257, (C, A): 258}),
        ),
        ('"abc" with merges {(b, c): 256, (a, b): 257}', ("abc", {(B, C): 256, (A, B): 257})),
        (
            '"aaaaa" with merges {(a, a): 256, (256, 256): 257, (257, a): 258}',
            ("aaaaa", {(A, A): 256, (256, 256): 257, (257, A): 258}),
        ),
        ("a sentence with merges trained on a small text", ("the rat ate the cat in 2023.", trained)),
        ('"crêpes in zürich" (non-ASCII) with the same merges', ("crêpes in zürich, naïve café", trained)),
        ("the training text with its merges", (TEXT, trained)),
        ("text without any merge that applies", ("XYZ", trained)),
        ("one character", ("é", trained)),
        ("the empty string", ("", trained)),
        ("no merges at all", ("hello", {})),
    ]


def _ranked(merges: dict) -> list[tuple[tuple[int, int], int]]:
    return sorted(merges.items(), key=lambda item: item[1])


def _encode_leftmost_first(text, merges):
    ids = list(text.encode("utf-8"))
    while True:
        for i in range(len(ids) - 1):
            if (ids[i], ids[i + 1]) in merges:
                ids = [*ids[:i], merges[ids[i], ids[i + 1]], *ids[i + 2 :]]
                break
        else:
            return ids


def _encode_most_frequent_first(text, merges):
    ids = list(text.encode("utf-8"))
    while True:
        counts = {pair: n for pair, n in get_pair_counts(ids).items() if pair in merges}
        if not counts:
            return ids
        pair = max(counts, key=counts.get)
        ids = merge(ids, pair, merges[pair])


def _encode_highest_rank_first(text, merges):
    ids = list(text.encode("utf-8"))
    while True:
        present = [pair for pair in get_pair_counts(ids) if pair in merges]
        if not present:
            return ids
        pair = max(present, key=merges.get)
        ids = merge(ids, pair, merges[pair])


def _encode_characters(text, merges):
    ids = [ord(ch) for ch in text]
    for pair, new_id in _ranked(merges):
        ids = merge(ids, pair, new_id)
    return ids


check_bpe_encode = make_checker(
    "1.2 bpe_encode",
    _bpe_encode,
    encode_cases,
    mistakes=[
        (
            _encode_leftmost_first,
            "the leftmost mergeable pair was merged first; merge the pair with the lowest rank (smallest new id) "
            "first, wherever it stands, as training did.",
        ),
        (
            _encode_most_frequent_first,
            "pairs were merged in the order of their frequency in this text; the order is the merges' rank "
            "(the order they were learned in training), whatever the counts in the text being encoded.",
        ),
        (
            _encode_highest_rank_first,
            "the pair with the highest rank (largest new id) was merged first; take min over the ranks, not max.",
        ),
        (
            _encode_characters,
            "the text was split into characters (ord), not UTF-8 bytes; start from list(text.encode('utf-8')).",
        ),
    ],
)


# --- Exercise 1.3: bpe_train(text, vocab_size) -------------------------------------------------------------


def _bpe_train(text: str, vocab_size: int) -> dict:
    return BytePairTokenizer().train(text, vocab_size).merges


def train_cases():
    return [
        ('"aaabdaaabac" with vocab_size 259', ("aaabdaaabac", 259)),
        ("a small English-like text with vocab_size 300", (TEXT, 300)),
        ('"abcabd" with vocab_size 258 (a tie between pairs)', ("abcabd", 258)),
        ('"zürich zürich" with vocab_size 262 (non-ASCII)', ("zürich zürich", 262)),
        ("vocab_size 256 (no merges)", ("hello", 256)),
    ]


def _train_without_recounting(text, vocab_size):
    counts = get_pair_counts(list(text.encode("utf-8")))
    ranked = sorted(counts, key=counts.get, reverse=True)[: vocab_size - 256]
    return {pair: 256 + i for i, pair in enumerate(ranked)}


def _train_last_of_ties(text, vocab_size):
    ids, merges = list(text.encode("utf-8")), {}
    for new_id in range(256, vocab_size):
        counts = get_pair_counts(ids)
        if not counts:
            break
        pair = sorted(counts.items(), key=lambda item: item[1])[-1][0]
        ids = merge(ids, pair, new_id)
        merges[pair] = new_id
    return merges


def _train_vocab_size_as_merges(text, vocab_size):
    return _bpe_train(text, vocab_size + 256)


def _train_without_replacing_ids(text, vocab_size):
    ids, merges = list(text.encode("utf-8")), {}
    for new_id in range(256, vocab_size):
        counts = get_pair_counts(ids)
        pair = max(counts, key=counts.get)
        merge(ids, pair, new_id)  # the result is thrown away
        merges[pair] = new_id
    return merges


check_bpe_train = make_checker(
    "1.3 bpe_train",
    _bpe_train,
    train_cases,
    mistakes=[
        (
            _train_without_replacing_ids,
            "the merged ids were thrown away, so the same pair won every step: assign ids = merge(ids, pair, "
            "new_id) before counting again.",
        ),
        (
            _train_without_recounting,
            "the pairs were counted once, on the raw bytes; count again after every merge, so that merged "
            "tokens can be merged further (that is how long pieces like 'the ' are built).",
        ),
        (
            _train_vocab_size_as_merges,
            "vocab_size includes the 256 byte tokens: learn vocab_size - 256 merges, with new ids 256, 257, ....",
        ),
        (
            _train_last_of_ties,
            "ties went to the last of the most frequent pairs; take the first in order of occurrence, as "
            "max(counts, key=counts.get) does with a dict filled left to right.",
        ),
    ],
)
