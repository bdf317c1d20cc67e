"""The course tokenizer in Hugging Face's format: tokenizer.json, tokenizer_config.json, special_tokens_map.json.

transformers reads a SentencePiece `tokenizer.model` only through a converter that guesses the file's kind
(without a tokenizer config it may take it for a tiktoken file and fail). A Hugging Face folder that we write
therefore carries the tokenizer as the `tokenizers` library's own file, built here from the SentencePiece model
without any Hugging Face package, so that `AutoTokenizer.from_pretrained(folder)` loads it as it is:

    normalizer      "▁" before the text, every space replaced by "▁": SentencePiece's dummy prefix and whitespace
                    escaping with the identity rule (no Unicode normalisation, spaces kept as written)
    model           BPE over the SentencePiece pieces (same ids); a merge for every way a piece splits into two
                    pieces, ranked by the piece's score (SentencePiece BPE merges the best-scored pair first);
                    byte fallback for characters outside the vocabulary, as SentencePiece does
    post-processor  BOS before the text (Meta's Tokenizer.encode(s, bos=True, eos=False))
    decoder         "▁" back to spaces, byte pieces back to bytes, the dummy prefix's space dropped
    chat_template   Meta's dialog format (chat.CHAT_TEMPLATE), so that apply_chat_template gives encode_dialog's ids

Split digits need no rule of their own: the vocabulary has no piece with two digits, so BPE cannot join them.
Special tokens are matched in the text before normalising, and the normaliser runs on each stretch of text
between them, which gives every turn of a rendered dialog ("<s>[INST] ...") its own dummy prefix, as Meta
encodes each turn separately.

Where it differs from `llama2_minimal.tokenizer.Tokenizer` (none of these occur in the world's prompts):
- a literal "▁" (U+2581) in the text: ours encodes it as its three byte pieces so that it round-trips; here it
  is read as a space marker (as plain SentencePiece does);
- the literal strings "<s>", "</s>" and "<unk>" in the text: ours encodes them as characters; transformers
  turns them into the special tokens (pass split_special_tokens=True to avoid it);
- a piece that two different pairs of pieces can form, both present side by side and overlapping (for example
  "ab"+"a"+"ba" with "aba" in the vocabulary): SentencePiece merges the leftmost pair, Hugging Face's BPE the
  pair ranked first. The tests compare the ids on every chat prompt of the world.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .chat import CHAT_TEMPLATE
from .tokenizer import Tokenizer

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_MARKER = "\u2581"  # SentencePiece's whitespace marker
# How transformers must treat the special pieces: whole tokens, matched before the normaliser runs.
_ADDED = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}


_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


@dataclass(frozen=True)
class SentencePieceSpec:
    """What a SentencePiece model does to text before and while it splits it (from its trainer and normaliser specs;
    the protobuf defaults where a field is absent)."""

    model_type: str = "unigram"
    normalization: str = ""  # the rule's name: "identity" keeps the text as written
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True


def _fields(buf: bytes):
    """(field number, value) of a serialized protobuf message, read without the protobuf package."""
    from .tokenizer import _read_varint

    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        else:  # fixed 64 or 32 bits
            size = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        yield number, value


def sentencepiece_spec(proto: bytes) -> SentencePieceSpec:
    """The spec of a serialized ModelProto: trainer_spec (field 2) holds model_type (3); normalizer_spec (3) holds
    name (1), add_dummy_prefix (3) and remove_extra_whitespaces (4). Protobuf merges repeated messages: the last
    value of a field wins."""
    found = {}
    for number, value in _fields(proto):
        if number == 2:
            for n, v in _fields(value):
                if n == 3:
                    found["model_type"] = _MODEL_TYPES.get(v, str(v))
        elif number == 3:
            for n, v in _fields(value):
                if n == 1:
                    found["normalization"] = v.decode("utf-8", "replace")
                elif n in (3, 4):
                    found["add_dummy_prefix" if n == 3 else "remove_extra_whitespaces"] = bool(v)
    return SentencePieceSpec(**found)


def check_llama_tokenizer(tok: Tokenizer, target: str) -> SentencePieceSpec:
    """The tokenizer's spec, or a ValueError when `target` (transformers, llama.cpp) cannot reproduce it: only
    SentencePiece BPE with byte fallback, no normalisation and whitespace kept as written (Llama 2's settings, and
    every tokenizer train_tokenizer makes) is written out."""
    spec = sentencepiece_spec(tok._sp.serialized_model_proto())
    problems = []
    if spec.model_type != "bpe":
        problems.append(f"a {spec.model_type} model, not BPE")
    if not any(tok._sp.is_byte(i) for i in range(tok.n_words)):
        problems.append("no byte-fallback pieces")
    if spec.normalization != "identity":
        problems.append(f"the {spec.normalization or 'default'!r} normalisation rule, not 'identity'")
    if spec.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces")
    if problems:
        raise ValueError(f"{tok.model_path} has {', '.join(problems)}; only tokenizers with Llama 2's settings (BPE, "
                         f"byte fallback, identity normalisation) can be written for {target}.")  # fmt: skip
    return spec


def _special(tok: Tokenizer) -> dict[str, int]:
    """The control and unknown pieces (<unk>, <s>, </s>) by name."""
    sp = tok._sp
    return {sp.id_to_piece(i): i for i in range(tok.n_words) if sp.is_control(i) or sp.is_unknown(i)}


def bpe_merges(tok: Tokenizer) -> list[tuple[str, str]]:
    """Every (left, right) pair of pieces whose concatenation is a normal piece, best-scored piece first.

    SentencePiece's BPE encoder repeatedly merges the adjacent pair whose concatenation has the highest score
    (ties: the leftmost); Hugging Face's BPE merges the adjacent pair ranked first in this list. Splits of the same
    piece are ordered by the ids of their halves (the more frequent halves first)."""
    sp = tok._sp
    normal = {sp.id_to_piece(i): i for i in range(tok.n_words)
              if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))}  # fmt: skip
    merges = []
    for piece, i in normal.items():
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        for left, right in sorted((s for s in splits if s[0] in normal and s[1] in normal),
                                  key=lambda s: (normal[s[0]], normal[s[1]])):  # fmt: skip
            merges.append((-sp.get_score(i), i, left, right))
    merges.sort(key=lambda m: (m[0], m[1]))  # stable: a piece's splits keep their order
    return [(left, right) for _, _, left, right in merges]


def tokenizer_json(tok: Tokenizer) -> dict:
    """The `tokenizers` library's serialisation of the tokenizer (the content of tokenizer.json)."""
    sp = tok._sp
    spec = check_llama_tokenizer(tok, "transformers")
    special = _special(tok)
    bos = sp.id_to_piece(tok.bos_id)
    unk = sp.id_to_piece(tok.unk_id) if tok.unk_id >= 0 else None
    added = [{"id": i, "content": piece, **_ADDED} for piece, i in sorted(special.items(), key=lambda kv: kv[1])]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                *([{"type": "Prepend", "prepend": _MARKER}] if spec.add_dummy_prefix else []),
                {"type": "Replace", "pattern": {"String": " "}, "content": _MARKER},
            ],
        },
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [tok.bos_id], "tokens": [bos]}},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": _MARKER}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                *([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if spec.add_dummy_prefix else []),
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": unk,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": {sp.id_to_piece(i): i for i in range(tok.n_words)},
            "merges": [[left, right] for left, right in bpe_merges(tok)],
        },
    }


def tokenizer_config(tok: Tokenizer, max_seq_len: int) -> dict:
    sp = tok._sp
    special = _special(tok)
    unk = sp.id_to_piece(tok.unk_id) if tok.unk_id >= 0 else None
    return {
        # The generic class loads tokenizer.json as written; a model-specific class would rebuild the pipeline
        # from its own defaults (transformers 5's LlamaTokenizer does).
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": sp.id_to_piece(tok.bos_id),
        "eos_token": sp.id_to_piece(tok.eos_id),
        "unk_token": unk,
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_seq_len,
        "padding_side": "left",  # batched generation pads on the left
        "added_tokens_decoder": {
            str(i): {"content": piece, **_ADDED} for piece, i in sorted(special.items(), key=lambda kv: kv[1])
        },
        "chat_template": CHAT_TEMPLATE,
    }


def hf_tokenizer_files(tokenizer_model: str | os.PathLike, max_seq_len: int) -> dict[str, str]:
    """{file name: content} of the Hugging Face tokenizer files for a SentencePiece tokenizer.model."""
    tok = Tokenizer(tokenizer_model)
    data = tokenizer_json(tok)
    config = tokenizer_config(tok, max_seq_len)
    special_map = {k: config[k] for k in ("bos_token", "eos_token", "unk_token") if config[k] is not None}
    return {
        "tokenizer.json": json.dumps(data, ensure_ascii=False, indent=1) + "\n",
        "tokenizer_config.json": json.dumps(config, ensure_ascii=False, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special_map, ensure_ascii=False, indent=2) + "\n",
    }


def write_hf_tokenizer(tokenizer_model: str | os.PathLike, folder: str | os.PathLike, max_seq_len: int) -> None:
    """Write the Hugging Face tokenizer files into `folder` (a checkpoint being written: see checkpoint.save_state,
    which writes the whole folder atomically)."""
    for name, text in hf_tokenizer_files(tokenizer_model, max_seq_len).items():
        (Path(folder) / name).write_text(text, encoding="utf-8")
