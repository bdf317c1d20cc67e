"""Checkers for lesson 02 (the building blocks, §2.2): RMSNorm, the FFN hidden-size rule, the SwiGLU FFN."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model import FeedForward, RMSNorm, ffn_hidden_dim
from .core import make_checker

# --- 2.1 rms_norm -----------------------------------------------------------------------------------------


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    norm = RMSNorm(weight.shape[-1], eps=eps).to(weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


def _rms_norm_cases():
    g = torch.Generator().manual_seed(2)
    return [
        (
            "small activations (|x| ~ 0.01, where eps matters) of shape (2, 3, 8), a random weight",
            (0.01 * torch.randn(2, 3, 8, generator=g), 1 + 0.5 * torch.randn(8, generator=g), 1e-5),
        ),
        (
            "a sequence of length 1, shape (1, 1, 16)",
            (torch.randn(1, 1, 16, generator=g), torch.rand(16, generator=g) + 0.5, 1e-5),
        ),
        (
            "activations with a mean far from 0, shape (4, 5, 32), eps=1e-6",
            (3 + torch.randn(4, 5, 32, generator=g), torch.randn(32, generator=g), 1e-6),
        ),
        (
            "a 2-D input (tokens, dim) of shape (6, 64), eps=1e-3",
            (torch.randn(6, 64, generator=g), torch.randn(64, generator=g), 1e-3),
        ),
        (
            "bfloat16 activations of shape (2, 4, 256) and a bfloat16 weight of ones",
            ((2 * torch.randn(2, 4, 256, generator=g)).bfloat16(), torch.ones(256, dtype=torch.bfloat16), 1e-5),
        ),
    ]


def _rms_eps_outside(x, weight, eps=1e-5):
    xf = x.float()
    return (xf / (xf.pow(2).mean(-1, keepdim=True).sqrt() + eps)).type_as(x) * weight


def _rms_mean_everywhere(x, weight, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean() + eps)).type_as(x) * weight


def _rms_centred(x, weight, eps=1e-5):
    xf = x.float()
    xc = xf - xf.mean(-1, keepdim=True)
    return (xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def _rms_no_weight(x, weight, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


def _rms_in_input_dtype(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


check_rms_norm = make_checker(
    "2.1 rms_norm",
    rms_norm_reference,
    _rms_norm_cases,
    [
        (_rms_eps_outside, "eps is added outside the square root: use torch.rsqrt(mean(x^2) + eps)."),
        (
            _rms_mean_everywhere,
            "the mean of x^2 is taken over the whole tensor: each token is normalised on its "
            "own, over the last axis: x.pow(2).mean(-1, keepdim=True).",
        ),
        (
            _rms_centred,
            "you subtracted the mean (that is LayerNorm): RMSNorm does not centre, it only divides by "
            "the root mean square.",
        ),
        (_rms_no_weight, "the learned weight is missing: multiply the normalised x by weight at the end."),
        (
            _rms_in_input_dtype,
            "the statistics are computed in bfloat16: compute in float32 (x.float()), cast the "
            "normalised x back with .type_as(x), then multiply by the weight.",
        ),
    ],
)


# --- 2.2 ffn_hidden_dim -----------------------------------------------------------------------------------


def _ffn_hidden_dim_cases():
    return [
        ("Llama 2 7B (dim 4096, multiple_of 256)", (4096, 256, None)),
        ("Llama 2 13B (dim 5120, multiple_of 256)", (5120, 256, None)),
        ("Llama 2 70B (dim 8192, multiple_of 4096, ffn_dim_multiplier 1.3)", (8192, 4096, 1.3)),
        ("a toy model (dim 64, multiple_of 32)", (64, 32, None)),
        ("dim 48, multiple_of 16, ffn_dim_multiplier 1.5", (48, 16, 1.5)),
        ("dim 100, multiple_of 1 (no rounding)", (100, 1, None)),
    ]


def _round_up(n, multiple_of):
    return multiple_of * ((n + multiple_of - 1) // multiple_of)


def _ffn_round_down(dim, multiple_of, ffn_dim_multiplier=None):
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * (hidden // multiple_of)


def _ffn_no_two_thirds(dim, multiple_of, ffn_dim_multiplier=None):
    hidden = 4 * dim
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return _round_up(hidden, multiple_of)


def _ffn_multiplier_after_rounding(dim, multiple_of, ffn_dim_multiplier=None):
    hidden = _round_up(int(2 * (4 * dim) / 3), multiple_of)
    return hidden if ffn_dim_multiplier is None else int(ffn_dim_multiplier * hidden)


def _ffn_no_int(dim, multiple_of, ffn_dim_multiplier=None):
    hidden = 2 * (4 * dim) / 3
    if ffn_dim_multiplier is not None:
        hidden = ffn_dim_multiplier * hidden
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


check_ffn_hidden_dim = make_checker(
    "2.2 ffn_hidden_dim",
    ffn_hidden_dim,
    _ffn_hidden_dim_cases,
    [
        (
            _ffn_round_down,
            "you rounded down: round UP to the next multiple of multiple_of, "
            "multiple_of * ((hidden + multiple_of - 1) // multiple_of).",
        ),
        (_ffn_no_two_thirds, "the 2/3 is missing: start from int(2 * (4 * dim) / 3), not 4 * dim."),
        (
            _ffn_multiplier_after_rounding,
            "ffn_dim_multiplier is applied after rounding: scale int(2 * 4 * dim / 3) first, then round up.",
        ),
        (
            _ffn_no_int,
            "the result is a float: take int() of 2 * (4 * dim) / 3 (and of the scaled size) so that "
            "an int comes back.",
        ),
    ],
)


# --- 2.3 feed_forward -------------------------------------------------------------------------------------


def feed_forward_reference(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    ffn = FeedForward(w1.shape[1], w1.shape[0])
    with torch.no_grad():
        for linear, w in ((ffn.w1, w1), (ffn.w2, w2), (ffn.w3, w3)):
            linear.weight.copy_(w)
        return ffn(x)


def _feed_forward_cases():
    g = torch.Generator().manual_seed(3)

    def case(shape, dim, hidden):
        x = torch.randn(*shape, dim, generator=g)
        w1, w3 = (torch.randn(hidden, dim, generator=g) / dim**0.5 for _ in range(2))
        w2 = torch.randn(dim, hidden, generator=g) / hidden**0.5
        return x, w1, w2, w3

    return [
        ("batch 2, 3 tokens, dim 16, hidden 16 (square weights)", case((2, 3), 16, 16)),
        ("batch 2, 5 tokens, dim 16, hidden 48", case((2, 5), 16, 48)),
        ("a sequence of length 1, dim 32, hidden 96", case((1, 1), 32, 96)),
        ("a 2-D input of 7 tokens, dim 64, hidden ffn_hidden_dim(64, 32) = 192", case((7,), 64, 192)),
    ]


def _ffn_silu_on_w3(x, w1, w2, w3):
    return (F.linear(x, w1) * F.silu(F.linear(x, w3))) @ w2.T


def _ffn_gelu(x, w1, w2, w3):
    return (F.gelu(F.linear(x, w1)) * F.linear(x, w3)) @ w2.T


def _ffn_relu(x, w1, w2, w3):
    return (F.relu(F.linear(x, w1)) * F.linear(x, w3)) @ w2.T


def _ffn_no_gate(x, w1, w2, w3):
    return F.silu(F.linear(x, w1)) @ w2.T


def _ffn_untransposed(x, w1, w2, w3):
    return (F.silu(x @ w1) * (x @ w3)) @ w2


check_feed_forward = make_checker(
    "2.3 feed_forward",
    feed_forward_reference,
    _feed_forward_cases,
    [
        (_ffn_silu_on_w3, "SiLU is applied to the w3 branch: the gate is silu(x @ w1.T), the linear branch x @ w3.T."),
        (_ffn_gelu, "you used GELU: SwiGLU's activation is SiLU (F.silu, x * sigmoid(x))."),
        (_ffn_relu, "you used ReLU: SwiGLU's activation is SiLU (F.silu, x * sigmoid(x))."),
        (_ffn_no_gate, "the gate is missing: multiply silu(x @ w1.T) elementwise by x @ w3.T before w2."),
        (
            _ffn_untransposed,
            "the weights are used untransposed: they are in nn.Linear's layout "
            "(out_features, in_features), so compute x @ w.T (or F.linear(x, w)).",
        ),
    ],
    atol=1e-5,
    rtol=1e-4,
)

__all__ = ["check_feed_forward", "check_ffn_hidden_dim", "check_rms_norm"]
