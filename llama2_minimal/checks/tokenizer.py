"""Checkers for lesson 01 (the tokenizer, §2.2).

The exercises:
1.1 decode_pieces(pieces, ids): SentencePiece's decoding with byte fallback, from the pieces' strings alone
    (tests/test_checks.py checks the reference against SentencePiece itself on a trained model).
1.2 bpe_train_chunked(text, vocab_size, pattern): BPE that never merges across the chunks a pattern cuts the text
    into (words with their leading space, digits one by one), as SentencePiece's pre-split does.
1.3 an experiment: what splitting digits costs, in tokens per character, on prose and on sums.

The checkers of the lesson's in-the-open byte-level BPE (merge, bpe_encode, bpe_train, compared with
llama2_minimal.bpe) stay for a learner who writes them again.
"""

from __future__ import annotations

import codecs
import random
import re

from llama2_minimal.bpe import BytePairTokenizer, get_pair_counts, merge

from .core import make_checker, make_experiment

__all__ = [
    "SPLIT_DIGITS",
    "WHOLE_NUMBERS",
    "bpe_train_chunked_reference",
    "check_bpe_encode",
    "check_bpe_train",
    "check_bpe_train_chunked",
    "check_decode_pieces",
    "check_digit_experiment",
    "check_merge",
    "decode_pieces_reference",
    "digit_experiment_reference",
    "digit_texts",
    "encode_chunked",
]

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


# --- 1.1 decode_pieces: SentencePiece's decoding, byte fallback included ------------------------------------------

BYTE_PIECE = re.compile(r"<0x([0-9A-F]{2})>")
CONTROL_PIECES = ("<s>", "</s>")
UNK_PIECE, UNK_SURFACE = "<unk>", " \u2047 "  # SentencePiece's default unk_surface (Meta's tokenizer.model keeps it)
SPACE = "\u2581"  # "▁", SentencePiece's whitespace marker


def _utf8_per_byte(data: bytes) -> str:
    """UTF-8 with one U+FFFD for every byte that is not part of a complete character, as SentencePiece decodes."""
    return data.decode("utf-8", errors="sentencepiece-per-byte")


def _per_byte_replacement(error: UnicodeDecodeError) -> tuple[str, int]:
    return "\ufffd" * (error.end - error.start), error.end


codecs.register_error("sentencepiece-per-byte", _per_byte_replacement)


def decode_pieces_reference(pieces: list[str], ids: list[int]) -> str:
    """The text of `ids` for a SentencePiece model whose piece strings are `pieces` (piece i is pieces[i]), with
    Llama 2's settings (byte fallback, a dummy prefix, no normalisation): BOS and EOS give nothing, <unk> gives
    " ⁇ ", a byte piece <0xNN> gives the byte NN (consecutive bytes are read together as UTF-8, one U+FFFD per byte
    that is not part of a complete character), any other piece gives its text with "▁" read as a space; the space
    of the first text piece, the dummy prefix that encoding added, is dropped."""
    out, pending, first = [], bytearray(), True
    for i in ids:
        piece = pieces[i]
        if piece in CONTROL_PIECES:
            continue
        byte = BYTE_PIECE.fullmatch(piece)
        if byte:
            pending.append(int(byte.group(1), 16))
            first = False
            continue
        if pending:
            out.append(_utf8_per_byte(bytes(pending)))
            pending = bytearray()
        text = UNK_SURFACE if piece == UNK_PIECE else piece.replace(SPACE, " ")
        if first and piece != UNK_PIECE and text.startswith(" "):
            text = text[1:]
        first = False
        out.append(text)
    if pending:
        out.append(_utf8_per_byte(bytes(pending)))
    return "".join(out)


def _toy_pieces() -> list[str]:
    learned = ["\u2581the", "\u2581cat", "\u2581sat", "at", "\u2581", "\u2581on", "\u2581caf", "\u00e9",
               "\u2581z\u00fc", "rich", "\u2581\u2581", "s", ".", "\u2581llama", "\u2581Z"]  # fmt: skip
    return ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + learned


def _piece_ids(*names) -> list[int]:
    pieces = _toy_pieces()
    out = []
    for name in names:
        if isinstance(name, int):  # a raw byte
            out.append(pieces.index(f"<0x{name:02X}>"))
        else:
            out.append(pieces.index(name.replace(" ", SPACE)))
    return out


def _decode_cases():
    p = _toy_pieces()
    llama = list("🦙".encode())
    return [
        ('"the cat sat" (the dummy prefix of the first word is dropped)', (p, _piece_ids(" the", " cat", " sat"))),
        ("BOS, words and EOS", (p, _piece_ids("<s>", " the", " cat", "</s>"))),
        ('"the llama 🦙": an emoji the vocabulary lacks, as its 4 byte pieces', (p, _piece_ids(" the", " llama", " ",
                                                                                             *llama))),
        ('"café" with é as two byte pieces, then a learned "é"', (p, _piece_ids(" caf", 0xC3, 0xA9, " caf", "é"))),
        ("a piece the model does not know: <unk>", (p, _piece_ids(" the", "<unk>", " cat"))),
        ('a literal "▁" spelled as its three bytes (it is not a space)', (p, _piece_ids(" on", 0xE2, 0x96, 0x81))),
        ("half an emoji: 3 of its 4 bytes, then a word", (p, _piece_ids(" the", *llama[:3], " cat"))),
        ("stray continuation bytes inside a word", (p, _piece_ids(" z\u00fc", 0xBC, 0x80, "rich"))),
        ("a text that starts with a byte piece for a space", (p, _piece_ids(0x20, " the"))),
        ('a text that starts with the lone "▁" piece, then two spaces', (p, _piece_ids(" ", "  ", " cat"))),
        ("only BOS", (p, _piece_ids("<s>"))),
        ("no ids", (p, [])),
    ]  # fmt: skip


def _naive_decode(pieces, ids, *, per_byte=True, replace_space=True, strip="first", keep_control=False,
                  bytes_as_text=False, unk=UNK_SURFACE, python_replace=False, space_after=False):  # fmt: skip
    out, pending, first = [], bytearray(), True

    def flush():
        if not pending:
            return
        if per_byte:
            out.append(pending.decode("utf-8", errors="replace") if python_replace else _utf8_per_byte(bytes(pending)))
        else:
            out.extend(bytes([b]).decode("utf-8", errors="replace") for b in pending)
        pending.clear()

    for i in ids:
        piece = pieces[i]
        if piece in CONTROL_PIECES and not keep_control:
            continue
        byte = BYTE_PIECE.fullmatch(piece)
        if byte and not bytes_as_text:
            pending.append(int(byte.group(1), 16))
            first = False
            continue
        flush()
        marker_to_space = replace_space and not space_after
        text = unk if piece == UNK_PIECE else (piece.replace(SPACE, " ") if marker_to_space else piece)
        if strip == "first" and first and piece != UNK_PIECE and text.startswith(" "):
            text = text[1:]
        if strip == "every" and text.startswith(" "):
            text = text[1:]
        first = False
        out.append(text)
    flush()
    text = "".join(out)
    if space_after:
        text = text.replace(SPACE, " ")
        if text.startswith(" "):
            text = text[1:]
    return text.lstrip() if strip == "all" else text


def _dp(**kw):
    return lambda pieces, ids: _naive_decode(pieces, ids, **kw)


check_decode_pieces = make_checker(
    "1.1 decode_pieces",
    decode_pieces_reference,
    _decode_cases,
    [
        (
            _dp(per_byte=False),
            "each byte piece was decoded on its own: a character of several bytes (é, 🦙) is only valid as a whole, "
            "so collect consecutive byte pieces and decode them together.",
        ),
        (_dp(bytes_as_text=True), 'a byte piece was copied as text ("<0xF0>"): it stands for the byte 0xF0.'),
        (_dp(replace_space=False), 'the "▁" of the pieces was kept: it is SentencePiece\'s marker for a space.'),
        (
            _dp(strip="none"),
            "the text starts with a space: encoding added one before the first word (the dummy prefix), so decoding "
            "drops the leading space of the first text piece.",
        ),
        (
            _dp(strip="all"),
            "all the leading whitespace was stripped: only the one space of the dummy prefix goes (a text may start "
            "with spaces of its own, or with a space written as a byte piece).",
        ),
        (
            _dp(strip="every"),
            "every piece lost its leading space: only the first text piece carries the dummy prefix.",
        ),
        (_dp(keep_control=True), "BOS and EOS were written out: control pieces decode to nothing."),
        (
            _dp(python_replace=True),
            "a broken character gave one U+FFFD for several bytes (Python's errors=\"replace\" groups a cut-off "
            "character): SentencePiece writes one U+FFFD for every byte that is not part of a complete character.",
        ),
        (
            _dp(space_after=True),
            'the "▁" were replaced after the bytes were decoded, so a literal "▁" written in byte pieces became a '
            "space too: replace the marker in the pieces' text only.",
        ),
        (_dp(unk=""), 'an unknown piece gave nothing: SentencePiece writes its unk_surface, " ⁇ ".'),
    ],
)


# --- 1.2 bpe_train_chunked: no merge across the chunks of a pre-split ----------------------------------------------

# A word with the space before it; ONE digit (SPLIT_DIGITS) or a whole number (WHOLE_NUMBERS) with the space before
# it; a run of punctuation; whitespace (the last space of a run is left to the next word, as in GPT-2's pattern).
SPLIT_DIGITS = r" ?[^\W\d_]+| ?\d| ?(?:[^\w\s]|_)+|\s+(?!\S)|\s+"
WHOLE_NUMBERS = r" ?[^\W\d_]+| ?\d+| ?(?:[^\w\s]|_)+|\s+(?!\S)|\s+"


def bpe_train_chunked_reference(text: str, vocab_size: int, pattern: str) -> dict:
    """Learn vocab_size - 256 merges on the UTF-8 bytes of the chunks re.findall(pattern, text): pairs are
    counted inside chunks only (never across two), each step merges the most frequent pair in every chunk, ties go
    to the pair that occurs first (chunk by chunk, in text order), and training stops early when no pair is left."""
    chunks = [list(chunk.encode("utf-8")) for chunk in re.findall(pattern, text)]
    merges = {}
    for new_id in range(256, vocab_size):
        counts: dict = {}
        for ids in chunks:
            for pair in zip(ids, ids[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        pair = max(counts, key=counts.get)
        chunks = [merge(ids, pair, new_id) for ids in chunks]
        merges[pair] = new_id
    return merges


def encode_chunked(text: str, merges: dict, pattern: str) -> list[int]:
    """The ids of `text` for merges learned by a chunked trainer: each chunk encoded on its own, in order."""
    tokenizer = BytePairTokenizer(merges)
    return [i for chunk in re.findall(pattern, text) for i in tokenizer.encode(chunk)]


def _chunked_cases():
    return [
        ('"the cat and the hat" with 8 merges (words with their leading space)', ("the cat and the hat", 264,
                                                                                  SPLIT_DIGITS)),
        ("a small English-like text with digits, 40 merges, digits split", (TEXT, 296, SPLIT_DIGITS)),
        ("the same text, 40 merges, whole numbers", (TEXT, 296, WHOLE_NUMBERS)),
        ('"aaa aaa aaa" with 6 merges (stops when every chunk is one token)', ("aaa aaa aaa", 262, SPLIT_DIGITS)),
        ("two spaces before a word, and punctuation", ("so  so!! so,  so.", 262, SPLIT_DIGITS)),
        ('"zürich zürich" (non-ASCII) with 6 merges', ("zürich zürich", 262, SPLIT_DIGITS)),
        ('"1999 2000 1999" with 5 merges, whole numbers', ("1999 2000 1999", 261, WHOLE_NUMBERS)),
        ("vocab_size 256 (no merges)", ("hello there", 256, SPLIT_DIGITS)),
    ]  # fmt: skip


def _chunked_across(text, vocab_size, pattern):
    return _bpe_train(text, vocab_size)


def _chunked_distinct(text, vocab_size, pattern):
    chunks = [list(c.encode("utf-8")) for c in dict.fromkeys(re.findall(pattern, text))]
    merges = {}
    for new_id in range(256, vocab_size):
        counts: dict = {}
        for ids in chunks:
            for pair in zip(ids, ids[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        pair = max(counts, key=counts.get)
        chunks = [merge(ids, pair, new_id) for ids in chunks]
        merges[pair] = new_id
    return merges


def _chunked_whitespace(text, vocab_size, pattern):
    return bpe_train_chunked_reference(text, vocab_size, r"\S+")


def _chunked_no_recount(text, vocab_size, pattern):
    chunks = [list(c.encode("utf-8")) for c in re.findall(pattern, text)]
    counts: dict = {}
    for ids in chunks:
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + 1
    ranked = sorted(counts, key=counts.get, reverse=True)[: vocab_size - 256]
    return {pair: 256 + i for i, pair in enumerate(ranked)}


def _chunked_last_tie(text, vocab_size, pattern):
    chunks = [list(c.encode("utf-8")) for c in re.findall(pattern, text)]
    merges = {}
    for new_id in range(256, vocab_size):
        counts: dict = {}
        for ids in chunks:
            for pair in zip(ids, ids[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        pair = sorted(counts.items(), key=lambda item: item[1])[-1][0]
        chunks = [merge(ids, pair, new_id) for ids in chunks]
        merges[pair] = new_id
    return merges


def _chunked_vocab_as_merges(text, vocab_size, pattern):
    return bpe_train_chunked_reference(text, vocab_size + 256, pattern)


check_bpe_train_chunked = make_checker(
    "1.2 bpe_train_chunked",
    bpe_train_chunked_reference,
    _chunked_cases,
    [
        (
            _chunked_across,
            "pairs were counted across chunks (the whole text as one sequence): count and merge inside each chunk "
            "of re.findall(pattern, text) only, so no token spans two words.",
        ),
        (
            _chunked_distinct,
            "each distinct chunk was counted once: a word that occurs 50 times must weigh 50 times (count over every "
            "chunk, repeats included).",
        ),
        (
            _chunked_whitespace,
            "the text was cut at whitespace instead of with `pattern`: use re.findall(pattern, text), which keeps "
            "each word's leading space and splits digits and punctuation off.",
        ),
        (
            _chunked_no_recount,
            "the pairs were counted once, on the raw bytes; count again after every merge, so that merged tokens "
            "can be merged further.",
        ),
        (
            _chunked_last_tie,
            "ties went to the last of the most frequent pairs; take the first in order of occurrence (chunk by "
            "chunk, in text order), as max(counts, key=counts.get) does with a dict filled in that order.",
        ),
        (
            _chunked_vocab_as_merges,
            "vocab_size includes the 256 byte tokens: learn vocab_size - 256 merges, with new ids 256, 257, ....",
        ),
    ],
)


# --- 1.3 the experiment: what splitting digits costs --------------------------------------------------------------

_NAMES = ["Ada", "Bruno", "Chen", "Dalia", "Emil", "Farah", "Zoë", "Jürgen"]
_ANIMALS = ["llama", "otter", "heron", "goat", "falcon", "beaver"]
_PLACES = ["the river", "the market", "the mill", "the harbour"]


def digit_texts(seed: int, n: int = 100) -> dict[str, str]:
    """Two kinds of text from one seed: "prose" (short sentences) and "sums" (two-digit additions)."""
    rng = random.Random(seed)
    prose = " ".join(f"{rng.choice(_NAMES)} saw the {rng.choice(_ANIMALS)} near {rng.choice(_PLACES)}."
                     for _ in range(n))  # fmt: skip
    sums = " ".join(f"{a} + {b} = {a + b}." for a, b in ((rng.randint(0, 99), rng.randint(0, 99)) for _ in range(n)))
    return {"prose": prose, "sums": sums}


def digit_experiment_reference(train_text: str, test_texts: dict, vocab_size: int) -> dict:
    """Train the chunked BPE on train_text twice, with SPLIT_DIGITS and with WHOLE_NUMBERS, and measure each on
    every test text in tokens per character (len(encode_chunked(text, merges, pattern)) / len(text)).
    Returns {"split digits": {kind: rate}, "whole numbers": {kind: rate}}."""
    out = {}
    for name, pattern in (("split digits", SPLIT_DIGITS), ("whole numbers", WHOLE_NUMBERS)):
        merges = bpe_train_chunked_reference(train_text, vocab_size, pattern)
        out[name] = {kind: len(encode_chunked(text, merges, pattern)) / len(text) for kind, text in test_texts.items()}
    return out


def _digit_cases():
    small = digit_texts(3, 20)
    held_out = digit_texts(4, 10)
    return [
        ("20 sentences and 20 sums, 40 merges, measured on 10 new ones", (small["prose"] + " " + small["sums"],
                                                                           held_out, 296)),
        ("the sums alone, 20 merges, measured on the training text itself", (small["sums"], {"sums": small["sums"]},
                                                                              276)),
    ]  # fmt: skip


def _de_variant(rate):
    def measure(train_text, test_texts, vocab_size):
        out = {}
        for name, pattern in (("split digits", SPLIT_DIGITS), ("whole numbers", WHOLE_NUMBERS)):
            merges = bpe_train_chunked_reference(train_text, vocab_size, pattern)
            out[name] = {kind: rate(text, merges, pattern) for kind, text in test_texts.items()}
        return out

    return measure


def _de_trained_on_test(train_text, test_texts, vocab_size):
    return digit_experiment_reference(" ".join(test_texts.values()), test_texts, vocab_size)


def _de_swapped(train_text, test_texts, vocab_size):
    result = digit_experiment_reference(train_text, test_texts, vocab_size)
    return {"split digits": result["whole numbers"], "whole numbers": result["split digits"]}


def _de_same_pattern(train_text, test_texts, vocab_size):
    merges = bpe_train_chunked_reference(train_text, vocab_size, SPLIT_DIGITS)
    rates = {kind: len(encode_chunked(text, merges, SPLIT_DIGITS)) / len(text) for kind, text in test_texts.items()}
    return {"split digits": rates, "whole numbers": dict(rates)}


def _digit_outcome(result: dict) -> tuple[str, str]:
    split, whole = result["split digits"], result["whole numbers"]
    cost = {kind: split[kind] / whole[kind] - 1 for kind in split}
    account = "splitting digits changed the tokens per character by " + ", ".join(
        f"{100 * c:+.1f}% on {kind} ({whole[kind]:.3f} -> {split[kind]:.3f})" for kind, c in cost.items())
    costly = {kind for kind, c in cost.items() if c > 0.02}
    if costly == {"sums"}:
        return "sums only", account
    if costly == set(cost):
        return "both", account
    return "neither" if not costly else "prose only", account


check_digit_experiment = make_experiment(
    "1.3 digit_experiment",
    digit_experiment_reference,
    _digit_cases,
    [
        (
            _de_trained_on_test,
            "the tokenizers were trained on the test texts: train on train_text and measure on text they have not "
            "seen, as a tokenizer meets new text.",
        ),
        (
            _de_variant(lambda text, merges, pattern: len(text) / len(encode_chunked(text, merges, pattern))),
            "this is characters per token: the measure is tokens per character, len(ids) / len(text).",
        ),
        (
            _de_variant(lambda text, merges, pattern: len(encode_chunked(text, merges, pattern)) / len(text.encode())),
            "this divides by the number of bytes: the measure is tokens per character, len(ids) / len(text).",
        ),
        (_de_swapped, "the two tokenizers are swapped: SPLIT_DIGITS is the pattern that splits digits."),
        (_de_same_pattern, "both tokenizers were trained with the same pattern: train one with each."),
    ],
    choices={
        "sums only": "splitting digits costs tokens on the sums and next to nothing (under 2%) on the prose",
        "both": "it costs more than 2% on both",
        "neither": "it costs under 2% on both",
    },
    outcome=_digit_outcome,
    atol=1e-9,
    rtol=1e-9,
)
