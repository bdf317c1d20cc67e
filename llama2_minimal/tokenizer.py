"""SentencePiece BPE tokenizer with Llama 2's settings.

Llama 2 uses "the same tokenizer as Llama 1": a SentencePiece BPE model with a 32k vocabulary, numbers
split into individual digits and unknown UTF-8 characters decomposed into bytes (Llama 2 paper, §2.2).
``LLAMA2_TRAINER_SPEC`` is the ``trainer_spec`` stored inside Meta's ``tokenizer.model``, so a tokenizer
trained here behaves like Meta's, only with a smaller vocabulary. ``Tokenizer`` mirrors the interface of
Meta's ``llama/tokenizer.py`` and loads Meta's ``tokenizer.model`` as well as ours.

Round trip
----------
For models with byte fallback (Meta's and every model ``train_tokenizer`` makes),
``tok.decode(tok.encode(s)) == s`` holds for every Python string that can be encoded as UTF-8
(i.e. without lone surrogates, which raise ``ValueError``). Plain SentencePiece breaks this in one place:
it uses U+2581 ("▁") as its internal whitespace marker, so a literal "▁" in the input is encoded exactly
like a space and decodes to " ". ``Tokenizer.encode`` therefore encodes each literal "▁" as its three
UTF-8 byte pieces ``<0xE2> <0x96> <0x81>`` (byte pieces decode to raw bytes, not to a space). Text without
"▁" goes straight to SentencePiece, so its ids are identical to Meta's tokenizer; text with "▁" gets ids
that differ from Meta's ``sp_model.encode`` (which would have lost the character). For a model without byte
fallback there are no byte pieces to use: "▁" then encodes like a space, as in plain SentencePiece, and
characters outside the vocabulary become ``<unk>``, so no round trip is promised for such models.
"""

from __future__ import annotations

import contextlib
import io
import operator
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import sentencepiece as spm

__all__ = ["LLAMA2_TRAINER_SPEC", "Tokenizer", "train_tokenizer"]

# The trainer_spec and normalizer_spec found in Meta's Llama 2 tokenizer.model. Only two settings are
# scaled: vocab_size (32000 in the paper, §2.2) is an argument of train_tokenizer, and num_threads (80 at
# Meta) is 1 because a single thread makes training reproducible byte for byte.
LLAMA2_TRAINER_SPEC: dict[str, Any] = {
    "model_type": "bpe",
    "vocab_size": 32000,
    "self_test_sample_size": 0,
    "character_coverage": 0.99995,
    "input_sentence_size": 200_000_000,
    "seed_sentencepiece_size": 1_000_000,
    "shrinking_factor": 0.75,
    "num_threads": 1,
    "num_sub_iterations": 2,
    "max_sentence_length": 4192,
    "shuffle_input_sentence": True,
    "max_sentencepiece_length": 16,
    "split_by_unicode_script": True,
    "split_by_whitespace": True,
    "split_by_number": True,
    "treat_whitespace_as_suffix": False,
    "split_digits": True,
    "allow_whitespace_only_pieces": True,
    "vocabulary_output_piece_score": True,
    "hard_vocab_limit": True,
    "use_all_vocab": False,
    "byte_fallback": True,
    "required_chars": "",
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "unk_surface": " \u2047 ",
    "unk_piece": "<unk>",
    "bos_piece": "<s>",
    "eos_piece": "</s>",
    "pad_piece": "<pad>",
    "train_extremely_large_corpus": False,
    # normalizer_spec: no Unicode normalization and whitespace kept as written, so code and repeated
    # spaces survive; a dummy "▁" is prepended so a word is the same piece at the start of a text and
    # after a space.
    "normalization_rule_name": "identity",
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
}

# SentencePiece's whitespace marker, U+2581 LOWER ONE EIGHTH BLOCK.
_WS_MARKER = "\u2581"

# Arguments that train_tokenizer sets itself and that overrides must not replace.
_RESERVED_ARGS = frozenset({"input", "sentence_iterator", "model_writer", "model_prefix", "vocab_size"})

_TOO_SMALL_RE = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")
_TOO_LARGE_RE = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")

# An empty ModelProto.normalizer_spec (field 3) holding only add_dummy_prefix (field 3) = false. Protobuf
# merges repeated occurrences of a singular message field, so appending this to a serialized model gives
# the same model without the dummy prefix; that avoids a dependency on the protobuf package.
_NO_DUMMY_PREFIX_PATCH = b"\x1a\x02\x18\x00"


class _MalformedProto(ValueError):
    pass


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            raise _MalformedProto("it ends in the middle of a field")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
    raise _MalformedProto("it holds an over-long varint")


def _check_model_proto(buf: bytes) -> None:
    """Walk the top level of a serialized sentencepiece ModelProto and raise if it is not one.

    SentencePiece's own parser accepts a file truncated at a field boundary (protobuf fields are all
    optional), so a cut-off download could load as a model with part of its vocabulary. Every model that
    SentencePiece writes has pieces (field 1), trainer_spec (2) and normalizer_spec (3), in that order.
    """
    if not buf:
        raise _MalformedProto("the file is empty")
    seen = set()
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise _MalformedProto("it holds a field numbered 0")
        if wire_type == 0:
            _, pos = _read_varint(buf, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _read_varint(buf, pos)
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise _MalformedProto(f"it holds an unknown wire type {wire_type}")
        if pos > len(buf):
            raise _MalformedProto("it ends in the middle of a field (truncated?)")
        seen.add(field)
    missing = {1: "pieces", 2: "trainer_spec", 3: "normalizer_spec"}.keys() - seen
    if missing:
        raise _MalformedProto(f"it lacks protobuf field(s) {sorted(missing)} (truncated?)")


class Tokenizer:
    """A SentencePiece model with the interface of Meta's ``llama/tokenizer.py``.

    Loads any SentencePiece ``tokenizer.model``: Meta's Llama 2 one or one made by ``train_tokenizer``.
    Attributes: ``n_words`` (vocabulary size), ``bos_id``, ``eos_id``, ``pad_id``, ``unk_id`` (-1 when the
    model has no such piece, as Meta's has no pad) and ``model_path`` (a ``str``). See the module docstring
    for the round-trip guarantee and how a literal "▁" is encoded.
    """

    def __init__(self, model_path: str | os.PathLike[str]) -> None:
        path = Path(model_path)
        if not path.exists():
            raise FileNotFoundError(
                f"no tokenizer model at {str(path)!r}: train one with "
                f"llama2_minimal.tokenizer.train_tokenizer(texts, {str(path)!r}, vocab_size=...) "
                "or pass the path of an existing tokenizer.model (e.g. Meta's Llama 2 tokenizer.model)"
            )
        if path.is_dir():
            raise IsADirectoryError(
                f"{str(path)!r} is a directory; pass the path of the tokenizer.model file inside it"
            )
        data = path.read_bytes()
        try:
            _check_model_proto(data)
        except _MalformedProto as e:
            raise ValueError(
                f"{str(path)!r} is not a SentencePiece model: {e}. Re-download it or train a new one."
            ) from None
        self._load(data, str(path))

    def _load(self, data: bytes, model_path: str) -> None:
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(data)
        except RuntimeError as e:
            raise ValueError(f"{model_path!r} is not a SentencePiece model: SentencePiece refused it ({e}).") from None

        self.model_path: str = model_path
        self._sp = sp
        self.n_words: int = sp.vocab_size()
        self.bos_id: int = sp.bos_id()
        self.eos_id: int = sp.eos_id()
        self.pad_id: int = sp.pad_id()
        self.unk_id: int = sp.unk_id()

        # The ids of "▁"'s UTF-8 bytes, if the model has byte pieces (see the module docstring).
        marker_ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in _WS_MARKER.encode("utf-8")]
        if all(sp.is_byte(i) for i in marker_ids):
            self._marker_ids: list[int] | None = marker_ids
            self._sp_no_prefix: spm.SentencePieceProcessor | None = spm.SentencePieceProcessor()
            self._sp_no_prefix.LoadFromSerializedProto(data + _NO_DUMMY_PREFIX_PATCH)
        else:
            self._marker_ids = None
            self._sp_no_prefix = None

    # Pickle the model bytes, not the processors, so a Tokenizer reaches DataLoader worker processes
    # without relying on SentencePiece's own pickling or on the file still being there.
    def __getstate__(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "model_proto": self._sp.serialized_model_proto()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._load(state["model_proto"], state["model_path"])

    def __len__(self) -> int:
        return self.n_words

    def __repr__(self) -> str:
        return f"Tokenizer({self.model_path!r}, n_words={self.n_words})"

    def encode(self, s: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Encode ``s`` to ids, with BOS/EOS added as in Meta's ``Tokenizer.encode``."""
        if not isinstance(s, str):
            raise TypeError(f"encode expects a str, got {type(s).__name__}; decode bytes to str first")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"cannot encode the text: it holds a lone surrogate {s[e.start]!r} at index {e.start}, "
                "which has no UTF-8 form; remove it or repair the text "
                "(e.g. s.encode('utf-8', 'replace').decode())"
            ) from None
        if self._marker_ids is None or _WS_MARKER not in s:
            ids = self._sp.encode(s)
        else:
            # Each literal "▁" becomes its byte pieces; the text after one continues the text before it,
            # so it is encoded without the dummy prefix (which belongs to the start of the text only).
            first, *rest = s.split(_WS_MARKER)
            ids = self._sp.encode(first)
            for part in rest:
                ids += self._marker_ids
                ids += self._sp_no_prefix.encode(part)
        if bos:
            if self.bos_id < 0:
                raise ValueError(f"{self.model_path} has no BOS piece; call encode(..., bos=False)")
            ids = [self.bos_id, *ids]
        if eos:
            if self.eos_id < 0:
                raise ValueError(f"{self.model_path} has no EOS piece; call encode(..., eos=False)")
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Decode a list of ids or a 1-D tensor/array of ids; BOS/EOS (control pieces) decode to ""."""
        ndim = getattr(ids, "ndim", 1)
        if ndim != 1:
            raise ValueError(f"decode expects a 1-D sequence of ids, got {ndim} dimensions; decode each row separately")
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = [operator.index(i) for i in ids]
        for i in ids:
            self._check_id(i)
        return self._sp.decode(ids)

    def id_to_piece(self, id: int) -> str:
        self._check_id(operator.index(id))
        return self._sp.id_to_piece(operator.index(id))

    def piece_to_id(self, piece: str) -> int:
        """The id of ``piece``; like SentencePiece, ``unk_id`` for a piece not in the vocabulary."""
        return self._sp.piece_to_id(piece)

    def _check_id(self, i: int) -> None:
        if not 0 <= i < self.n_words:
            hint = " (pad_id is -1: this tokenizer has no pad piece; strip padding first)" if i == -1 else ""
            raise ValueError(f"token id {i} is out of range [0, {self.n_words}){hint}")


def _iter_lines(texts: Iterable[str] | str | os.PathLike[str]) -> Iterator[str]:
    # SentencePiece trains on lines (Meta trained from a text file), so documents are split at newlines:
    # "\n" never becomes part of a piece and is encoded with byte fallback, as in Meta's model.
    if isinstance(texts, (str, os.PathLike)):
        path = Path(texts)
        if not path.is_file():
            raise FileNotFoundError(
                f"no text file at {str(path)!r}: a str or path is read as a text file; "
                "to train on strings pass a list of documents, e.g. [text]"
            )
        with path.open(encoding="utf-8", newline="\n") as f:
            try:
                for line in f:
                    line = line.rstrip("\n")
                    if line:
                        yield line
            except UnicodeDecodeError as e:
                raise ValueError(f"{str(path)!r} is not UTF-8 text ({e}); convert it to UTF-8") from None
        return
    for i, doc in enumerate(texts):
        if not isinstance(doc, str):
            raise TypeError(f"texts[{i}] is a {type(doc).__name__}; every document must be a str")
        for line in doc.split("\n"):
            if line:
                yield line


def train_tokenizer(
    texts: Iterable[str] | str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    vocab_size: int,
    **overrides: Any,
) -> Tokenizer:
    """Train a SentencePiece BPE tokenizer with Llama 2's settings and write it to ``out_path``.

    ``texts`` is an iterable of documents (str), or the path of a UTF-8 text file. Documents are split into
    lines; empty lines are skipped, and SentencePiece skips lines longer than ``max_sentence_length``
    (4192 bytes). ``overrides`` replace entries of ``LLAMA2_TRAINER_SPEC`` or add other SentencePiece
    trainer flags (e.g. ``minloglevel=0`` to see its log). Training runs in memory on one thread, so the
    same input gives the same file byte for byte; the file is written to a temporary file in the same
    folder and renamed into place, so an interrupted run never leaves a partial ``out_path`` behind.
    Raises ``ValueError`` naming the fix for an empty corpus or a vocab_size that does not fit the corpus.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    reserved = _RESERVED_ARGS & overrides.keys()
    if reserved:
        raise ValueError(f"{sorted(reserved)} cannot be overridden: pass texts, out_path and vocab_size as arguments")
    spec = {**LLAMA2_TRAINER_SPEC, **overrides, "vocab_size": vocab_size}
    spec.setdefault("minloglevel", 2)
    n_special = sum(spec[k] >= 0 for k in ("unk_id", "bos_id", "eos_id", "pad_id"))
    n_meta = n_special + (256 if spec["byte_fallback"] else 0)
    if vocab_size <= n_meta:
        raise ValueError(
            f"vocab_size={vocab_size} leaves no room for characters: {n_special} special pieces"
            + (" and 256 byte-fallback pieces" if spec["byte_fallback"] else "")
            + f" already take {n_meta} ids; raise vocab_size above {n_meta}"
        )

    # Count what the trainer reads, and keep an exception raised while reading: SentencePiece would wrap
    # it in a RuntimeError that hides its type (a KeyboardInterrupt included).
    n_lines = 0
    reader_error: BaseException | None = None

    def sentences() -> Iterator[str]:
        nonlocal n_lines, reader_error
        try:
            for line in _iter_lines(texts):
                n_lines += 1
                yield line
        except BaseException as e:
            reader_error = e
            raise

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=sentences(), model_writer=model, **spec)
    except RuntimeError as e:
        if reader_error is not None:
            raise reader_error from None
        raise _training_error(str(e), vocab_size, n_lines, n_meta, spec) from None
    if reader_error is not None:
        raise reader_error

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Tokenizer(out)


def _training_error(message: str, vocab_size: int, n_lines: int, n_meta: int, spec: dict) -> Exception:
    """Turn SentencePiece's C++ check failures into errors that say what to change."""
    if n_lines == 0 or "sentences_.empty()" in message:
        if n_lines == 0:
            return ValueError("the training corpus is empty: give at least one non-empty line of text")
        return ValueError(
            f"none of the {n_lines} training lines is usable: SentencePiece skips lines longer than "
            f"max_sentence_length={spec['max_sentence_length']} bytes; split the text into shorter lines"
        )
    if m := _TOO_SMALL_RE.search(message):
        need = int(m.group(2))
        return ValueError(
            f"vocab_size={vocab_size} is too small for this corpus: it needs at least {need} pieces "
            f"({n_meta} special and byte pieces + {need - n_meta} characters covering "
            f"character_coverage={spec['character_coverage']} of the text); raise vocab_size to at least "
            f"{need} or lower character_coverage"
        )
    if m := _TOO_LARGE_RE.search(message):
        return ValueError(
            f"vocab_size={vocab_size} is too large for this corpus: it only yields {m.group(2)} distinct "
            f"pieces; lower vocab_size to at most {m.group(2)} or give more text"
        )
    if "unknown field name" in message:
        return ValueError(f"unknown SentencePiece trainer option in overrides: {message}")
    return ValueError(f"SentencePiece training failed: {message}")
