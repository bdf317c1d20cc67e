"""Checkers for lesson 05 (the Llama model, §2.2 and Table 1).

5.1 block_forward(block, x, freqs_cis): a TransformerBlock's forward from its submodules (pre-normalisation).
5.2 count_parameters(args): the parameter count of the model that a ModelArgs describes, without building it.
"""

from __future__ import annotations

import torch

from ..model import (
    LLAMA2_PARAMS,
    LLAMA2_VOCAB_SIZE,
    ModelArgs,
    TransformerBlock,
    count_parameters,
    precompute_freqs_cis,
)
from .core import make_checker

# --- 5.1 block_forward ------------------------------------------------------------------------------------


def _block(args: ModelArgs, g: torch.Generator) -> TransformerBlock:
    block = TransformerBlock(0, args)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("norm.weight"):  # different, non-unit norm weights expose a swapped or shared norm
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return block.eval()


def _block_cases():
    g = torch.Generator().manual_seed(501)

    def case(args: ModelArgs, batch: int, seqlen: int):
        x = torch.randn(batch, seqlen, args.dim, generator=g)
        return _block(args, g), x, precompute_freqs_cis(args.head_dim, seqlen, args.rope_theta)

    gqa = ModelArgs(dim=48, n_layers=1, n_heads=6, n_kv_heads=2, multiple_of=16, max_seq_len=32)
    mha = ModelArgs(dim=32, n_layers=1, n_heads=4, multiple_of=32, norm_eps=1e-6, max_seq_len=32)
    mqa = ModelArgs(dim=64, n_layers=1, n_heads=8, n_kv_heads=1, multiple_of=1, ffn_dim_multiplier=1.3)
    return [
        ("a GQA block (6 query heads, 2 key/value heads), batch 2, 5 tokens", case(gqa, 2, 5)),
        ("a multi-head block, batch 3, 7 tokens, norm_eps 1e-6", case(mha, 3, 7)),
        ("a multi-query block (one key/value head), 4 tokens", case(mqa, 1, 4)),
        ("a sequence of length 1", case(gqa, 2, 1)),
    ]


def _block_forward(block, x, freqs_cis):
    return block(x, freqs_cis)


def _post_norm(block, x, freqs_cis):
    h = block.attention_norm(x + block.attention(x, freqs_cis))
    return block.ffn_norm(h + block.feed_forward(h))


def _no_attention_residual(block, x, freqs_cis):
    h = block.attention(block.attention_norm(x), freqs_cis)
    return h + block.feed_forward(block.ffn_norm(h))


def _no_ffn_residual(block, x, freqs_cis):
    h = x + block.attention(block.attention_norm(x), freqs_cis)
    return block.feed_forward(block.ffn_norm(h))


def _one_norm(block, x, freqs_cis):
    h = x + block.attention(block.attention_norm(x), freqs_cis)
    return h + block.feed_forward(block.attention_norm(h))


def _parallel(block, x, freqs_cis):
    h = x + block.attention(block.attention_norm(x), freqs_cis)
    return h + block.feed_forward(block.ffn_norm(x))


check_block_forward = make_checker(
    "5.1 block_forward",
    _block_forward,
    _block_cases,
    [
        (
            _post_norm,
            "you normalised after the residual additions (post-norm, as in the original Transformer); Llama "
            "normalises each sub-layer's INPUT and adds its output to the unnormalised stream: "
            "h = x + attention(attention_norm(x)).",
        ),
        (
            _no_attention_residual,
            "the residual connection around attention is missing: h = x + attention(attention_norm(x)).",
        ),
        (
            _no_ffn_residual,
            "the residual connection around the feed-forward network is missing: out = h + feed_forward(ffn_norm(h)).",
        ),
        (
            _one_norm,
            "you used attention_norm for both sub-layers; each has its own weights: the FFN reads ffn_norm(h).",
        ),
        (
            _parallel,
            "the FFN reads the block's input x (a parallel block, as in GPT-J); in Llama it reads h, the stream "
            "after the attention residual: out = h + feed_forward(ffn_norm(h)).",
        ),
    ],
)

# --- 5.2 count_parameters ---------------------------------------------------------------------------------


def _llama2(name: str) -> ModelArgs:
    return ModelArgs.from_params(LLAMA2_PARAMS[name], vocab_size=LLAMA2_VOCAB_SIZE)


def _count_cases():
    return [
        ("the 70B's params.json (GQA: 8 key/value heads; FFN multiplier 1.3), vocabulary 32000", (_llama2("70B"),)),
        ("the 7B's params.json, vocabulary 32000", (_llama2("7B"),)),
        ("the 13B's params.json, vocabulary 32000", (_llama2("13B"),)),
        (
            "a small GQA model (dim 96, 3 layers, 6 heads, 2 key/value heads, multiple_of 16, multiplier 1.3)",
            (
                ModelArgs(
                    dim=96, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=101, multiple_of=16, ffn_dim_multiplier=1.3
                ),
            ),
        ),  # fmt: skip
        (
            "a small MQA model (one key/value head, multiple_of 1)",
            (ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=1, vocab_size=50, multiple_of=1),),
        ),
    ]


def _count_mistake(args, *, output=True, kv_heads=None, norms=True, ffn_matrices=3, hidden=None):
    e, layers = args.dim, args.n_layers
    kv = (args.kv_heads if kv_heads is None else kv_heads(args)) * args.head_dim
    hidden = args.hidden_dim if hidden is None else hidden(args)
    per_layer = 2 * e * e + 2 * e * kv + ffn_matrices * e * hidden + (2 * e if norms else 0)
    return args.vocab_size * e * (2 if output else 1) + layers * per_layer + (e if norms else 0)


check_count_parameters = make_checker(
    "5.2 count_parameters",
    count_parameters,
    _count_cases,
    [
        (
            lambda args: _count_mistake(args, output=False),
            "the output head is missing: Llama 2 does not tie it to the embedding, so count another vocab_size * dim.",
        ),
        (
            lambda args: _count_mistake(args, kv_heads=lambda a: a.n_heads),
            "wk and wv have n_kv_heads * head_dim rows (args.kv_heads), not n_heads * head_dim: with GQA they "
            "are 8 times smaller than wq in the 70B.",
        ),
        (
            lambda args: _count_mistake(args, norms=False),
            "the RMSNorm weights are missing: dim each for attention_norm and ffn_norm in every layer, plus the "
            "final norm.",
        ),
        (
            lambda args: _count_mistake(args, ffn_matrices=2),
            "SwiGLU has THREE matrices (w1, w3: dim -> hidden; w2: hidden -> dim), not two.",
        ),
        (
            lambda args: _count_mistake(args, hidden=lambda a: 4 * a.dim),
            "the FFN hidden size is not 4 * dim but Meta's rule: 2/3 of it, times ffn_dim_multiplier, rounded "
            "up to multiple_of (args.hidden_dim: 11008 for the 7B).",
        ),
    ],
    atol=0.0,
    rtol=0.0,
)

__all__ = ["check_block_forward", "check_count_parameters"]
