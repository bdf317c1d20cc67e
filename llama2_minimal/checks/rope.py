"""Checkers for lesson 03 (rotary position embeddings, §2.2 and Su et al. 2021): the rotation table, Meta's
interleaved rotation of queries and keys, and the wq/wk row permutation to Hugging Face's rotate-half layout."""

from __future__ import annotations

import torch

from ..checkpoint import permute_hf_to_meta, permute_meta_to_hf
from ..model import apply_rotary_emb, precompute_freqs_cis
from .core import make_checker

# --- 3.1 precompute_freqs_cis -----------------------------------------------------------------------------


def _freqs_cases():
    return [
        ("head_dim 8, 6 positions, theta 10000", (8, 6, 10000.0)),
        ("head_dim 4, a single position", (4, 1, 10000.0)),
        ("head_dim 16, 12 positions, theta 1e6 (Code Llama's)", (16, 12, 1e6)),
        ("head_dim 64, 32 positions, theta 10000", (64, 32, 10000.0)),
    ]


def _angles(head_dim, end, theta, exponent=2, first=0, sign=-1):
    freqs = theta ** (sign * exponent * torch.arange(head_dim // 2).float() / head_dim)
    return torch.outer(torch.arange(first, first + end, dtype=torch.float32), freqs)


def _freqs_exponent_j(head_dim, end, theta=10000.0):
    angles = _angles(head_dim, end, theta, exponent=1)
    return torch.polar(torch.ones_like(angles), angles)


def _freqs_not_inverted(head_dim, end, theta=10000.0):
    angles = _angles(head_dim, end, theta, sign=1)
    return torch.polar(torch.ones_like(angles), angles)


def _freqs_from_one(head_dim, end, theta=10000.0):
    angles = _angles(head_dim, end, theta, first=1)
    return torch.polar(torch.ones_like(angles), angles)


def _freqs_conjugate(head_dim, end, theta=10000.0):
    angles = _angles(head_dim, end, theta)
    return torch.polar(torch.ones_like(angles), -angles)


def _freqs_sin_cos_swapped(head_dim, end, theta=10000.0):
    angles = _angles(head_dim, end, theta)
    return torch.complex(torch.sin(angles), torch.cos(angles))


check_precompute_freqs_cis = make_checker(
    "3.1 precompute_freqs_cis",
    precompute_freqs_cis,
    _freqs_cases,
    [
        (
            _freqs_exponent_j,
            "the exponent is j/head_dim: pair j turns at theta^(-2j/head_dim), so use "
            "torch.arange(0, head_dim, 2) / head_dim.",
        ),
        (
            _freqs_not_inverted,
            "the frequencies are theta^(+2j/head_dim): they must fall with j, 1 / theta^(2j/head_dim).",
        ),
        (_freqs_from_one, "positions start at 1: the first token is position 0 (torch.arange(end))."),
        (_freqs_conjugate, "the angles have the wrong sign (the complex conjugate): use exp(+i m theta_j)."),
        (
            _freqs_sin_cos_swapped,
            "cos and sin are swapped: the real part is cos(m theta_j), the imaginary part "
            "sin(m theta_j) (torch.polar(ones, angles)).",
        ),
    ],
    atol=1e-4,
)


# --- 3.2 apply_rotary_emb ---------------------------------------------------------------------------------


def _rotary_cases():
    g = torch.Generator().manual_seed(4)

    def case(batch, seqlen, n_heads, n_kv_heads, head_dim, start=0, theta=10000.0):
        xq = torch.randn(batch, seqlen, n_heads, head_dim, generator=g)
        xk = torch.randn(batch, seqlen, n_kv_heads, head_dim, generator=g)
        return xq, xk, precompute_freqs_cis(head_dim, start + seqlen, theta)[start:]

    return [
        ("batch 2, 4 positions, 4 query and 4 key heads, head_dim 8", case(2, 4, 4, 4, 8)),
        ("a single new token at position 5 (decoding with a cache), 2 heads", case(1, 1, 2, 2, 8, start=5)),
        (
            "batch 3, 6 positions, 4 query heads, 1 key head (GQA), head_dim 16, theta 1e6",
            case(3, 6, 4, 1, 16, theta=1e6),
        ),
        ("batch 2, 5 positions starting at 3, 2 heads, head_dim 4", case(2, 5, 2, 2, 4, start=3)),
    ]


def _rotate(x, freqs):  # x complex (B, S, heads, D/2), freqs (S, D/2)
    return torch.view_as_real(x * freqs[None, :, None, :]).flatten(3)


def _complex_pairs(x):
    return torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))


def _rotary_half_pairs(xq, xk, freqs_cis):
    def rotate(x):
        half = x.shape[-1] // 2
        z = torch.complex(x[..., :half].float(), x[..., half:].float()) * freqs_cis[None, :, None, :]
        return torch.cat([z.real, z.imag], dim=-1).type_as(x)

    return rotate(xq), rotate(xk)


def _rotary_conjugate(xq, xk, freqs_cis):
    return _rotate(_complex_pairs(xq), freqs_cis.conj()), _rotate(_complex_pairs(xk), freqs_cis.conj())


def _rotary_queries_only(xq, xk, freqs_cis):
    return _rotate(_complex_pairs(xq), freqs_cis), xk


def _rotary_heads_axis(xq, xk, freqs_cis):
    def rotate(x):
        return torch.view_as_real(_complex_pairs(x) * freqs_cis[None, None, :, :]).flatten(3)

    return rotate(xq), rotate(xk)


check_apply_rotary_emb = make_checker(
    "3.2 apply_rotary_emb",
    apply_rotary_emb,
    _rotary_cases,
    [
        (
            _rotary_half_pairs,
            "you paired feature j with j + head_dim/2 (Hugging Face's rotate-half layout): Meta's "
            "code pairs adjacent features (2j, 2j+1), x.reshape(..., -1, 2).",
        ),
        (
            _rotary_conjugate,
            "the rotation goes the wrong way (by the conjugate, -m theta_j): multiply by freqs_cis itself.",
        ),
        (_rotary_queries_only, "the keys are not rotated: rotate xk exactly like xq."),
        (
            _rotary_heads_axis,
            "freqs_cis is aligned with the heads axis: it has one row per position, so view it "
            "as (1, S, 1, D/2) for x of shape (B, S, heads, D/2).",
        ),
    ],
)


# --- 3.3 permute_for_hf -----------------------------------------------------------------------------------


def _permute_cases():
    g = torch.Generator().manual_seed(5)
    return [
        ("wq of 2 heads, head_dim 8, dim 16", (torch.randn(16, 16, generator=g), 2)),
        ("wk of a single key/value head (GQA), head_dim 8, dim 16", (torch.randn(8, 16, generator=g), 1)),
        ("wq of 4 heads, head_dim 6, dim 24", (torch.randn(24, 24, generator=g), 4)),
        ("wk of 3 heads, head_dim 4, dim 20", (torch.randn(12, 20, generator=g), 3)),
    ]


def _permute_whole_matrix(w, n_heads):
    return permute_meta_to_hf(w, 1)


def _permute_none(w, n_heads):
    return w.clone()


check_permute_for_hf = make_checker(
    "3.3 permute_for_hf",
    permute_meta_to_hf,
    _permute_cases,
    [
        (
            permute_hf_to_meta,
            "this is the inverse permutation (Hugging Face -> Meta): view the rows as "
            "(n_heads, D/2, 2, dim) and swap the two middle axes.",
        ),
        (
            _permute_whole_matrix,
            "the rows are permuted across the whole matrix: permute within each head, w.view(n_heads, D // 2, 2, dim).",
        ),
        (
            _permute_none,
            "the rows are not permuted: within each head, the even rows (2j) come first, then the odd rows (2j+1).",
        ),
    ],
    atol=0.0,
    rtol=0.0,
)

__all__ = ["check_apply_rotary_emb", "check_permute_for_hf", "check_precompute_freqs_cis"]
