"""Byte-level byte-pair encoding (BPE) from scratch: the algorithm behind Llama 2's tokenizer, small enough to
read in one sitting.

Llama 2 tokenizes text with BPE (Sennrich et al., 2016) as implemented by SentencePiece (paper §2.2, "Tokenizer").
This module is the teaching version that lesson 01 builds step by step; ``tokenizer.py`` holds the real one.
It starts from the 256 possible bytes of UTF-8, so every string can be encoded and nothing is ever unknown, and
learns merges: "replace the most frequent adjacent pair of tokens by a new token", again and again.

What SentencePiece adds on top (see ``tokenizer.py``): text is split at whitespace and digits before merging
(so no piece spans two words, and numbers stay single digits), pieces are characters with bytes only as a
fallback, and special pieces (<unk>, <s>, </s>) take the first ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["BytePairTokenizer", "get_pair_counts", "merge"]

Pair = tuple[int, int]


def get_pair_counts(ids: Sequence[int]) -> dict[Pair, int]:
    """How often each adjacent pair occurs in ``ids``: ``[1, 2, 1, 2]`` gives ``{(1, 2): 2, (2, 1): 1}``.

    Pairs overlap (``[7, 7, 7]`` holds ``(7, 7)`` twice), as in every BPE trainer: the count is a cheap
    estimate of how much text a merge would save. The dict lists pairs in the order they first occur, which
    ``BytePairTokenizer.train`` uses to break ties deterministically.
    """
    counts: dict[Pair, int] = {}
    ids = list(ids)
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """A new list where every occurrence of ``pair`` in ``ids`` is replaced by ``new_id``.

    Occurrences are taken left to right without overlap: with pair ``(a, a)``, ``a a a`` becomes ``new a``,
    because the middle ``a`` can belong to one merged token only. Order matters: ``(b, a)`` is not ``(a, b)``.
    """
    first, second = pair
    out: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == first and ids[i + 1] == second:
            out.append(new_id)
            i += 2  # both elements are consumed: they cannot start or end another occurrence
        else:
            out.append(ids[i])
            i += 1
    return out


class BytePairTokenizer:
    """A byte-level BPE tokenizer: ``train`` learns merges, ``encode`` applies them, ``decode`` undoes them.

    Attributes:
        merges: ``{(a, b): new_id}`` in the order they were learned; ``new_id`` is 256, 257, ... so a merge's
            id is also its rank (the smaller, the earlier it was learned and the earlier ``encode`` applies it).
        vocab: ``{id: bytes}`` for the 256 single bytes and every merged token (``vocab[a] + vocab[b]``).

    ``BytePairTokenizer(merges)`` rebuilds a trained tokenizer from its merges alone.
    """

    def __init__(self, merges: dict[Pair, int] | None = None) -> None:
        self._reset()
        for pair, new_id in (merges or {}).items():
            self._add_merge(pair, new_id)

    def _reset(self) -> None:
        self.merges: dict[Pair, int] = {}
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}

    def __len__(self) -> int:
        return len(self.vocab)

    def _add_merge(self, pair: Pair, new_id: int) -> None:
        # A merge can only join tokens that exist already, and ids are handed out in order: this is what makes
        # a merge's id its rank.
        if new_id != len(self.vocab):
            raise ValueError(
                f"merge {pair} -> {new_id}: merges must be given in the order they were learned, with ids "
                f"256, 257, ...; the next id is {len(self.vocab)}"
            )
        if pair in self.merges or any(part not in self.vocab for part in pair):
            raise ValueError(f"merge {pair} -> {new_id}: each part must be an existing id, and each pair merged once")
        self.merges[pair] = new_id
        self.vocab[new_id] = self.vocab[pair[0]] + self.vocab[pair[1]]

    def train(self, text: str, vocab_size: int) -> BytePairTokenizer:
        """Learn ``vocab_size - 256`` merges on the UTF-8 bytes of ``text`` (from scratch) and return ``self``.

        Each step merges the most frequent adjacent pair. Ties go to the pair that occurs first in the current
        sequence (``max`` returns the first maximum, and ``get_pair_counts`` lists pairs in first-occurrence
        order), so training is deterministic. Training stops early, with fewer merges, once the whole text is
        a single token.
        """
        if vocab_size < 256:
            raise ValueError(f"vocab_size={vocab_size} is below 256: the 256 byte tokens come first")
        self._reset()
        ids = list(text.encode("utf-8"))
        for new_id in range(256, vocab_size):
            counts = get_pair_counts(ids)
            if not counts:
                break
            pair = max(counts, key=counts.get)
            ids = merge(ids, pair, new_id)
            self._add_merge(pair, new_id)
        return self

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``: its UTF-8 bytes, merged in the order the merges were learned.

        At each step the present pair with the lowest rank (smallest id) is merged everywhere. A merge only
        creates pairs that contain its new id, whose rank is higher, so this equals running through the merge
        list once in learned order; the loop below only visits merges that occur in the text.
        """
        ids = list(text.encode("utf-8"))
        while len(ids) >= 2:
            pairs = get_pair_counts(ids)
            pair = min(pairs, key=lambda p: self.merges.get(p, float("inf")))
            if pair not in self.merges:
                break  # no pair left that was ever merged in training
            ids = merge(ids, pair, self.merges[pair])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``: their bytes joined and read as UTF-8.

        A slice of ids can end inside a multi-byte character; ``errors="replace"`` turns such bytes into
        U+FFFD instead of failing, as a streaming decoder must.
        """
        try:
            data = b"".join(self.vocab[i] for i in ids)
        except KeyError as e:
            raise ValueError(
                f"token id {e.args[0]!r} is not in the vocabulary (ids 0 to {len(self.vocab) - 1})"
            ) from None
        return data.decode("utf-8", errors="replace")
