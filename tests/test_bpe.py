"""Tests for llama2_minimal.bpe: the teaching byte-level BPE of lesson 01."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama2_minimal.bpe import BytePairTokenizer, get_pair_counts, merge

A, B, C, D = (ord(c) for c in "abcd")
TEXT = "the cat sat on the mat; the rat ate the hat. " * 8 + "Ünïcödé and 🦙 emoji, 12345 + 2023."


@pytest.fixture(scope="module")
def trained() -> BytePairTokenizer:
    return BytePairTokenizer().train(TEXT, 256 + 40)


# --- get_pair_counts and merge ---------------------------------------------------------------------------


def test_pair_counts_overlap_and_keep_first_occurrence_order():
    counts = get_pair_counts(list(b"aaabdaaabac"))
    assert counts == {(A, A): 4, (A, B): 2, (B, D): 1, (D, A): 1, (B, A): 1, (A, C): 1}
    assert list(counts) == [(A, A), (A, B), (B, D), (D, A), (B, A), (A, C)]
    assert get_pair_counts([]) == {} and get_pair_counts([5]) == {}


def test_merge_by_hand():
    ids = list(b"aaabdaaabac")
    assert merge(ids, (A, A), 256) == [256, A, B, D, 256, A, B, A, C]
    assert merge([256, A, B, D, 256, A, B, A, C], (256, A), 257) == [257, B, D, 257, B, A, C]
    assert ids == list(b"aaabdaaabac")  # the input is left alone


def test_merge_takes_overlapping_occurrences_left_to_right():
    assert merge([A, A, A], (A, A), 256) == [256, A]
    assert merge([A, A, A, A], (A, A), 256) == [256, 256]
    assert merge([A, A, A, A, A], (A, A), 256) == [256, 256, A]


def test_merge_respects_pair_order_and_edges():
    assert merge([B, A, B, A], (A, B), 256) == [B, 256, A]
    assert merge([A, B], (A, B), 256) == [256]
    assert merge([C, A, B], (A, B), 256) == [C, 256]
    assert merge([], (A, B), 256) == [] and merge([A], (A, B), 256) == [A]
    assert merge([C, D], (A, B), 256) == [C, D]


# --- training ---------------------------------------------------------------------------------------------


def test_training_by_hand_breaks_ties_by_first_occurrence():
    tok = BytePairTokenizer().train("aaabdaaabac", 259)
    # (a, a) occurs 4 times; then (aa, a) and (a, b) both occur twice and (aa, a) comes first.
    assert tok.merges == {(A, A): 256, (256, A): 257, (257, B): 258}
    assert tok.vocab[258] == b"aaab"
    assert tok.encode("aaabdaaabac") == [258, D, 258, A, C]


@pytest.mark.parametrize("n_merges", [0, 1, 17, 60])
def test_n_merges_give_256_plus_n_ids(n_merges):
    tok = BytePairTokenizer().train(TEXT, 256 + n_merges)
    assert len(tok.merges) == n_merges
    assert len(tok) == len(tok.vocab) == 256 + n_merges
    assert sorted(tok.vocab) == list(range(256 + n_merges))
    assert list(tok.merges.values()) == list(range(256, 256 + n_merges))
    for (a, b), new_id in tok.merges.items():
        assert a < new_id and b < new_id and tok.vocab[new_id] == tok.vocab[a] + tok.vocab[b]


def test_training_stops_when_the_text_is_one_token():
    tok = BytePairTokenizer().train("abcd", 300)
    assert len(tok.merges) == 3 and tok.encode("abcd") == [258]
    assert len(BytePairTokenizer().train("", 300).merges) == 0
    with pytest.raises(ValueError, match="below 256"):
        BytePairTokenizer().train("abc", 255)


def test_training_is_deterministic_and_starts_from_scratch(trained):
    again = BytePairTokenizer().train(TEXT, 256 + 40)
    assert again.merges == trained.merges and list(again.merges) == list(trained.merges)
    reused = BytePairTokenizer().train("zzzz", 258).train(TEXT, 256 + 40)
    assert reused.merges == trained.merges


def test_training_learns_on_utf8_bytes():
    tok = BytePairTokenizer().train("é" * 6, 257)
    assert tok.merges == {(0xC3, 0xA9): 256}  # "é" is the two bytes C3 A9


# --- encoding and decoding ---------------------------------------------------------------------------------


def test_encode_applies_merges_by_rank_not_by_position():
    # (b, c) was learned first, so "abc" is a + bc although (a, b) comes first in the text.
    tok = BytePairTokenizer({(B, C): 256, (A, B): 257})
    assert tok.encode("abc") == [A, 256]
    assert tok.encode("abab") == [257, 257]
    tok = BytePairTokenizer({(A, B): 256, (B, C): 257})
    assert tok.encode("abc") == [256, C]


def test_encode_uses_merges_that_become_possible_later():
    tok = BytePairTokenizer({(A, A): 256, (256, 256): 257, (257, A): 258})
    assert tok.encode("aaaaa") == [258]
    assert tok.encode("aaaa") == [257]
    assert tok.encode("aaa") == [256, A]


def test_encode_equals_one_pass_over_the_merges_in_learned_order(trained):
    for text in [TEXT, "the hat sat", "12345 + 2023 🦙", "x"]:
        ids = list(text.encode("utf-8"))
        for pair, new_id in trained.merges.items():
            ids = merge(ids, pair, new_id)
        assert trained.encode(text) == ids


def test_encode_compresses_the_training_text(trained):
    ids = trained.encode(TEXT)
    assert len(ids) < len(TEXT.encode("utf-8")) / 2
    assert trained.encode("") == []


def test_rebuilding_from_merges_gives_the_same_tokenizer(trained):
    rebuilt = BytePairTokenizer(trained.merges)
    assert rebuilt.vocab == trained.vocab and rebuilt.encode(TEXT) == trained.encode(TEXT)


def test_bad_merges_are_refused():
    with pytest.raises(ValueError, match="next id is 256"):
        BytePairTokenizer({(A, B): 300})
    with pytest.raises(ValueError, match="existing id"):
        BytePairTokenizer({(A, 999): 256})


def test_decode_replaces_partial_characters_and_refuses_unknown_ids(trained):
    emoji = list("🦙".encode())
    assert trained.decode(emoji) == "🦙"
    assert trained.decode(emoji[:2]) == "\ufffd"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        trained.decode([10_000])


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=["Cs"])))
def test_round_trip_on_arbitrary_unicode(trained, text):
    ids = trained.encode(text)
    assert trained.decode(ids) == text
    assert all(0 <= i < len(trained) for i in ids)
