"""Checkers for lesson 07 (inference, Meta's llama/generation.py): top-p filtering, one decoding step with the
KV cache, and temperature.

The references of 7.1 and 7.3 are llama2_minimal.generation's `top_p_filter` and `apply_temperature`, the
deterministic halves of its sampling (tests/test_inference_checks.py checks that next_token draws from exactly
those distributions); the sampling explorer (llama2_minimal.widgets) shows them too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..generation import apply_temperature, top_p_filter
from ..model import KVCache, ModelArgs, Transformer
from .core import make_checker

# --- 7.1 top_p_filter -----------------------------------------------------------------------------------------


def _top_p_cases():
    g = torch.Generator().manual_seed(7)

    def distribution(*shape, scale=1.5):
        return torch.softmax(scale * torch.randn(*shape, generator=g), dim=-1)

    return [
        ("2 distributions over 8 tokens, p = 0.9 (Meta's default)", (distribution(2, 8), 0.9)),
        ("p = 1.0: nothing is filtered", (distribution(2, 8), 1.0)),
        ("a peaked distribution whose top token alone exceeds p = 0.9", (torch.tensor([[0.03, 0.95, 0.02]]), 0.9)),
        ("3 distributions over 50 tokens, p = 0.5", (distribution(3, 50, scale=2.0), 0.5)),
        ("a flat distribution over 10 tokens, p = 0.35", (torch.full((1, 10), 0.1), 0.35)),
    ]


def _sorted_filter(probs, p, keep_crossing=True, renormalise=True):
    probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
    cumulative = torch.cumsum(probs_sort, dim=-1)
    drop = (cumulative - probs_sort > p) if keep_crossing else (cumulative > p)
    probs_sort = probs_sort.masked_fill(drop, 0.0)
    if renormalise:
        probs_sort = probs_sort / probs_sort.sum(dim=-1, keepdim=True)
    return probs_sort, probs_idx


def _top_p_drops_crossing_token(probs, p):
    probs_sort, probs_idx = _sorted_filter(probs, p, keep_crossing=False)
    return torch.zeros_like(probs).scatter(-1, probs_idx, probs_sort)


def _top_p_not_renormalised(probs, p):
    probs_sort, probs_idx = _sorted_filter(probs, p, renormalise=False)
    return torch.zeros_like(probs).scatter(-1, probs_idx, probs_sort)


def _top_p_unsorted(probs, p):
    kept = probs.masked_fill(torch.cumsum(probs, dim=-1) - probs > p, 0.0)
    return kept / kept.sum(dim=-1, keepdim=True)


def _top_p_sorted_order(probs, p):
    return _sorted_filter(probs, p)[0]


check_top_p_filter = make_checker(
    "7.1 top_p_filter",
    top_p_filter,
    _top_p_cases,
    [
        (
            _top_p_drops_crossing_token,
            "the token that crosses p is dropped: keep a token when the cumulative probability BEFORE it is at "
            "most p (cumsum - probs_sort > p is what to zero), so the kept tokens reach at least p.",
        ),
        (_top_p_not_renormalised, "the kept probabilities are not renormalised: divide them by their sum."),
        (
            _top_p_unsorted,
            "the cumulative sum runs in vocabulary order: sort the probabilities in descending order first "
            "(torch.sort(probs, descending=True)), so the nucleus holds the most probable tokens.",
        ),
        (
            _top_p_sorted_order,
            "the result is in sorted order: put each probability back at its token's id "
            "(torch.zeros_like(probs).scatter(-1, probs_idx, probs_sort)).",
        ),
    ],
    atol=1e-6,
)

# --- 7.2 decode_step ------------------------------------------------------------------------------------------


class _WritableCache(KVCache):
    """A KV cache for the checker's cases. Writing into the cache is what a decoding step is for, so the
    checker's "did you change your inputs?" test compares only its shape."""

    def __eq__(self, other) -> bool:
        return isinstance(other, KVCache) and self.k.shape == other.k.shape

    __hash__ = None


def decode_step_reference(model: Transformer, tokens: torch.Tensor, start_pos: int, cache: KVCache) -> torch.Tensor:
    """Feed the new tokens (B, S) at positions start_pos.. through the model with the cache; the logits of the
    last position (B, V) predict the next token."""
    with torch.inference_mode():
        return model(tokens, start_pos, cache)[:, -1]


def _decode_cases():
    torch.manual_seed(8)
    gqa = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16,
                                max_seq_len=32)).eval()  # fmt: skip
    mqa = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=48, multiple_of=16,
                                max_seq_len=32)).eval()  # fmt: skip
    g = torch.Generator().manual_seed(9)

    def case(model, batch, cached, new):
        cache = _WritableCache(model.params, batch, 16)
        prefix = torch.randint(3, model.vocab_size, (batch, cached), generator=g)
        if cached:
            with torch.inference_mode():
                model(prefix, 0, cache)  # the prompt's keys and values are in the cache
        tokens = torch.randint(3, model.vocab_size, (batch, new), generator=g)
        return model, tokens, cached, cache

    return [
        ("batch 2, 5 positions in the cache, 3 new tokens at positions 5-7", case(gqa, 2, 5, 3)),
        ("batch 2, one new token at position 8 (a decoding step)", case(gqa, 2, 8, 1)),
        ("batch 1, a prompt of 6 tokens into an empty cache (start_pos 0)", case(gqa, 1, 0, 6)),
        ("batch 3, one key/value head (MQA), one new token at position 4", case(mqa, 3, 4, 1)),
    ]


def _decode_at_zero(model, tokens, start_pos, cache):
    with torch.inference_mode():
        return model(tokens, 0, cache)[:, -1]


def _decode_probabilities(model, tokens, start_pos, cache):
    with torch.inference_mode():
        return torch.softmax(model(tokens, start_pos, cache)[:, -1], dim=-1)


def _decode_first_position(model, tokens, start_pos, cache):
    with torch.inference_mode():
        return model(tokens, start_pos, cache)[:, 0]


def _decode_every_position(model, tokens, start_pos, cache):
    with torch.inference_mode():
        return model(tokens, start_pos, cache)


check_decode_step = make_checker(
    "7.2 decode_step",
    decode_step_reference,
    _decode_cases,
    [
        (
            _decode_at_zero,
            "the new tokens see only each other, not the cached ones: pass both the cache and start_pos, "
            "model(tokens, start_pos, cache). (Fed at position 0 they overwrite the cache's first entries; "
            "without the cache they attend to nothing before them: both give these logits, because rotary "
            "attention depends only on relative positions.)",
        ),
        (
            _decode_first_position,
            "these are the logits of the first new token: the next token is predicted by the LAST position, "
            "logits[:, -1].",
        ),
        (
            _decode_every_position,
            "you return the logits of every new position (B, S, V): return those of the last one, (B, V).",
        ),
        (_decode_probabilities, "you return probabilities (a softmax): return the logits, model(...)[:, -1]."),
    ],
    atol=1e-5,
)

# --- 7.3 apply_temperature ------------------------------------------------------------------------------------


def _temperature_cases():
    g = torch.Generator().manual_seed(10)
    return [
        ("logits (2, 10), T = 0.6 (Meta's default)", (3 * torch.randn(2, 10, generator=g), 0.6)),
        ("logits (2, 10), T = 0: greedy", (3 * torch.randn(2, 10, generator=g), 0.0)),
        ("bfloat16 logits (2, 16), T = 1.3", ((3 * torch.randn(2, 16, generator=g)).bfloat16(), 1.3)),
        ("logits (3, 50), T = 1", (2 * torch.randn(3, 50, generator=g), 1.0)),
        ("logits (1, 7), T = 5: almost uniform", (torch.randn(1, 7, generator=g), 5.0)),
    ]


def _temperature_multiplied(logits, temperature):
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    return torch.softmax(logits.float() * temperature, dim=-1)


def _temperature_after_softmax(logits, temperature):
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    return torch.softmax(logits.float(), dim=-1) / temperature


def _temperature_zero_as_ids(logits, temperature):
    if temperature == 0:
        return logits.argmax(dim=-1)
    return torch.softmax(logits.float() / temperature, dim=-1)


def _temperature_in_input_dtype(logits, temperature):
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    return torch.softmax(logits / temperature, dim=-1)


check_apply_temperature = make_checker(
    "7.3 apply_temperature",
    apply_temperature,
    _temperature_cases,
    [
        (
            _temperature_multiplied,
            "the logits are multiplied by T: divide them, softmax(logits / T), so that T < 1 sharpens the "
            "distribution and T > 1 flattens it.",
        ),
        (
            _temperature_after_softmax,
            "the probabilities are divided by T after the softmax (they no longer sum to 1): divide the "
            "logits, then take the softmax.",
        ),
        (
            _temperature_zero_as_ids,
            "at T = 0 you return the argmax ids: return a distribution (B, V) with all the probability on the "
            "argmax, F.one_hot(logits.argmax(-1), V).float().",
        ),
        (
            _temperature_in_input_dtype,
            "the softmax is computed in the logits' dtype (bfloat16 here): compute it in float32, "
            "logits.float() / T, as Meta's generate does.",
        ),
    ],
    atol=1e-6,
)

__all__ = [
    "apply_temperature",
    "check_apply_temperature",
    "check_decode_step",
    "check_top_p_filter",
    "decode_step_reference",
    "top_p_filter",
]
