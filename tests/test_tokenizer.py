"""Tests for llama2_minimal.tokenizer: Llama 2's SentencePiece settings, round trip, atomic writes, errors."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llama2_minimal import tokenizer as tokenizer_module
from llama2_minimal.tokenizer import LLAMA2_TRAINER_SPEC, Tokenizer, train_tokenizer

VOCAB_SIZE = 400
MARKER = "\u2581"  # SentencePiece's whitespace marker


def make_corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    """English-like sentences full of numbers and years, so BPE would merge digits without split_digits."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my friend", "the model", "our team", "the teacher", "a small bird"]
    verbs = ["ate", "saw", "trained", "counted", "found", "built", "read", "wrote", "sold"]
    objects = ["apples", "tokens", "books", "stones", "letters", "numbers", "papers", "songs"]
    lines = []
    for i in range(n_lines):
        line = (
            f"{rng.choice(subjects).capitalize()} {rng.choice(verbs)} {rng.randint(0, 99999)} "
            f"{rng.choice(objects)} in {rng.randint(1900, 2024)}."
        )
        if i % 3 == 0:
            line += f" Then {rng.choice(subjects)} {rng.choice(verbs)} it for ${rng.randint(1, 999)}.99!"
        lines.append(line)
    return lines


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(scope="session")
def model_path(tmp_path_factory, corpus) -> str:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_tokenizer(corpus, path, VOCAB_SIZE)
    return str(path)


@pytest.fixture(scope="session")
def tok(model_path) -> Tokenizer:
    return Tokenizer(model_path)


@pytest.fixture(scope="session")
def raw_sp(model_path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=model_path)


def pieces(tok: Tokenizer, s: str) -> list[str]:
    return [tok.id_to_piece(i) for i in tok.encode(s, bos=False)]


def byte_pieces(s: str) -> list[str]:
    return [f"<0x{b:02X}>" for b in s.encode("utf-8")]


# --- settings and vocabulary layout ---------------------------------------------------------------------


def test_trainer_spec_has_llama2_settings():
    expected = {
        "model_type": "bpe",
        "split_digits": True,
        "byte_fallback": True,
        "unk_id": 0,
        "bos_id": 1,
        "eos_id": 2,
        "pad_id": -1,
        "unk_piece": "<unk>",
        "bos_piece": "<s>",
        "eos_piece": "</s>",
        "normalization_rule_name": "identity",
        "remove_extra_whitespaces": False,
        "add_dummy_prefix": True,
        "allow_whitespace_only_pieces": True,
        "split_by_unicode_script": True,
        "split_by_number": True,
        "split_by_whitespace": True,
        "character_coverage": 0.99995,
        "max_sentencepiece_length": 16,
        "max_sentence_length": 4192,
    }
    assert {k: LLAMA2_TRAINER_SPEC[k] for k in expected} == expected


def test_special_ids_and_layout(tok, model_path):
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, -1)
    assert [tok.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    # Like Meta's tokenizer.model: the 256 byte pieces follow the specials.
    assert [tok.id_to_piece(3 + b) for b in range(256)] == [f"<0x{b:02X}>" for b in range(256)]
    assert tok.n_words == len(tok) == VOCAB_SIZE
    assert tok.model_path == model_path
    assert tok.piece_to_id("<s>") == 1
    assert tok.piece_to_id("no such piece") == tok.unk_id


@pytest.mark.parametrize("text", ["12345", "in 2024 and 1999", "cost $31415.99"])
def test_digits_are_split(tok, text):
    digit_pieces = [p for p in pieces(tok, text) if any(c.isdigit() for c in p)]
    assert digit_pieces == [c for c in text if c.isdigit()]


def test_byte_fallback_for_unseen_emoji(tok, corpus):
    emoji = "\U0001f999"  # llama, not in the training text
    assert not any(emoji in line for line in corpus)
    assert pieces(tok, emoji) == ["▁", *byte_pieces(emoji)]
    assert pieces(tok, f"the {emoji} ate") == ["▁the", "▁", *byte_pieces(emoji), "▁ate"]
    assert tok.decode(tok.encode(f"the {emoji} ate")) == f"the {emoji} ate"


def test_encode_bos_eos_flags(tok):
    body = tok.encode("the cat ate 12 apples", bos=False, eos=False)
    assert body and tok.bos_id not in body and tok.eos_id not in body
    assert tok.encode("the cat ate 12 apples") == [1, *body]  # Meta's defaults: BOS, no EOS
    assert tok.encode("the cat ate 12 apples", bos=True, eos=False) == [1, *body]
    assert tok.encode("the cat ate 12 apples", bos=False, eos=True) == [*body, 2]
    assert tok.encode("the cat ate 12 apples", bos=True, eos=True) == [1, *body, 2]
    assert tok.encode("", bos=True, eos=True) == [1, 2]
    assert tok.decode([1, *body, 2]) == "the cat ate 12 apples"


def test_decode_accepts_list_and_1d_tensor(tok):
    ids = tok.encode("the dog read 42 books")
    assert tok.decode(ids) == tok.decode(torch.tensor(ids)) == "the dog read 42 books"
    assert tok.decode(torch.tensor(ids, dtype=torch.int32)) == "the dog read 42 books"
    assert tok.decode(tuple(ids)) == "the dog read 42 books"
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.tensor([ids, ids]))


def test_ordinary_text_ids_match_plain_sentencepiece(tok, raw_sp):
    # Text without U+2581 must get SentencePiece's own ids, so Meta's tokenizer.model stays compatible.
    for text in ["The cat ate 31415 apples in 1999.", "  two  spaces\tand a tab\n", "🦙 中文 é", ""]:
        assert tok.encode(text, bos=False) == raw_sp.encode(text)


@settings(max_examples=300, deadline=None)
@given(st.text().filter(lambda s: MARKER not in s))
def test_property_ids_match_plain_sentencepiece(tok, raw_sp, text):
    assert tok.encode(text, bos=False) == raw_sp.encode(text)


def test_tokenizer_pickles_without_its_file(tmp_path, model_path):
    # DataLoader workers receive the tokenizer pickled; the model travels inside the pickle.
    path = tmp_path / "moved.model"
    path.write_bytes(Path(model_path).read_bytes())
    original = Tokenizer(path)
    data = pickle.dumps(original)
    path.unlink()
    copy = pickle.loads(data)
    assert copy.model_path == str(path) and copy.n_words == original.n_words
    for text in ["the cat 12", f"a{MARKER}b"]:
        assert copy.encode(text) == original.encode(text)
        assert copy.decode(copy.encode(text)) == text


# --- round trip -----------------------------------------------------------------------------------------

EDGE_CASES = [
    "",
    " ",
    "   ",
    " leading",
    "trailing ",
    "  both  ",
    "repeated   spaces",
    "\t",
    "tab\tand\nnewline\r\n",
    "\n\n",
    " \n ",
    "\x00",
    "nul\x00inside",
    "\U0001f999",
    " \U0001f999 ",
    "family \U0001f468\u200d\U0001f469\u200d\U0001f467 zwj",
    "中文字符",
    "日本語のテキスト",
    "한국어",
    "naïve café",
    "\u200b",
    "\ufeffBOM",
    "\U0010ffff",
    "<s>",
    "</s>",
    "<unk>",
    "<0x41>",
    " \u2047 ",
    MARKER,
    MARKER * 3,
    f" {MARKER}",
    f"{MARKER} ",
    f"a{MARKER}b",
    f"the{MARKER}cat {MARKER}ate",
    f"{MARKER}the cat",
    f" {MARKER} {MARKER} ",
    f"12{MARKER}34",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_round_trip_edge_cases(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, bos=False, eos=True)) == text


def test_literal_marker_is_encoded_as_bytes(tok, raw_sp):
    # Plain SentencePiece reads "▁" as a space and loses it; the wrapper spells it out in byte pieces.
    assert raw_sp.decode(raw_sp.encode(f"a{MARKER}b")) == "a b"
    assert pieces(tok, MARKER) == byte_pieces(MARKER)
    assert pieces(tok, f"a{MARKER}b") == ["▁a", *byte_pieces(MARKER), "b"]
    assert tok.encode(f"a{MARKER}b") != tok.encode("a b")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_property_round_trip_any_text(tok, text):
    assert tok.decode(tok.encode(text)) == text


# Arbitrary text rarely hits the risky spots; this alphabet mixes whitespace, the marker and byte pieces.
_TRICKY = st.lists(
    st.sampled_from([" ", "\t", "\n", "\r", MARKER, "a", "the", "7", "\U0001f999", "中", "\x00"]),
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(_TRICKY)
def test_property_round_trip_tricky_text(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_model_without_byte_fallback_documented_behaviour(tmp_path, corpus):
    # No byte pieces: "▁" encodes like a space and unseen characters become <unk> (module docstring).
    tok = train_tokenizer(corpus, tmp_path / "nb.model", 60, byte_fallback=False, character_coverage=1.0)
    assert tok.decode(tok.encode(f"a{MARKER}b")) == "a b"
    assert tok.encode("\U0001f999", bos=False)[-1] == tok.unk_id


# --- training: determinism and atomic write -------------------------------------------------------------


def test_training_is_deterministic(tmp_path, corpus, model_path):
    a = train_tokenizer(corpus, tmp_path / "a.model", VOCAB_SIZE)
    b = train_tokenizer(iter(corpus), tmp_path / "b.model", VOCAB_SIZE)
    data = (tmp_path / "a.model").read_bytes()
    assert data == (tmp_path / "b.model").read_bytes()
    assert data == Path(model_path).read_bytes()
    assert a.encode("the cat counted 123 stones") == b.encode("the cat counted 123 stones")


def test_training_from_text_file_matches_list(tmp_path, corpus, model_path):
    text_file = tmp_path / "corpus.txt"
    # Documents with several lines are split into lines, so one multi-line document equals the line list.
    text_file.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    train_tokenizer(text_file, tmp_path / "file.model", VOCAB_SIZE)
    train_tokenizer(["\n".join(corpus)], tmp_path / "doc.model", VOCAB_SIZE)
    expected = Path(model_path).read_bytes()
    assert (tmp_path / "file.model").read_bytes() == expected
    assert (tmp_path / "doc.model").read_bytes() == expected


def test_out_path_parent_is_created(tmp_path, corpus):
    tok = train_tokenizer(corpus, tmp_path / "new" / "dir" / "t.model", VOCAB_SIZE)
    assert os.listdir(tmp_path / "new" / "dir") == ["t.model"]
    assert tok.model_path == str(tmp_path / "new" / "dir" / "t.model")


class _Interrupted(Exception):
    pass


def test_interrupted_reading_leaves_no_file(tmp_path, corpus):
    def documents():
        yield from corpus[:200]
        raise _Interrupted("reader died halfway")

    with pytest.raises(_Interrupted, match="halfway"):
        train_tokenizer(documents(), tmp_path / "t.model", VOCAB_SIZE)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_keeps_old_model_and_leaves_no_temp_file(tmp_path, corpus, monkeypatch, failing):
    out = tmp_path / "t.model"
    out.write_bytes(b"previous model")

    def boom(*args, **kwargs):
        raise OSError(f"{failing} failed (disk full)")

    monkeypatch.setattr(tokenizer_module.os, failing, boom)
    with pytest.raises(OSError, match="disk full"):
        train_tokenizer(corpus, out, VOCAB_SIZE)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["t.model"]
    assert out.read_bytes() == b"previous model"


# --- errors ---------------------------------------------------------------------------------------------


def test_missing_model_file(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.model"
    with pytest.raises(FileNotFoundError, match="train_tokenizer") as info:
        Tokenizer(missing)
    assert str(missing) in str(info.value)


def test_directory_instead_of_model(tmp_path):
    with pytest.raises(IsADirectoryError, match="directory"):
        Tokenizer(tmp_path)


@pytest.mark.parametrize(
    "data",
    [b"", b"this is not a sentencepiece model\n" * 20, bytes(range(256)) * 4],
    ids=["empty", "text", "binary"],
)
def test_garbage_model_file(tmp_path, data):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="not a SentencePiece model") as info:
        Tokenizer(path)
    assert str(path) in str(info.value)


def _field_boundaries(buf: bytes) -> list[int]:
    """Offsets where a top-level protobuf field ends (every field here is length-delimited)."""
    ends, pos = [], 0
    while pos < len(buf):
        pos += 1  # one-byte key (fields 1-5, wire type 2)
        length = shift = 0
        while True:
            byte = buf[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        pos += length
        ends.append(pos)
    return ends


def test_truncated_model_file(tmp_path, model_path):
    data = Path(model_path).read_bytes()
    ends = _field_boundaries(data)
    assert ends[-1] == len(data)
    # A cut at a field boundary is a valid protobuf prefix. Cut after the trainer_spec (ends[VOCAB_SIZE]),
    # SentencePiece itself loads it with a default normalizer that collapses repeated spaces.
    cuts = [len(data) // 2, len(data) - 1, 7, ends[VOCAB_SIZE // 2], ends[VOCAB_SIZE - 1], ends[VOCAB_SIZE]]
    for cut in cuts:
        path = tmp_path / f"cut{cut}.model"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="not a SentencePiece model"):
            Tokenizer(path)


def test_empty_corpus(tmp_path):
    for texts in ([], ["", "\n\n"]):
        with pytest.raises(ValueError, match="corpus is empty"):
            train_tokenizer(texts, tmp_path / "t.model", VOCAB_SIZE)
    assert os.listdir(tmp_path) == []


def test_lines_too_long(tmp_path):
    with pytest.raises(ValueError, match="max_sentence_length"):
        train_tokenizer(["word " * 1000], tmp_path / "t.model", VOCAB_SIZE)


def test_vocab_below_specials_and_bytes(tmp_path, corpus):
    with pytest.raises(ValueError, match="above 259"):
        train_tokenizer(corpus, tmp_path / "t.model", 259)
    with pytest.raises(TypeError, match="int"):
        train_tokenizer(corpus, tmp_path / "t.model", 300.0)


def _number_after(words: str, message: str) -> int:
    return int(message.split(words)[1].split()[0])


def test_vocab_too_small_for_characters_names_the_minimum(tmp_path, corpus):
    with pytest.raises(ValueError, match="too small") as info:
        train_tokenizer(corpus, tmp_path / "t.model", 260)
    need = _number_after("at least", str(info.value))
    n_chars = len(set("".join(corpus)) - {" "}) + 1  # SentencePiece counts "▁" instead of " "
    assert need == 3 + 256 + n_chars
    assert len(train_tokenizer(corpus, tmp_path / "t.model", need)) == need
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(corpus, tmp_path / "t.model", need - 1)


def test_vocab_too_large_names_the_maximum(tmp_path, corpus):
    with pytest.raises(ValueError, match="give more text") as info:
        train_tokenizer(corpus[:50], tmp_path / "t.model", 100_000)
    most = _number_after("at most", str(info.value))
    assert len(train_tokenizer(corpus[:50], tmp_path / "t.model", most)) == most
    with pytest.raises(ValueError, match="too large"):
        train_tokenizer(corpus[:50], tmp_path / "t2.model", most + 1)
    assert os.listdir(tmp_path) == ["t.model"]


def test_bad_training_arguments(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="list of documents"):
        train_tokenizer(str(tmp_path / "missing.txt"), tmp_path / "t.model", VOCAB_SIZE)
    with pytest.raises(TypeError, match="texts\\[1\\]"):
        train_tokenizer(["fine", b"bytes"], tmp_path / "t.model", VOCAB_SIZE)
    with pytest.raises(ValueError, match="cannot be overridden"):
        train_tokenizer(corpus, tmp_path / "t.model", VOCAB_SIZE, model_prefix="x")
    with pytest.raises(ValueError, match="unknown SentencePiece trainer option"):
        train_tokenizer(corpus, tmp_path / "t.model", VOCAB_SIZE, not_an_option=1)
    bad_utf8 = tmp_path / "latin1.txt"
    bad_utf8.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        train_tokenizer(bad_utf8, tmp_path / "t.model", VOCAB_SIZE)
    assert sorted(os.listdir(tmp_path)) == ["latin1.txt"]


def test_encode_decode_bad_input(tok):
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="surrogate"):
        tok.encode("a\ud800b")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([5, VOCAB_SIZE])
    with pytest.raises(ValueError, match="no pad piece"):
        tok.decode([5, -1])
    with pytest.raises(ValueError, match="out of range"):
        tok.id_to_piece(VOCAB_SIZE)
