"""A checkpoint folder -> one GGUF file, llama.cpp's format, written with llama.cpp's own `gguf` package.

    llama2-minimal export sft sft.gguf          # then, e.g.: llama-cli -m sft.gguf, or llama_cpp.Llama("sft.gguf")

The file holds what llama.cpp's LLAMA architecture needs:
- the hyperparameters (llama.context_length, embedding_length, block_count, feed_forward_length, attention heads
  and key/value heads, rope dimension and base, RMSNorm epsilon);
- the SentencePiece vocabulary: every piece with its score and type (normal, unknown, control, byte), the ids of
  BOS, EOS and UNK, "add BOS", the dummy prefix, and Meta's chat format as a chat template;
- the weights under llama.cpp's names (token_embd, blk.N.attn_q ... output). They stay in Meta's layout: llama.cpp
  applies rotary embeddings to interleaved pairs (2j, 2j+1), as Meta's code does, so q and k need none of the row
  permutation that Hugging Face's layout needs (tests/test_gguf_export.py checks the logits against llama.cpp).

llama.cpp's SentencePiece tokenizer merges pieces by score as SentencePiece's BPE does, so only BPE tokenizers are
exported (Llama 2's, and every one `train_tokenizer` makes). The file is written beside its destination and renamed
into place at the end: an interrupted export leaves no half-written .gguf.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch

from .chat import CHAT_TEMPLATE
from .checkpoint import TOKENIZER_FILE, load_state
from .model import ModelArgs
from .tokenizer import Tokenizer

OUT_TYPES = ("f32", "f16")
_GGUF_HINT = 'pip install gguf (or: pip install -e ".[export]")'

# Meta's names inside layers.N -> llama.cpp's inside blk.N (gguf.MODEL_TENSOR members)
_LAYER_TENSORS = {
    "attention_norm.weight": "ATTN_NORM",
    "attention.wq.weight": "ATTN_Q",
    "attention.wk.weight": "ATTN_K",
    "attention.wv.weight": "ATTN_V",
    "attention.wo.weight": "ATTN_OUT",
    "ffn_norm.weight": "FFN_NORM",
    "feed_forward.w1.weight": "FFN_GATE",
    "feed_forward.w2.weight": "FFN_DOWN",
    "feed_forward.w3.weight": "FFN_UP",
}
_TOP_TENSORS = {"tok_embeddings.weight": "TOKEN_EMBD", "norm.weight": "OUTPUT_NORM", "output.weight": "OUTPUT"}


def gguf_package():
    try:
        import gguf
    except ImportError:
        raise ImportError(f"exporting to GGUF needs llama.cpp's gguf package: {_GGUF_HINT}") from None
    return gguf


def gguf_tensor_name(meta_name: str) -> str:
    """Meta's tensor name -> llama.cpp's (e.g. layers.0.attention.wq.weight -> blk.0.attn_q.weight)."""
    gguf = gguf_package()
    if meta_name in _TOP_TENSORS:
        return gguf.TENSOR_NAMES[gguf.MODEL_TENSOR[_TOP_TENSORS[meta_name]]] + ".weight"
    parts = meta_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit() and parts[2] in _LAYER_TENSORS:
        base = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR[_LAYER_TENSORS[parts[2]]]]
        return base.format(bid=int(parts[1])) + ".weight"
    raise ValueError(f"unexpected tensor {meta_name!r}: not part of a Llama 2 model")


def vocabulary(tokenizer: Tokenizer, vocab_size: int) -> tuple[list[str], list[float], list[int]]:
    """(pieces, scores, llama.cpp token types) for every id of the model's embedding.

    A model whose embedding is larger than the tokenizer (padded, as some checkpoints are) gets unused pieces for
    the ids past the tokenizer's; a tokenizer with more pieces than the model has rows is an error."""
    gguf = gguf_package()
    sp = tokenizer._sp
    if tokenizer.n_words > vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.n_words} pieces but the model only {vocab_size} embedding "
                         "rows: they do not belong together; export the folder the model was trained in.")  # fmt: skip
    pieces, scores, types = [], [], []
    for i in range(tokenizer.n_words):
        pieces.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)
    for i in range(tokenizer.n_words, vocab_size):
        pieces.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    return pieces, scores, [int(t) for t in types]


def _check_tokenizer(tokenizer: Tokenizer):
    from .hf_tokenizer import check_llama_tokenizer

    spec = check_llama_tokenizer(tokenizer, "llama.cpp (whose Llama tokenizer merges pieces by score, as BPE does)")
    if min(tokenizer.bos_id, tokenizer.eos_id) < 0:
        raise ValueError(f"{tokenizer.model_path} has no BOS or EOS piece, which a Llama 2 chat model needs.")
    return spec


def write_gguf(args: ModelArgs, state: dict[str, torch.Tensor], tokenizer: Tokenizer, path: Path, outtype: str = "f32",
               name: str = "llama2-minimal") -> None:  # fmt: skip
    """Write (args, Meta-named state, tokenizer) as a GGUF file at `path` (not atomically: see export_gguf)."""
    gguf = gguf_package()
    if outtype not in OUT_TYPES:
        raise ValueError(f"outtype={outtype!r}: choose one of {OUT_TYPES}.")
    spec = _check_tokenizer(tokenizer)
    pieces, scores, types = vocabulary(tokenizer, args.vocab_size)
    file_type = gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16

    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        writer.add_name(name)
        writer.add_context_length(args.max_seq_len)
        writer.add_embedding_length(args.dim)
        writer.add_block_count(args.n_layers)
        writer.add_feed_forward_length(args.hidden_dim)
        writer.add_head_count(args.n_heads)
        writer.add_head_count_kv(args.kv_heads)
        writer.add_rope_dimension_count(args.head_dim)
        writer.add_rope_freq_base(args.rope_theta)
        writer.add_layer_norm_rms_eps(args.norm_eps)
        writer.add_vocab_size(args.vocab_size)
        writer.add_file_type(file_type)

        writer.add_tokenizer_model("llama")  # llama.cpp's name for a SentencePiece BPE vocabulary
        writer.add_tokenizer_pre("default")
        writer.add_token_list(pieces)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(tokenizer.bos_id)
        writer.add_eos_token_id(tokenizer.eos_id)
        if tokenizer.unk_id >= 0:
            writer.add_unk_token_id(tokenizer.unk_id)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(spec.add_dummy_prefix)  # SentencePiece's dummy prefix ("▁" before the text)
        writer.add_remove_extra_whitespaces(False)  # whitespace kept as written (LLAMA2_TRAINER_SPEC)
        writer.add_chat_template(CHAT_TEMPLATE)

        for key, tensor in state.items():
            if key == "rope.freqs":  # Meta's precomputed rotary table: llama.cpp computes its own
                continue
            array = tensor.detach().to(torch.float32).cpu()
            # llama.cpp keeps 1-D tensors (the norms) in float32 whatever the file type.
            if outtype == "f16" and array.ndim == 2:
                array = array.to(torch.float16)
            writer.add_tensor(gguf_tensor_name(key), array.contiguous().numpy())

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _model_name(folder: Path) -> str:
    """The name stored in the file: the folder's, or its parent's for a stage's model/ folder (sft-1a2b3c...)."""
    folder = folder.resolve()
    return folder.parent.name if folder.name == "model" else folder.name


def export_gguf(src: str | os.PathLike, dst: str | os.PathLike, outtype: str = "f32",
                overwrite: bool = False) -> Path:  # fmt: skip
    """A checkpoint folder (Meta's or Hugging Face's layout, with its tokenizer.model) -> a GGUF file at dst."""
    gguf_package()  # before any work: a missing package is the first thing to say
    src, dst = Path(src), Path(dst)
    if dst.is_dir():
        raise ValueError(f"{dst} is a folder: give the GGUF file to write, e.g. {dst / 'model.gguf'}")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists: choose another name or pass --force to replace it.")
    if outtype not in OUT_TYPES:
        raise ValueError(f"outtype={outtype!r}: choose one of {OUT_TYPES}.")
    args, state = load_state(src)
    if not (src / TOKENIZER_FILE).is_file():
        raise ValueError(f"{src} has no {TOKENIZER_FILE}, which a GGUF file must carry: copy the tokenizer the model "
                         "was trained with into the folder.")  # fmt: skip
    tokenizer = Tokenizer(src / TOKENIZER_FILE)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
    os.close(fd)
    try:
        write_gguf(args, state, tokenizer, Path(tmp), outtype, name=_model_name(src))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is meant to be shared
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dst
