"""Checkers for lesson 04 (attention and grouped-query attention, §2.2 and Table 18).

The exercises:
4.1 pool_kv_heads(w, n_heads, n_kv_heads): a multi-head wk or wv turned into grouped-query (or multi-query) form by
    mean-pooling the heads of each group (Ainslie et al. 2023, the recipe for converting a checkpoint).
4.2 SlidingKVCache(args, batch_size, window): a KV cache that keeps only the last `window` positions, so that each
    token attends to itself and the window - 1 tokens before it, in memory that does not grow with the text.
4.3 an experiment: convert a trained multi-head model to GQA and MQA without retraining, by mean-pooling or by
    keeping one head per group, and measure what each conversion costs.

The checkers of the lesson's in-the-open builds stay for a learner who writes them again: repeat_kv(x, n_rep),
causal_attention(q, k, v) with grouped heads, and kv_cache_bytes(args, seq_len, batch, bytes_per_value).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ..model import LLAMA2_PARAMS, KVCache, ModelArgs, Transformer, causal_mask, repeat_kv
from ..toy_tasks import evaluation_batch, task_loss, tiny_model, train_on_task
from .core import make_checker, make_experiment

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


# --- 4.1 pool_kv_heads: multi-head -> grouped-query by mean-pooling --------------------------------------------


def pool_kv_heads_reference(w: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """wk or wv of n_heads heads (n_heads * D, dim) -> (n_kv_heads * D, dim): key/value head j is the mean of
    heads j * n_rep .. j * n_rep + n_rep - 1, the group of query heads that will read it (n_rep = n_heads //
    n_kv_heads). Ainslie et al. (2023) start GQA models from multi-head checkpoints this way."""
    rows, dim = w.shape
    head_dim, n_rep = rows // n_heads, n_heads // n_kv_heads
    return w.view(n_kv_heads, n_rep, head_dim, dim).mean(dim=1).reshape(n_kv_heads * head_dim, dim)


def _pool_cases():
    g = torch.Generator().manual_seed(41)
    return [
        ("8 heads of 4 features into 2 groups (GQA), dim 12", (torch.randn(32, 12, generator=g), 8, 2)),
        ("4 heads of 8 features into 1 (MQA), dim 16", (torch.randn(32, 16, generator=g), 4, 1)),
        ("6 heads into 3 groups of 2, head_dim 2, dim 5", (torch.randn(12, 5, generator=g), 6, 3)),
        ("4 heads kept as 4 (n_rep = 1: nothing to pool)", (torch.randn(16, 8, generator=g), 4, 4)),
        ("64 heads of 2 features into 8 groups (the 70B's grouping)", (torch.randn(128, 3, generator=g), 64, 8)),
        ("float64 weights, 6 heads into 2 groups", (torch.randn(18, 4, generator=g, dtype=torch.float64), 6, 2)),
    ]


def _pool_strided(w, n_heads, n_kv_heads):
    rows, dim = w.shape
    head_dim, n_rep = rows // n_heads, n_heads // n_kv_heads
    return w.view(n_rep, n_kv_heads, head_dim, dim).mean(dim=0).reshape(n_kv_heads * head_dim, dim)


def _pool_first(w, n_heads, n_kv_heads):
    rows, dim = w.shape
    head_dim, n_rep = rows // n_heads, n_heads // n_kv_heads
    return w.view(n_kv_heads, n_rep, head_dim, dim)[:, 0].reshape(n_kv_heads * head_dim, dim)


def _pool_sum(w, n_heads, n_kv_heads):
    rows, dim = w.shape
    head_dim, n_rep = rows // n_heads, n_heads // n_kv_heads
    return w.view(n_kv_heads, n_rep, head_dim, dim).sum(dim=1).reshape(n_kv_heads * head_dim, dim)


def _pool_rows(w, n_heads, n_kv_heads):
    rows, dim = w.shape
    n_rep = n_heads // n_kv_heads
    return w.view(rows // n_rep, n_rep, dim).mean(dim=1)  # adjacent ROWS averaged, whatever head they belong to


def _pool_all(w, n_heads, n_kv_heads):
    rows, dim = w.shape
    head_dim = rows // n_heads
    mean = w.view(n_heads, head_dim, dim).mean(dim=0)
    return mean.repeat(n_kv_heads, 1)


check_pool_kv_heads = make_checker(
    "4.1 pool_kv_heads",
    pool_kv_heads_reference,
    _pool_cases,
    [
        (
            _pool_strided,
            "the groups are strided (heads j, j + K, j + 2K, ...): a group is n_rep CONSECUTIVE heads, the ones "
            "that repeat_kv hands key/value head j (query heads j * n_rep .. j * n_rep + n_rep - 1).",
        ),
        (
            _pool_first,
            "each group keeps its first head: mean-pooling averages the n_rep heads of the group.",
        ),
        (_pool_sum, "the heads of a group are summed: take their mean, so the pooled head keeps their scale."),
        (
            _pool_rows,
            "adjacent rows are averaged: a head is head_dim consecutive rows; average whole heads, row r of one head "
            "with row r of the other heads of its group.",
        ),
        (
            _pool_all,
            "all heads are averaged into one and copied to every group: each group averages only its own heads.",
        ),
    ],
)


# --- 4.2 SlidingKVCache: a KV cache over the last `window` positions --------------------------------------------


class SlidingKVCacheReference:
    """Keys (after RoPE) and values of the last `window` positions of every layer, in a ring buffer of `window`
    slots: position p lives in slot p % window. update() returns the keys and values a new token may attend to,
    oldest first: the positions max(0, end - window) .. end - 1. For a prompt (start_pos 0) of at most `window`
    tokens and then one token at a time, as in decoding."""

    def __init__(self, args: ModelArgs, batch_size: int, window: int):
        self.window = window
        self.max_seq_len = args.max_seq_len  # positions run on to the model's context; only the memory slides
        shape = (args.n_layers, batch_size, window, args.kv_heads, args.head_dim)
        self.k = torch.zeros(shape)
        self.v = torch.zeros(shape)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def update(self, layer: int, start_pos: int, xk: torch.Tensor, xv: torch.Tensor):
        batch, seqlen = xk.shape[:2]
        if seqlen > self.window or (seqlen > 1 and start_pos > 0):
            raise ValueError("SlidingKVCache takes a prompt of at most `window` tokens at start_pos 0, then one token "
                             "at a time.")  # fmt: skip
        end = start_pos + seqlen
        slots = torch.arange(start_pos, end) % self.window
        self.k[layer, :batch, slots] = xk
        self.v[layer, :batch, slots] = xv
        order = torch.arange(max(0, end - self.window), end) % self.window  # oldest first
        return self.k[layer, :batch, order], self.v[layer, :batch, order]


def sliding_window_mask(seqlen: int, window: int) -> torch.Tensor:
    """(S, S) boolean: token i attends to tokens i - window + 1 .. i (itself and the window - 1 before it)."""
    i = torch.arange(seqlen)[:, None]
    j = torch.arange(seqlen)[None, :]
    return (j <= i) & (j > i - window)


def held_elements(cache) -> int:
    """How many numbers the cache object keeps in its tensors (attributes, and lists, tuples or dicts of them)."""

    def count(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel()
        if isinstance(value, (list, tuple)):
            return sum(count(v) for v in value)
        if isinstance(value, dict):
            return sum(count(v) for v in value.values())
        return 0

    return sum(count(v) for v in vars(cache).values())


def decode_with_cache(cache_class, model: Transformer, tokens: torch.Tensor, prompt_len: int, window: int):
    """Run `tokens` through the model as decoding does: the first prompt_len tokens at once into an empty cache,
    then one token at a time. Returns (the last-position logits of every step (B, steps, V), whether the cache
    keeps no more numbers than `window` positions of keys and values need)."""
    cache = cache_class(model.params, tokens.shape[0], window)
    with torch.inference_mode():
        logits = [model(tokens[:, :prompt_len], 0, cache)[:, -1]]
        for position in range(prompt_len, tokens.shape[1]):
            logits.append(model(tokens[:, position : position + 1], position, cache)[:, -1])
    args = model.params
    budget = 2 * args.n_layers * tokens.shape[0] * window * args.kv_heads * args.head_dim
    return torch.stack(logits, dim=1), held_elements(cache) <= budget


def _sliding_cases():
    torch.manual_seed(42)
    gqa = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=48, multiple_of=16,
                                max_seq_len=24)).eval()  # fmt: skip
    mqa = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=1, vocab_size=40, multiple_of=16,
                                max_seq_len=24)).eval()  # fmt: skip
    g = torch.Generator().manual_seed(43)

    def tokens(model, batch, n):
        return torch.randint(3, model.vocab_size, (batch, n), generator=g)

    return [
        ("window 4, a prompt of 3 tokens, then 9 tokens one at a time (GQA, batch 2)", (gqa, tokens(gqa, 2, 12), 3, 4)),
        ("window 3, a prompt that fills it (3 tokens), then 7 more (MQA)", (mqa, tokens(mqa, 1, 10), 3, 3)),
        ("window 6, a prompt of 1 token, then 13 more (batch 3)", (gqa, tokens(gqa, 3, 14), 1, 6)),
        ("window 1: each token sees only itself", (mqa, tokens(mqa, 2, 6), 1, 1)),
        ("a window longer than the text (window 20, 8 tokens): plain causal attention",
         (gqa, tokens(gqa, 1, 8), 2, 20)),
    ]  # fmt: skip


class _FullCache(SlidingKVCacheReference):
    """Keeps every position and hands back the last `window` of them: right outputs, memory that grows."""

    def __init__(self, args, batch_size, window):
        super().__init__(args, batch_size, args.max_seq_len)
        self.keep = window

    def update(self, layer, start_pos, xk, xv):
        batch, end = xk.shape[0], start_pos + xk.shape[1]
        self.k[layer, :batch, start_pos:end] = xk
        self.v[layer, :batch, start_pos:end] = xv
        first = max(0, end - self.keep)
        return self.k[layer, :batch, first:end], self.v[layer, :batch, first:end]


class _NeverSlides(_FullCache):
    def __init__(self, args, batch_size, window):
        super().__init__(args, batch_size, args.max_seq_len)


class _WholeBuffer(SlidingKVCacheReference):
    """Returns all `window` slots, also before they are filled: the empty slots' zero keys get attention too."""

    def update(self, layer, start_pos, xk, xv):
        super().update(layer, start_pos, xk, xv)
        batch = xk.shape[0]
        if start_pos == 0:
            return self.k[layer, :batch, : xk.shape[1]], self.v[layer, :batch, : xk.shape[1]]
        return self.k[layer, :batch], self.v[layer, :batch]


def _window_off_by(delta):
    class OffByOne(SlidingKVCacheReference):
        def __init__(self, args, batch_size, window):
            super().__init__(args, batch_size, max(1, window + delta))

    return OffByOne


class _ReadBeforeWrite(SlidingKVCacheReference):
    """Hands back the positions before the new token and stores it afterwards: a token cannot see itself."""

    def update(self, layer, start_pos, xk, xv):
        if start_pos == 0:
            return super().update(layer, start_pos, xk, xv)
        batch = xk.shape[0]
        order = torch.arange(max(0, start_pos - self.window), start_pos) % self.window
        k, v = self.k[layer, :batch, order].clone(), self.v[layer, :batch, order].clone()
        super().update(layer, start_pos, xk, xv)
        return k, v


check_sliding_kv_cache = make_checker(
    "4.2 SlidingKVCache",
    SlidingKVCacheReference,
    _sliding_cases,
    [
        (
            _FullCache,
            "the outputs are right, but your cache keeps every position: its memory grows with the text. Keep only "
            "`window` slots per layer and overwrite the oldest (position p in slot p % window).",
        ),
        (
            _NeverSlides,
            "the window never slides: every token attends to the whole text. Return only the last `window` "
            "positions (the new one included).",
        ),
        (
            _WholeBuffer,
            "before the buffer is full you return all `window` slots, so the new token also attends to empty "
            "slots (zero keys score 0, which still takes softmax weight): return only the positions filled so far.",
        ),
        (
            _window_off_by(1),
            "one position too many: a window of W means the new token and the W - 1 before it.",
        ),
        (
            _window_off_by(-1),
            "one position too few: a window of W means the new token and the W - 1 before it.",
        ),
        (
            _ReadBeforeWrite,
            "the new token's key and value are stored after the read: store them first, so that a token attends "
            "to itself.",
        ),
    ],
    atol=1e-5,
    rtol=1e-4,
    apply=lambda cache_class, args: decode_with_cache(cache_class, *args),
)


# --- 4.3 the experiment: converting a trained multi-head model to GQA and MQA -----------------------------------

CONVERSIONS = ("GQA, mean of each group", "GQA, first head of each group", "MQA, mean of all heads",
               "MQA, first head")  # fmt: skip


def _converted(model: Transformer, n_kv_heads: int, how: str) -> Transformer:
    args = dataclasses.replace(model.params, n_kv_heads=n_kv_heads)
    state = {}
    for name, w in model.state_dict().items():
        if name.endswith(("attention.wk.weight", "attention.wv.weight")):
            heads = w.view(n_kv_heads, args.n_heads // n_kv_heads, args.head_dim, -1)
            w = (heads.mean(dim=1) if how == "mean" else heads[:, 0]).reshape(n_kv_heads * args.head_dim, -1)
        state[name] = w
    converted = Transformer(args)
    converted.load_state_dict(state)
    return converted.eval()


def conversion_experiment_reference(model: Transformer, inputs: torch.Tensor, targets: torch.Tensor) -> dict:
    """The loss (toy_tasks.task_loss) of a multi-head model on (inputs, targets), and of the same model converted,
    without retraining, to 2 key/value heads (GQA) and to 1 (MQA), once by mean-pooling each group's wk and wv
    and once by keeping each group's first head; wq and wo and everything else are kept."""
    with torch.inference_mode():
        out = {"MHA (as trained)": task_loss(model(inputs), targets).item()}
        for name in CONVERSIONS:
            n_kv_heads = 2 if name.startswith("GQA") else 1
            converted = _converted(model, n_kv_heads, "mean" if "mean" in name else "first")
            out[name] = task_loss(converted(inputs), targets).item()
    return out


def _conversion_cases():
    briefly_trained = tiny_model(2, seed=3)
    train_on_task(briefly_trained, "lookback", steps=8, lr=3e-3, seed=3)
    return [
        ("a random 2-layer model on look-back inputs",
         (tiny_model(2, seed=1).eval(), *evaluation_batch("lookback", 8))),
        ("another random model on copy inputs", (tiny_model(1, seed=2).eval(), *evaluation_batch("copy", 8))),
        ("a model trained for 8 steps", (briefly_trained, *evaluation_batch("lookback", 8))),
    ]  # fmt: skip


def _ce_variant(convert):
    def measure(model, inputs, targets):
        with torch.inference_mode():
            out = {"MHA (as trained)": task_loss(model(inputs), targets).item()}
            for name in CONVERSIONS:
                converted = convert(model, 2 if name.startswith("GQA") else 1, "mean" if "mean" in name else "first")
                out[name] = task_loss(converted(inputs), targets).item()
        return out

    return measure


def _convert_strided(model, n_kv_heads, how):
    args = dataclasses.replace(model.params, n_kv_heads=n_kv_heads)
    state = {}
    for name, w in model.state_dict().items():
        if name.endswith(("attention.wk.weight", "attention.wv.weight")):
            heads = w.view(args.n_heads // n_kv_heads, n_kv_heads, args.head_dim, -1)
            w = (heads.mean(dim=0) if how == "mean" else heads[0]).reshape(n_kv_heads * args.head_dim, -1)
        state[name] = w
    converted = Transformer(args)
    converted.load_state_dict(state)
    return converted.eval()


def _convert_keys_only(model, n_kv_heads, how):
    args = dataclasses.replace(model.params, n_kv_heads=n_kv_heads)
    state = {}
    for name, w in model.state_dict().items():
        if name.endswith(("attention.wk.weight", "attention.wv.weight")):
            heads = w.view(n_kv_heads, args.n_heads // n_kv_heads, args.head_dim, -1)
            use_mean = how == "mean" and name.endswith("wk.weight")
            w = (heads.mean(dim=1) if use_mean else heads[:, 0]).reshape(n_kv_heads * args.head_dim, -1)
        state[name] = w
    converted = Transformer(args)
    converted.load_state_dict(state)
    return converted.eval()


def _convert_last(model, n_kv_heads, how):
    if how == "mean":
        return _converted(model, n_kv_heads, how)
    args = dataclasses.replace(model.params, n_kv_heads=n_kv_heads)
    state = {}
    for name, w in model.state_dict().items():
        if name.endswith(("attention.wk.weight", "attention.wv.weight")):
            w = w.view(n_kv_heads, args.n_heads // n_kv_heads, args.head_dim, -1)[:, -1].reshape(-1, w.shape[-1])
        state[name] = w
    converted = Transformer(args)
    converted.load_state_dict(state)
    return converted.eval()


def _conversion_outcome(result: dict) -> tuple[str, str]:
    base = result["MHA (as trained)"]
    costs = {name: result[name] - base for name in CONVERSIONS}
    account = f"the loss of {base:.2f} changed by " + ", ".join(f"{costs[n]:+.2f} ({n})" for n in CONVERSIONS)
    gqa_mean, gqa_first, mqa_mean, mqa_first = (costs[n] for n in CONVERSIONS)
    mean_wins = [gqa_mean < gqa_first, mqa_mean < mqa_first]
    if all(mean_wins):
        return "mean pooling keeps more", account
    if not any(mean_wins):
        return "one head keeps more", account
    return "it depends", account


check_conversion_experiment = make_experiment(
    "4.3 conversion_experiment",
    conversion_experiment_reference,
    _conversion_cases,
    [
        (
            _ce_variant(_convert_strided),
            "the groups are strided: a group is n_rep consecutive heads (the query heads h with h // n_rep = j "
            "read key/value head j).",
        ),
        (
            _ce_variant(_convert_keys_only),
            "only wk was mean-pooled: wv is pooled the same way (the values are shared by the group too).",
        ),
        (
            _ce_variant(_convert_last),
            "'first head' took the last head of each group: keep head j * n_rep, the first of group j.",
        ),
    ],
    choices={
        "mean pooling keeps more": "the mean of a group's heads costs less than keeping one of them, for GQA and MQA",
        "one head keeps more": "keeping one head of each group costs less than averaging them, for GQA and MQA",
        "it depends": "mean pooling wins for one of GQA and MQA and loses for the other",
    },
    outcome=_conversion_outcome,
    atol=1e-5,
    rtol=1e-5,
)

__all__ = [
    "check_causal_attention",
    "check_conversion_experiment",
    "check_kv_cache_bytes",
    "check_pool_kv_heads",
    "check_repeat_kv",
    "check_sliding_kv_cache",
    "conversion_experiment_reference",
    "decode_with_cache",
    "pool_kv_heads_reference",
    "sliding_window_mask",
    "SlidingKVCacheReference",
]
