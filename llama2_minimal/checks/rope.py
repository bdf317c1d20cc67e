"""Checkers for lesson 03 (rotary position embeddings, §2.2 and Su et al. 2021).

The exercises: 3.1 `apply_rotary_half` (Hugging Face's rotate-half form, written from Meta's complex table), 3.2 an
experiment (does a tiny model learn to look two tokens back without any position information?), 3.3
`permute_for_hf` (the wq/wk row permutation between the two layouts). The checkers of the rotation table and of
Meta's interleaved rotation (precompute_freqs_cis, apply_rotary_emb) check the lesson's in-the-open builds.
"""

from __future__ import annotations

import torch

from ..checkpoint import permute_hf_to_meta, permute_meta_to_hf
from ..model import apply_rotary_emb, precompute_freqs_cis
from ..toy_tasks import final_loss, tiny_model, train_on_task
from .core import make_checker, make_experiment

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


# --- 3.1 apply_rotary_half: Hugging Face's layout, from Meta's complex table ------------------------------------


def apply_rotary_half_reference(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Hugging Face's rotary embedding (GPT-NeoX's rotate_half) on queries and keys in Meta's layout
    (B, S, heads, D): feature j is paired with j + D/2 and the pair is rotated by the angle of freqs_cis[s, j].
    In float32, returned in the inputs' dtypes; equal to transformers' apply_rotary_pos_emb (tests/test_checks.py)."""
    cos = torch.cat([freqs_cis.real, freqs_cis.real], dim=-1)[None, :, None, :]  # (1, S, 1, D): theta_j twice
    sin = torch.cat([freqs_cis.imag, freqs_cis.imag], dim=-1)[None, :, None, :]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        half = xf.shape[-1] // 2
        rotated_half = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
        return (xf * cos + rotated_half * sin).type_as(x)

    return rotate(xq), rotate(xk)


def _rotary_half_cases():
    g = torch.Generator().manual_seed(31)

    def case(batch, seqlen, n_heads, n_kv_heads, head_dim, start=0, theta=10000.0, dtype=torch.float32):
        xq = torch.randn(batch, seqlen, n_heads, head_dim, generator=g).to(dtype)
        xk = torch.randn(batch, seqlen, n_kv_heads, head_dim, generator=g).to(dtype)
        return xq, xk, precompute_freqs_cis(head_dim, start + seqlen, theta)[start:]

    return [
        ("batch 2, 5 positions, 4 query and 4 key heads, head_dim 8", case(2, 5, 4, 4, 8)),
        ("4 query heads and 1 key head (GQA), head_dim 16, theta 1e6", case(3, 6, 4, 1, 16, theta=1e6)),
        ("a single new token at position 9 (decoding with a cache)", case(1, 1, 2, 2, 8, start=9)),
        ("batch 2, 7 positions starting at 3, head_dim 4", case(2, 7, 2, 2, 4, start=3)),
        ("bfloat16 queries and keys, head_dim 32", case(2, 4, 2, 2, 32, dtype=torch.bfloat16)),
    ]


def _half(x, freqs_cis, *, sign=1, interleave_angles=False, swap=False, in_dtype=False):
    angles = torch.angle(freqs_cis)
    angles = angles.repeat_interleave(2, dim=-1) if interleave_angles else torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    xf = x if in_dtype else x.float()
    if in_dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1) * sign
    out = xf * sin + rotated_half * cos if swap else xf * cos + rotated_half * sin
    return out.type_as(x)


def _rh_both(**kw):
    return lambda xq, xk, freqs_cis: (_half(xq, freqs_cis, **kw), _half(xk, freqs_cis, **kw))


check_apply_rotary_half = make_checker(
    "3.1 apply_rotary_half",
    apply_rotary_half_reference,
    _rotary_half_cases,
    [
        (
            apply_rotary_emb,
            "this is Meta's layout, adjacent features (2j, 2j+1) as one pair: Hugging Face pairs feature j with "
            "feature j + D/2 (the first half with the second half).",
        ),
        (
            _rh_both(sign=-1),
            "the rotation goes the wrong way: rotate_half(x) is (-x2, x1) for the halves x1, x2 of x, so that "
            "x_j cos - x_(j+D/2) sin comes first.",
        ),
        (
            _rh_both(interleave_angles=True),
            "the angles are repeated in place (theta_0, theta_0, theta_1, theta_1, ...): feature j and feature "
            "j + D/2 share theta_j, so the D/2 angles are concatenated with themselves, [theta, theta].",
        ),
        (
            lambda xq, xk, freqs_cis: (_half(xq, freqs_cis), xk),
            "the keys are not rotated: rotate xk exactly like xq (with its own number of heads).",
        ),
        (
            _rh_both(swap=True),
            "cos and sin are swapped: x * cos(m theta) + rotate_half(x) * sin(m theta); the real part of "
            "freqs_cis is the cosine.",
        ),
        (
            _rh_both(in_dtype=True),
            "the rotation is computed in bfloat16: compute in float32 (x.float()) and cast the result back with "
            ".type_as(x).",
        ),
    ],
    atol=1e-5,
    rtol=1e-5,
)


# --- 3.2 the experiment: attention without position information -----------------------------------------------

LEARNED = 1.0  # a final loss below this has learned the look-back task (guessing costs ln 29 = 3.37)


def lookback_experiment_reference(seeds: tuple[int, ...], steps: int = 80) -> dict[str, list[float]]:
    """Tiny 2-layer models on the look-back task (name the token two positions back), with rotary embeddings
    and without any position information (every rotation by angle 0: freqs_cis of ones): the final loss of each
    run, by condition."""
    out = {"with RoPE": [], "without positions": []}
    for name in out:
        for seed in seeds:
            model = tiny_model(2, seed=seed)
            if name == "without positions":
                model.freqs_cis = torch.ones_like(model.freqs_cis)  # e^(i 0) = 1: nothing is rotated
            out[name].append(final_loss(train_on_task(model, "lookback", steps, 3e-3, 0, seed)))
    return out


def _lookback_cases():
    return [("seeds 0 and 1, 6 steps", ((0, 1), 6)), ("seed 5, 4 steps", ((5,), 4))]


def _lb_variant(disable):
    def measure(seeds, steps=80):
        out = {"with RoPE": [], "without positions": []}
        for name in out:
            for seed in seeds:
                model = tiny_model(2, seed=seed)
                if name == "without positions":
                    disable(model)
                out[name].append(final_loss(train_on_task(model, "lookback", steps, 3e-3, 0, seed)))
        return out

    return measure


def _zeros(model):
    model.freqs_cis = torch.zeros_like(model.freqs_cis)


def _real_part(model):
    model.freqs_cis = torch.complex(model.freqs_cis.real, torch.zeros_like(model.freqs_cis.real))


def _nothing(model):
    pass


def _lookback_outcome(result: dict[str, list[float]]) -> tuple[str, str]:
    n = len(result["with RoPE"])
    with_rope = sum(loss < LEARNED for loss in result["with RoPE"])
    without = sum(loss < LEARNED for loss in result["without positions"])
    mean = {name: sum(losses) / len(losses) for name, losses in result.items()}
    account = (f"the model learned the task in {with_rope} of {n} seeds with RoPE (mean final loss "
               f"{mean['with RoPE']:.2f}) and in {without} of {n} without positions ({mean['without positions']:.2f})")
    if with_rope == n and without == 0:
        return "only with RoPE", account
    if with_rope == n and without == n:
        return "both", account
    if with_rope == 0 and without == 0:
        return "neither", account
    return "mixed", account


check_lookback_experiment = make_experiment(
    "3.2 lookback_experiment",
    lookback_experiment_reference,
    _lookback_cases,
    [
        (
            _lb_variant(_zeros),
            "freqs_cis is all zeros: that multiplies every query and key by 0, so attention sees no content at all; "
            "a rotation by angle 0 is multiplication by 1 (torch.ones_like(model.freqs_cis)).",
        ),
        (
            _lb_variant(_real_part),
            "only the imaginary part is zeroed: cos(m theta) still scales the features by position; every entry "
            "must be exactly 1 (angle 0).",
        ),
        (_lb_variant(_nothing), "the 'without positions' models still rotate: set their freqs_cis to ones."),
    ],
    choices={
        "only with RoPE": "the model learns the task with rotary embeddings and fails without any position information",
        "both": "the model learns it either way: the causal mask alone tells it enough about positions",
        "neither": "2 layers and 80 steps are too few either way",
    },
    outcome=_lookback_outcome,
    atol=1e-6,
    rtol=1e-6,
)

__all__ = [
    "apply_rotary_half_reference",
    "check_apply_rotary_emb",
    "check_apply_rotary_half",
    "check_lookback_experiment",
    "check_permute_for_hf",
    "check_precompute_freqs_cis",
    "lookback_experiment_reference",
]
