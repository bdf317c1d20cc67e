"""Checkers for lesson 04 (attention and grouped-query attention, §2.2 and Table 18).

4.1 repeat_kv(x, n_rep): (B, T, K, D) -> (B, T, K*n_rep, D), Meta's layout, each key/value head repeated for its
    group of query heads.
4.2 causal_attention(q, k, v): softmax(q k^T / sqrt(D) + causal mask) v with q (B, H, S, D) and k, v (B, K, S, D),
    K dividing H (query head h reads key/value head h // (H/K)); returns (B, H, S, D).
4.3 kv_cache_bytes(args, seq_len, batch, bytes_per_value): the bytes of keys and values that a KV cache holds.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ..model import LLAMA2_PARAMS, KVCache, ModelArgs, causal_mask, repeat_kv
from .core import make_checker

# --- 4.1 repeat_kv ----------------------------------------------------------------------------------------


def _repeat_kv_cases():
    g = torch.Generator().manual_seed(401)

    def x(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    return [
        ("x of shape (2, 5, 2, 6), n_rep=4 (grouped-query attention)", (x(2, 5, 2, 6), 4)),
        ("one key/value head, n_rep=8 (multi-query attention)", (x(1, 3, 1, 4), 8)),
        ("n_rep=1 (multi-head attention: nothing to repeat)", (x(2, 4, 3, 4), 1)),
        ("a sequence of length 1, 8 key/value heads, n_rep=8 (the 70B's grouping)", (x(3, 1, 8, 2), 8)),
        ("bfloat16 x of shape (2, 7, 4, 8), n_rep=2", (x(2, 7, 4, 8, dtype=torch.bfloat16), 2)),
    ]


def _repeat_on_sequence(x, n_rep):
    return torch.repeat_interleave(x, n_rep, dim=1)


def _repeat_tiled(x, n_rep):
    return x.repeat(1, 1, n_rep, 1)


def _repeat_on_features(x, n_rep):
    return torch.repeat_interleave(x, n_rep, dim=3)


def _repeat_to_n_rep_heads(x, n_rep):
    return torch.repeat_interleave(x, max(n_rep // x.shape[2], 1), dim=2)


check_repeat_kv = make_checker(
    "4.1 repeat_kv",
    repeat_kv,
    _repeat_kv_cases,
    [
        (
            _repeat_on_sequence,
            "you repeated along the sequence axis (dim 1); the heads are axis 2 of (B, T, K, D).",
        ),
        (
            _repeat_tiled,
            "you tiled the heads (x.repeat(1, 1, n_rep, 1) gives k0, k1, k0, k1, ...), which mixes up the groups: "
            "query heads 0..n_rep-1 must all read key/value head 0, so each head is repeated in place "
            "(k0, k0, ..., k1, k1, ...): torch.repeat_interleave(x, n_rep, dim=2).",
        ),
        (
            _repeat_on_features,
            "you repeated along the last axis (head_dim); repeat the heads, axis 2 of (B, T, K, D).",
        ),
        (
            _repeat_to_n_rep_heads,
            "n_rep is the number of copies of EACH key/value head (n_heads // n_kv_heads), not the number of "
            "heads to end up with: the result has K * n_rep heads.",
        ),
    ],
    atol=0.0,
    rtol=0.0,
)

# --- 4.2 causal_attention ---------------------------------------------------------------------------------


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The package's way, in (B, heads, S, D): repeat_kv for the groups, then PyTorch's fused kernel."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = (repeat_kv(t.transpose(1, 2), n_rep).transpose(1, 2) for t in (k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(q.shape[2], 0, q.device))


def _attention_cases():
    g = torch.Generator().manual_seed(402)

    def qkv(b, h, kv, s, d):
        return (
            torch.randn(b, h, s, d, generator=g),
            torch.randn(b, kv, s, d, generator=g),
            torch.randn(b, kv, s, d, generator=g),
        )

    return [
        ("4 query heads sharing 2 key/value heads (GQA), batch 2, 5 tokens, head_dim 8", qkv(2, 4, 2, 5, 8)),
        ("8 query heads and ONE key/value head (MQA), 6 tokens", qkv(1, 8, 1, 6, 4)),
        ("3 heads, each with its own keys and values (MHA), batch 3, 7 tokens", qkv(3, 3, 3, 7, 16)),
        ("a sequence of length 1 (GQA, 8 query heads, 2 key/value heads)", qkv(2, 8, 2, 1, 8)),
        ("16 query heads in groups of 8 (the 70B's grouping), 9 tokens", qkv(1, 16, 2, 9, 8)),
    ]


def _scores_mistake(q, k, v, *, shift=0, scale=True, softmax_dim=-1, tile=False):
    n_rep = q.shape[1] // k.shape[1]
    if tile:
        k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
    else:
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    scores = q @ k.transpose(-2, -1)
    if scale:
        scores = scores / math.sqrt(q.shape[-1])
    s = q.shape[2]
    allowed = torch.ones(s, s, dtype=torch.bool).tril(shift)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=softmax_dim) @ v


check_causal_attention = make_checker(
    "4.2 causal_attention",
    _causal_attention,
    _attention_cases,
    [
        (
            lambda q, k, v: _scores_mistake(q, k, v, shift=-1),
            "your mask is off by one: a token must see itself (row i keeps columns j <= i, the diagonal "
            "included: torch.tril(..., diagonal=0)); without it the first token sees nothing and gets NaN.",
        ),
        (
            lambda q, k, v: _scores_mistake(q, k, v, shift=1),
            "your mask is off by one: token i also sees token i + 1 (the future); keep columns j <= i only "
            "(torch.tril(..., diagonal=0), or mask where j > i).",
        ),
        (
            lambda q, k, v: _scores_mistake(q, k, v, scale=False),
            "the scores are not scaled: divide q @ k^T by sqrt(head_dim) before the softmax.",
        ),
        (
            lambda q, k, v: _scores_mistake(q, k, v, softmax_dim=-2),
            "the softmax runs over the wrong axis: normalise each query's row of scores over the keys "
            "(the last axis, dim=-1).",
        ),
        (
            lambda q, k, v: _scores_mistake(q, k, v, tile=True),
            "the key/value heads are tiled (k.repeat(1, n_rep, 1, 1)) instead of interleaved, so query head h "
            "reads the wrong key/value head: head h belongs to group h // n_rep, which "
            "k.repeat_interleave(n_rep, dim=1) gives.",
        ),
    ],
)

# --- 4.3 kv_cache_bytes -----------------------------------------------------------------------------------

_BYTES_TO_DTYPE = {1: torch.int8, 2: torch.bfloat16, 4: torch.float32, 8: torch.float64}


def _kv_cache_bytes(args: ModelArgs, seq_len: int, batch: int, bytes_per_value: int) -> int:
    """What the package's KVCache allocates, measured on the meta device (no memory is used)."""
    args = dataclasses.replace(args, max_seq_len=max(seq_len, args.max_seq_len))
    cache = KVCache(args, batch, seq_len, device="meta", dtype=_BYTES_TO_DTYPE[bytes_per_value])
    return cache.nbytes()


def _llama2(name: str) -> ModelArgs:
    return ModelArgs.from_params(LLAMA2_PARAMS[name], max_seq_len=4096)


def _kv_cache_cases():
    return [
        ("the 70B (64 query heads, 8 key/value heads), 4096 tokens, batch 1, bfloat16", (_llama2("70B"), 4096, 1, 2)),
        ("the 7B (multi-head), 4096 tokens, batch 1, bfloat16", (_llama2("7B"), 4096, 1, 2)),
        ("the 13B, 4096 tokens, batch 4, bfloat16", (_llama2("13B"), 4096, 4, 2)),
        (
            "a small model with one key/value head (MQA), 1 token, batch 3, float32",
            (ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=1, max_seq_len=16), 1, 3, 4),
        ),
        (
            "a small GQA model (6 heads, 2 key/value heads), 100 tokens, batch 2, float32",
            (ModelArgs(dim=48, n_layers=3, n_heads=6, n_kv_heads=2, max_seq_len=128), 100, 2, 4),
        ),
    ]


def _bytes_mistake(args, seq_len, batch, bytes_per_value, *, kv=2, heads=None, layers=True):
    heads = args.kv_heads if heads is None else heads(args)
    n_layers = args.n_layers if layers else 1
    return kv * n_layers * heads * args.head_dim * seq_len * batch * bytes_per_value


check_kv_cache_bytes = make_checker(
    "4.3 kv_cache_bytes",
    _kv_cache_bytes,
    _kv_cache_cases,
    [
        (
            lambda *a: _bytes_mistake(*a, kv=1),
            "the cache holds keys AND values: multiply by 2.",
        ),
        (
            lambda *a: _bytes_mistake(*a, heads=lambda args: args.n_heads),
            "you counted n_heads key/value heads; the cache stores them before repetition, so only "
            "args.kv_heads of them (8 for the 70B, not 64).",
        ),
        (
            lambda *a: _bytes_mistake(*a, layers=False),
            "every layer has its own keys and values: multiply by args.n_layers.",
        ),
    ],
)

__all__ = ["check_causal_attention", "check_kv_cache_bytes", "check_repeat_kv"]
