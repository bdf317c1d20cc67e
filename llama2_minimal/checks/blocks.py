"""Checkers for lesson 02 (the building blocks, §2.2).

The exercises: 2.1 `layer_norm` (LayerNorm in the style of Meta's RMSNorm, the norm Llama replaced), 2.2
`post_norm_block` (the original Transformer's order, from its formula), 2.3 an experiment (does a learning-rate
warmup rescue post-norm at a high learning rate, over three seeds?). The checkers of RMSNorm, the FFN size rule
and the SwiGLU FFN (rms_norm, ffn_hidden_dim, feed_forward) check the lesson's own in-the-open builds, for a
learner who writes them again.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..model import FeedForward, ModelArgs, RMSNorm, Transformer, TransformerBlock, ffn_hidden_dim, precompute_freqs_cis
from ..toy_tasks import final_loss, tiny_model, train_on_task
from .core import make_checker, make_experiment

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


# --- 2.1 layer_norm: the norm RMSNorm replaced, written the way Meta writes RMSNorm ------------------------------


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps), mean and biased variance over the last axis in float32, cast back to x's
    dtype, then * weight + bias: RMSNorm's recipe (float32 statistics, one rounding) with LayerNorm's statistics."""
    xf = x.float()
    centred = xf - xf.mean(-1, keepdim=True)
    return (centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight + bias


def _layer_norm_cases():
    g = torch.Generator().manual_seed(21)

    def affine(d, dtype=torch.float32):
        return (1 + 0.5 * torch.randn(d, generator=g)).to(dtype), (0.3 * torch.randn(d, generator=g)).to(dtype)

    return [
        ("activations with a mean far from 0, shape (2, 3, 16), eps=1e-5", (3 + torch.randn(2, 3, 16, generator=g),
                                                                            *affine(16), 1e-5)),
        ("only 4 features per token (where n and n - 1 differ most), shape (5, 4)", (torch.randn(5, 4, generator=g),
                                                                                    *affine(4), 1e-5)),
        ("small activations (|x| ~ 0.01, where eps matters), shape (2, 6, 8), eps=1e-3",
         (0.01 * torch.randn(2, 6, 8, generator=g), *affine(8), 1e-3)),
        ("a token whose features are all equal (variance 0): the output is the bias",
         (torch.full((1, 2, 8), 2.0), *affine(8), 1e-5)),
        ("a sequence of length 1, shape (1, 1, 32), eps=1e-6", (torch.randn(1, 1, 32, generator=g), *affine(32), 1e-6)),
        ("bfloat16 activations (2, 4, 256) with a mean of 4, bfloat16 weight and bias",
         ((4 + 2 * torch.randn(2, 4, 256, generator=g)).bfloat16(), *affine(256, torch.bfloat16), 1e-5)),
    ]  # fmt: skip


def _ln_unbiased(x, weight, bias, eps=1e-5):
    xf = x.float()
    return ((xf - xf.mean(-1, keepdim=True)) * torch.rsqrt(xf.var(-1, keepdim=True) + eps)).type_as(x) * weight + bias


def _ln_not_centred(x, weight, bias, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight + bias


def _ln_uncentred_variance(x, weight, bias, eps=1e-5):
    xf = x.float()
    return ((xf - xf.mean(-1, keepdim=True)) * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) \
        * weight + bias


def _ln_eps_outside(x, weight, bias, eps=1e-5):
    xf = x.float()
    centred = xf - xf.mean(-1, keepdim=True)
    return (centred / (centred.pow(2).mean(-1, keepdim=True).sqrt() + eps)).type_as(x) * weight + bias


def _ln_no_bias(x, weight, bias, eps=1e-5):
    return layer_norm_reference(x, weight, torch.zeros_like(bias), eps)


def _ln_in_input_dtype(x, weight, bias, eps=1e-5):
    centred = x - x.mean(-1, keepdim=True)
    return centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps) * weight + bias


def _ln_affine_before_cast(x, weight, bias, eps=1e-5):
    xf = x.float()
    centred = xf - xf.mean(-1, keepdim=True)
    normed = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * weight.float() + bias.float()).type_as(x)


def _ln_whole_tensor(x, weight, bias, eps=1e-5):
    xf = x.float()
    centred = xf - xf.mean()
    return (centred * torch.rsqrt(centred.pow(2).mean() + eps)).type_as(x) * weight + bias


check_layer_norm = make_checker(
    "2.1 layer_norm",
    layer_norm_reference,
    _layer_norm_cases,
    [
        (
            _ln_unbiased,
            "the variance is the unbiased estimate (divided by n - 1, what x.var() computes by default): LayerNorm "
            "divides by n, the mean of the squared deviations (x.var(-1, unbiased=False) or "
            "(x - mean).pow(2).mean(-1)).",
        ),
        (_ln_not_centred, "the mean is not subtracted: that is RMSNorm plus a bias; LayerNorm centres first."),
        (
            _ln_uncentred_variance,
            "the numerator is centred but the variance is the mean of x^2, not of (x - mean)^2: compute the "
            "statistics of the centred vector.",
        ),
        (_ln_eps_outside, "eps is added outside the square root: divide by sqrt(var + eps)."),
        (_ln_no_bias, "the bias is missing: LayerNorm ends with * weight + bias."),
        (
            _ln_in_input_dtype,
            "the statistics are computed in bfloat16: compute them in float32 (x.float()), cast the normalised x "
            "back with .type_as(x), then apply weight and bias, as Meta's RMSNorm does.",
        ),
        (
            _ln_affine_before_cast,
            "weight and bias were applied in float32, before the cast (as torch's F.layer_norm does): the recipe "
            "casts the normalised x back to x's dtype first, then applies weight and bias in that dtype.",
        ),
        (
            _ln_whole_tensor,
            "the mean and variance are taken over the whole tensor: each token is normalised on its own, over the "
            "last axis (keepdim=True).",
        ),
    ],
)


# --- 2.2 post_norm_block: the original Transformer's order ------------------------------------------------------


def post_norm_block(block: TransformerBlock, x: torch.Tensor, freqs_cis: torch.Tensor, *unused) -> torch.Tensor:
    """Post-normalisation (Vaswani et al. 2017) with a Llama block's sub-modules: normalise after each residual
    addition, h = attention_norm(x + attention(x)), out = ffn_norm(h + feed_forward(h))."""
    h = block.attention_norm(x + block.attention(x, freqs_cis))
    return block.ffn_norm(h + block.feed_forward(h))


def to_post_norm(model: Transformer) -> Transformer:
    """The same model with every block run in post-norm order (in place; returned for convenience)."""
    for block in model.layers:
        block.forward = functools.partial(post_norm_block, block)
    return model


def _random_block(args: ModelArgs, g: torch.Generator) -> TransformerBlock:
    block = TransformerBlock(0, args)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("norm.weight"):  # different, non-unit norm weights expose a swapped or missing norm
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return block.eval()


def _post_norm_cases():
    g = torch.Generator().manual_seed(22)

    def case(args: ModelArgs, batch: int, seqlen: int, scale: float = 1.0):
        x = scale * torch.randn(batch, seqlen, args.dim, generator=g)
        return _random_block(args, g), x, precompute_freqs_cis(args.head_dim, seqlen, args.rope_theta)

    mha = ModelArgs(dim=32, n_layers=1, n_heads=4, multiple_of=32, max_seq_len=32)
    gqa = ModelArgs(dim=48, n_layers=1, n_heads=6, n_kv_heads=2, multiple_of=16, norm_eps=1e-6, max_seq_len=32)
    return [
        ("a multi-head block, batch 2, 5 tokens", case(mha, 2, 5)),
        ("a GQA block (6 query heads, 2 key/value heads), batch 3, 4 tokens, norm_eps 1e-6", case(gqa, 3, 4)),
        ("a block whose input is large (|x| ~ 10)", case(mha, 1, 6, scale=10.0)),
        ("a sequence of length 1", case(gqa, 2, 1)),
    ]


def _pn_pre_norm(block, x, freqs_cis):
    return block(x, freqs_cis)


def _pn_sandwich(block, x, freqs_cis):
    h = block.attention_norm(x + block.attention(block.attention_norm(x), freqs_cis))
    return block.ffn_norm(h + block.feed_forward(block.ffn_norm(h)))


def _pn_swapped_norms(block, x, freqs_cis):
    h = block.ffn_norm(x + block.attention(x, freqs_cis))
    return block.attention_norm(h + block.feed_forward(h))


def _pn_ffn_reads_input(block, x, freqs_cis):
    h = block.attention_norm(x + block.attention(x, freqs_cis))
    return block.ffn_norm(h + block.feed_forward(x))


def _pn_no_residual(block, x, freqs_cis):
    h = block.attention_norm(block.attention(x, freqs_cis))
    return block.ffn_norm(block.feed_forward(h))


def _pn_attention_only(block, x, freqs_cis):
    h = block.attention_norm(x + block.attention(x, freqs_cis))
    return h + block.feed_forward(h)


check_post_norm_block = make_checker(
    "2.2 post_norm_block",
    post_norm_block,
    _post_norm_cases,
    [
        (
            _pn_pre_norm,
            "this is Llama's pre-norm block: post-norm normalises AFTER each residual addition, "
            "h = attention_norm(x + attention(x)), and the sub-layers read the unnormalised stream.",
        ),
        (
            _pn_sandwich,
            "the sub-layers read a normalised input and the sum is normalised again (pre- and post-norm at "
            "once): in post-norm the sub-layer reads the stream as it is, attention(x).",
        ),
        (_pn_swapped_norms, "the two norms are swapped: attention_norm follows attention, ffn_norm the FFN."),
        (
            _pn_ffn_reads_input,
            "the FFN reads the block's input x: it reads h, the normalised stream after the attention sub-layer.",
        ),
        (
            _pn_no_residual,
            "the residual connections are missing: each sub-layer's output is ADDED to its input before the norm, "
            "norm(x + sublayer(x)).",
        ),
        (
            _pn_attention_only,
            "only the attention sub-layer is followed by a norm: the FFN's sum is normalised too, "
            "out = ffn_norm(h + feed_forward(h)).",
        ),
    ],
)


# --- 2.3 the warmup experiment: does a warmup rescue post-norm at a high learning rate? --------------------------

LEARNED = 1.0  # a final loss below this has learned the copy task (guessing costs ln 29 = 3.37 nats)


def warmup_experiment_reference(lr: float, warmup: int, seeds: tuple[int, ...], steps: int = 100,
                                n_layers: int = 6) -> dict[str, list[float]]:  # fmt: skip
    """Post-norm models on the copy task, one per seed, trained without and with a linear warmup of `warmup`
    steps: the final loss of each run (toy_tasks.final_loss), by condition."""
    out = {}
    for name, steps_of_warmup in (("without warmup", 0), ("with warmup", warmup)):
        out[name] = [
            final_loss(train_on_task(to_post_norm(tiny_model(n_layers, seed=seed)), "copy", steps, lr,
                                     steps_of_warmup, seed))  # fmt: skip
            for seed in seeds
        ]
    return out


def _warmup_cases():
    return [
        ("2 seeds, 6 steps of a 2-layer model, lr 1e-2, 3 warmup steps", (1e-2, 3, (0, 1), 6, 2)),
        ("seeds 3 and 4, 5 steps of a 1-layer model, lr 3e-2, 2 warmup steps", (3e-2, 2, (3, 4), 5, 1)),
    ]


def _we_pre_norm(lr, warmup, seeds, steps=100, n_layers=6):
    out = {}
    for name, w in (("without warmup", 0), ("with warmup", warmup)):
        out[name] = [final_loss(train_on_task(tiny_model(n_layers, seed=s), "copy", steps, lr, w, s)) for s in seeds]
    return out


def _we_no_warmup(lr, warmup, seeds, steps=100, n_layers=6):
    return warmup_experiment_reference(lr, 0, seeds, steps, n_layers)


def _we_one_seed(lr, warmup, seeds, steps=100, n_layers=6):
    return warmup_experiment_reference(lr, warmup, (seeds[0],) * len(seeds), steps, n_layers)


def _we_first_losses(lr, warmup, seeds, steps=100, n_layers=6):
    out = {}
    for name, w in (("without warmup", 0), ("with warmup", warmup)):
        out[name] = [train_on_task(to_post_norm(tiny_model(n_layers, seed=s)), "copy", steps, lr, w, s)[0]
                     for s in seeds]  # fmt: skip
    return out


def _warmup_outcome(result: dict[str, list[float]]) -> tuple[str, str]:
    n = len(result["with warmup"])
    without = sum(loss < LEARNED for loss in result["without warmup"])
    with_warmup = sum(loss < LEARNED for loss in result["with warmup"])
    account = (f"post-norm learned the task in {without} of {n} seeds without warmup and in {with_warmup} of {n} "
               "with it")  # fmt: skip
    if with_warmup == n and without < n:
        return "rescues", account
    if with_warmup > without:
        return "helps", account
    return "no help", account


check_warmup_experiment = make_experiment(
    "2.3 warmup_experiment",
    warmup_experiment_reference,
    _warmup_cases,
    [
        (
            _we_pre_norm,
            "these are pre-norm models: make each one post-norm (to_post_norm) before training it.",
        ),
        (_we_no_warmup, "the 'with warmup' runs have no warmup: pass `warmup` steps to train_on_task for them."),
        (_we_one_seed, "every run uses the same seed: build and train each run with its own seed from `seeds`."),
        (
            _we_first_losses,
            "these are the first losses of each run: report where it ended, final_loss(losses) (the mean of the last "
            "10).",
        ),
    ],
    choices={
        "rescues": "with warmup, post-norm learns in every seed (and fails in some without)",
        "helps": "warmup makes more seeds learn, but not all of them",
        "no help": "warmup does not make more seeds learn",
    },
    outcome=_warmup_outcome,
    atol=1e-6,
    rtol=1e-6,
)

__all__ = [
    "check_feed_forward",
    "check_ffn_hidden_dim",
    "check_layer_norm",
    "check_post_norm_block",
    "check_rms_norm",
    "check_warmup_experiment",
    "layer_norm_reference",
    "post_norm_block",
    "to_post_norm",
    "warmup_experiment_reference",
]
