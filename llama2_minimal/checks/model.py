"""Checkers for lesson 05 (the Llama model, §2.2 and Table 1).

The exercises:
5.1 forward_flops(args, batch, seq_len): the floating-point operations of one forward pass, counted from the
    arguments like the parameters (tests/test_checks.py checks the reference against PyTorch's FlopCounterMode).
5.2 count_parameters(args): the parameter count of the model that a ModelArgs describes, without building it.
5.3 an experiment: which sub-layer of a tiny trained model does the copying? Remove each one's contribution to the
    residual stream in turn and measure the loss.

block_forward(block, x, freqs_cis), a TransformerBlock's pre-norm forward from its sub-modules, checks the
lesson's in-the-open build.
"""

from __future__ import annotations

import torch

from ..model import (
    LLAMA2_PARAMS,
    LLAMA2_VOCAB_SIZE,
    ModelArgs,
    Transformer,
    TransformerBlock,
    count_parameters,
    precompute_freqs_cis,
)
from ..toy_tasks import evaluation_batch, task_loss, tiny_model, train_on_task
from .core import make_checker, make_experiment

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


# --- 5.1 forward_flops ------------------------------------------------------------------------------------------


def forward_flops_reference(args: ModelArgs, batch: int, seq_len: int) -> int:
    """Floating-point operations of one forward pass of Transformer(args) over `batch` sequences of `seq_len`
    tokens, counted the way PyTorch's FlopCounterMode counts them: 2 per multiply-add of every matrix product (the
    projections wq, wk, wv, wo, w1, w2, w3 of every layer, the output head, and attention's q k^T and
    softmax(.) v over all seq_len x seq_len pairs, the mask applied after), nothing for the embedding lookup or the
    elementwise work (norms, RoPE, SiLU, softmax)."""
    args.require_vocab()
    e, kv = args.dim, args.kv_heads * args.head_dim
    tokens = batch * seq_len
    weights_per_token = args.n_layers * (2 * e * e + 2 * e * kv + 3 * e * args.hidden_dim) + e * args.vocab_size
    scores_and_mix = 2 * batch * args.n_heads * seq_len * seq_len * args.head_dim  # q k^T, then weights v: 2 products
    return 2 * tokens * weights_per_token + args.n_layers * 2 * scores_and_mix


def _flops_cases():
    return [
        ("a tiny multi-head model (dim 32, 2 layers, vocab 50), batch 2, 7 tokens",
         (ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=50, multiple_of=16), 2, 7)),
        ("a GQA model (6 heads, 2 key/value heads, multiplier 1.3), batch 3, 16 tokens",
         (ModelArgs(dim=48, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=101, multiple_of=16,
                    ffn_dim_multiplier=1.3), 3, 16)),
        ("an MQA model (one key/value head), one token",
         (ModelArgs(dim=64, n_layers=1, n_heads=8, n_kv_heads=1, vocab_size=40, multiple_of=1), 1, 1)),
        ("Llama 2 7B, one sequence of 4096 tokens", (_llama2("7B"), 1, 4096)),
        ("Llama 2 70B (GQA), batch 4 of 2048 tokens", (_llama2("70B"), 4, 2048)),
    ]  # fmt: skip


def _flops(args, batch, seq_len, *, embedding=False, attention=True, kv_heads=None, output=True, per_mac=2,
           causal=False, score_heads=None, ffn_matrices=3):  # fmt: skip
    e = args.dim
    kv = (args.kv_heads if kv_heads is None else kv_heads(args)) * args.head_dim
    tokens = batch * seq_len
    per_token = args.n_layers * (2 * e * e + 2 * e * kv + ffn_matrices * e * args.hidden_dim)
    per_token += e * args.vocab_size * ((1 if output else 0) + (1 if embedding else 0))
    pairs = seq_len * (seq_len + 1) // 2 if causal else seq_len * seq_len
    heads = args.n_heads if score_heads is None else score_heads(args)
    scores = 2 * batch * heads * pairs * args.head_dim if attention else 0
    return per_mac * tokens * per_token + args.n_layers * per_mac * scores


check_forward_flops = make_checker(
    "5.1 forward_flops",
    forward_flops_reference,
    _flops_cases,
    [
        (
            lambda a, b, s: _flops(a, b, s, attention=False),
            "attention's own products are missing: q k^T and softmax(.) v cost 2 * seq_len * head_dim "
            "multiply-adds per query, per head and per layer, besides the projections.",
        ),
        (
            lambda a, b, s: _flops(a, b, s, embedding=True),
            "the embedding is counted as a matrix product: it is a lookup (one row per token), no arithmetic.",
        ),
        (
            lambda a, b, s: _flops(a, b, s, kv_heads=lambda args: args.n_heads),
            "wk and wv are counted with n_heads heads: with GQA they project to n_kv_heads * head_dim (args.kv_heads).",
        ),
        (
            lambda a, b, s: _flops(a, b, s, output=False),
            "the output head is missing: every token's vector is multiplied by the (vocab_size, dim) matrix.",
        ),
        (
            lambda a, b, s: _flops(a, b, s, per_mac=1),
            "you counted multiply-adds: a multiply-add is 2 floating-point operations (FlopCounterMode's and the "
            "6ND estimate's convention).",
        ),
        (
            lambda a, b, s: _flops(a, b, s, causal=True),
            "only the unmasked half of the attention scores is counted: the kernels compute all seq_len x seq_len "
            "scores and mask afterwards.",
        ),
        (
            lambda a, b, s: _flops(a, b, s, score_heads=lambda args: args.kv_heads),
            "the attention products are counted for the key/value heads: every QUERY head computes its own scores "
            "(n_heads of them), whatever head it reads.",
        ),
        (
            lambda a, b, s: _flops(a, b, s, ffn_matrices=2),
            "the SwiGLU FFN has three matrices (w1, w3: dim -> hidden; w2: hidden -> dim), not two.",
        ),
    ],
    atol=0.0,
    rtol=0.0,
)


# --- 5.3 the experiment: which sub-layer does the copying? ------------------------------------------------------


def ablation_labels(n_layers: int) -> list[str]:
    return ["nothing removed"] + [f"{part} {i}" for i in range(n_layers) for part in ("attention", "feed_forward")]


def _forward_without(model: Transformer, tokens: torch.Tensor, removed: str) -> torch.Tensor:
    h = model.tok_embeddings(tokens)
    freqs_cis = model.freqs_cis[: tokens.shape[1]]
    for i, layer in enumerate(model.layers):
        if removed != f"attention {i}":
            h = h + layer.attention(layer.attention_norm(h), freqs_cis)
        if removed != f"feed_forward {i}":
            h = h + layer.feed_forward(layer.ffn_norm(h))
    return model.output(model.norm(h)).float()


def ablation_experiment_reference(model: Transformer, inputs: torch.Tensor, targets: torch.Tensor) -> dict:
    """The loss (toy_tasks.task_loss) of the model as it is, and with one sub-layer's contribution to the residual
    stream removed at a time (h = x instead of h = x + attention(attention_norm(x)), and the same for the FFN),
    keyed "nothing removed", "attention 0", "feed_forward 0", "attention 1", ..."""
    with torch.inference_mode():
        return {label: task_loss(_forward_without(model, inputs, label), targets).item()
                for label in ablation_labels(model.n_layers)}  # fmt: skip


def _ablation_cases():
    trained = tiny_model(2, seed=4)
    train_on_task(trained, "copy", steps=6, lr=3e-3, seed=4)
    return [
        ("a random 2-layer model on copy inputs", (tiny_model(2, seed=5).eval(), *evaluation_batch("copy", 8))),
        ("a random 3-layer model on look-back inputs",
         (tiny_model(3, seed=6).eval(), *evaluation_batch("lookback", 8))),
        ("a 2-layer model trained for 6 steps", (trained, *evaluation_batch("copy", 8))),
    ]  # fmt: skip


def _ab_variant(forward):
    def measure(model, inputs, targets):
        with torch.inference_mode():
            return {label: task_loss(forward(model, inputs, label), targets).item()
                    for label in ablation_labels(model.n_layers)}  # fmt: skip

    return measure


def _without_whole_block(model, tokens, removed):
    h = model.tok_embeddings(tokens)
    freqs_cis = model.freqs_cis[: tokens.shape[1]]
    for i, layer in enumerate(model.layers):
        if removed.endswith(f" {i}"):
            continue
        h = layer(h, freqs_cis)
    return model.output(model.norm(h)).float()


def _without_norm(model, tokens, removed):
    h = model.tok_embeddings(tokens)
    freqs_cis = model.freqs_cis[: tokens.shape[1]]
    for i, layer in enumerate(model.layers):
        a = layer.attention(h if removed == f"attention {i}" else layer.attention_norm(h), freqs_cis)
        h = h + a
        f = layer.feed_forward(h if removed == f"feed_forward {i}" else layer.ffn_norm(h))
        h = h + f
    return model.output(model.norm(h)).float()


def _replacing_stream(model, tokens, removed):
    h = model.tok_embeddings(tokens)
    freqs_cis = model.freqs_cis[: tokens.shape[1]]
    for i, layer in enumerate(model.layers):
        a = layer.attention(layer.attention_norm(h), freqs_cis)
        h = torch.zeros_like(h) if removed == f"attention {i}" else h + a
        f = layer.feed_forward(layer.ffn_norm(h))
        h = torch.zeros_like(h) if removed == f"feed_forward {i}" else h + f
    return model.output(model.norm(h)).float()


def _no_final_norm(model, tokens, removed):
    h = model.tok_embeddings(tokens)
    freqs_cis = model.freqs_cis[: tokens.shape[1]]
    for i, layer in enumerate(model.layers):
        if removed != f"attention {i}":
            h = h + layer.attention(layer.attention_norm(h), freqs_cis)
        if removed != f"feed_forward {i}":
            h = h + layer.feed_forward(layer.ffn_norm(h))
    return model.output(h).float()


def _ablation_outcome(result: dict) -> tuple[str, str]:
    base = result["nothing removed"]
    worst = max((label for label in result if label != "nothing removed"), key=result.get)
    account = (f"the loss is {base:.2f} with every sub-layer and rises most, to {result[worst]:.2f}, without "
               f"{worst}")  # fmt: skip
    n_layers = (len(result) - 1) // 2
    if worst == "attention 0":
        return "the first attention", account
    if worst == f"attention {n_layers - 1}":
        return "the last attention", account
    return "a feed-forward layer", account


check_ablation_experiment = make_experiment(
    "5.3 ablation_experiment",
    ablation_experiment_reference,
    _ablation_cases,
    [
        (
            _ab_variant(_without_whole_block),
            "the whole block was skipped: remove one sub-layer at a time, keeping the other sub-layer of its block.",
        ),
        (
            _ab_variant(_without_norm),
            "the norm was skipped, not the sub-layer: the removed sub-layer adds nothing to the stream "
            "(h stays h).",
        ),
        (
            _ab_variant(_replacing_stream),
            "the stream itself was zeroed: removing a sub-layer leaves the residual stream as it was (h = x), it "
            "does not wipe what the earlier layers wrote.",
        ),
        (
            _ab_variant(_no_final_norm),
            "the final norm is missing from your forward pass: the output head reads model.norm(h).",
        ),
    ],
    choices={
        "the first attention": "without layer 0's attention the loss rises most",
        "the last attention": "without the last layer's attention the loss rises most",
        "a feed-forward layer": "without one of the FFNs the loss rises most",
    },
    outcome=_ablation_outcome,
    atol=1e-5,
    rtol=1e-5,
)

__all__ = [
    "ablation_experiment_reference",
    "ablation_labels",
    "check_ablation_experiment",
    "check_block_forward",
    "check_count_parameters",
    "check_forward_flops",
    "forward_flops_reference",
]
