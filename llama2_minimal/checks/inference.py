"""Checkers for lesson 07 (inference, Meta's llama/generation.py).

The exercises:
7.1 top_p_min_tokens(probs, p, min_tokens): nucleus sampling's distribution with a minimum number of tokens kept
    (Hugging Face's `min_tokens_to_keep`), a variant of Meta's top-p.
7.2 render_chat(dialog): Meta's chat format, from its description (the reference is llama2_minimal.chat's
    render_dialog).
7.3 an experiment: at Meta's sampling defaults, at how many positions of a text does the nucleus hold a single
    token, so that sampling is greedy there? Predict which kind of text leaves the most choice, then measure.

The checkers of top_p_filter, decode_step and apply_temperature (whose references are llama2_minimal.generation's
`top_p_filter` and `apply_temperature`, the deterministic halves of its sampling; tests/test_inference_checks.py
checks that next_token draws from exactly those distributions) check the lesson's in-the-open builds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..chat import render_dialog
from ..generation import apply_temperature, top_p_filter
from ..model import KVCache, ModelArgs, Transformer
from .core import make_checker, make_experiment

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


# --- 7.1 top_p_min_tokens: nucleus with a floor on the number of tokens -----------------------------------------


def top_p_min_tokens_reference(probs: torch.Tensor, p: float, min_tokens: int) -> torch.Tensor:
    """Meta's top-p filter, except that at least `min_tokens` of the most probable tokens are always kept (all of
    them if min_tokens exceeds the vocabulary): sort descending, zero every token whose cumulative probability
    before it exceeds p unless it is among the first min_tokens, renormalise, and put each probability back at its
    token's id."""
    probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
    before = torch.cumsum(probs_sort, dim=-1) - probs_sort
    rank = torch.arange(probs.shape[-1], device=probs.device)
    drop = (before > p) & (rank >= min_tokens)
    probs_sort = probs_sort.masked_fill(drop, 0.0)
    probs_sort = probs_sort / probs_sort.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter(-1, probs_idx, probs_sort)


def _min_tokens_cases():
    g = torch.Generator().manual_seed(71)

    def distribution(*shape, scale=2.0):
        return torch.softmax(scale * torch.randn(*shape, generator=g), dim=-1)

    return [
        ("2 distributions over 10 tokens, p = 0.9, at least 1 token", (distribution(2, 10), 0.9, 1)),
        ("a peaked distribution (the top token alone exceeds p), at least 3 tokens",
         (torch.tensor([[0.01, 0.93, 0.02, 0.04]]), 0.5, 3)),
        ("3 peaked distributions over 30 tokens, p = 0.6, at least 4", (distribution(3, 30, scale=4.0), 0.6, 4)),
        ("a flat-ish distribution where the nucleus alone is larger than the floor", (distribution(1, 12, scale=0.3),
                                                                                      0.5, 2)),
        ("p = 1.0: nothing is filtered", (distribution(2, 8), 1.0, 2)),
        ("a floor larger than the vocabulary (keep everything)", (distribution(2, 5, scale=5.0), 0.3, 9)),
        ("min_tokens = 0: plain top-p", (distribution(2, 16, scale=3.0), 0.7, 0)),
    ]  # fmt: skip


def _mt(probs, p, min_tokens, *, floor=None, keep_crossing=True, renormalise=True, sorted_out=False, cap=False):
    probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
    cumulative = torch.cumsum(probs_sort, dim=-1)
    nucleus_drop = (cumulative - probs_sort > p) if keep_crossing else (cumulative > p)
    rank = torch.arange(probs.shape[-1])
    k = min_tokens if floor is None else floor(min_tokens)
    drop = (nucleus_drop | (rank >= k)) if cap else (nucleus_drop & (rank >= k))
    probs_sort = probs_sort.masked_fill(drop, 0.0)
    if renormalise:
        probs_sort = probs_sort / probs_sort.sum(dim=-1, keepdim=True)
    return probs_sort if sorted_out else torch.zeros_like(probs).scatter(-1, probs_idx, probs_sort)


check_top_p_min_tokens = make_checker(
    "7.1 top_p_min_tokens",
    top_p_min_tokens_reference,
    _min_tokens_cases,
    [
        (
            lambda probs, p, m: _mt(probs, p, m, floor=lambda k: 0),
            "the floor is ignored: this is plain top-p; keep at least the min_tokens most probable tokens even when "
            "the nucleus is smaller.",
        ),
        (
            lambda probs, p, m: _mt(probs, p, m, cap=True),
            "min_tokens was used as a ceiling (at most that many tokens): it is a floor, at least that many.",
        ),
        (
            lambda probs, p, m: _mt(probs, p, m, floor=lambda k: k + 1),
            "one token too many is kept: the floor is the min_tokens most probable tokens, ranks 0 .. min_tokens - 1.",
        ),
        (
            lambda probs, p, m: _mt(probs, p, m, floor=lambda k: max(0, k - 1)),
            "one token too few is kept: the floor is the min_tokens most probable tokens, ranks 0 .. min_tokens - 1.",
        ),
        (
            lambda probs, p, m: _mt(probs, p, m, keep_crossing=False),
            "the token that crosses p is dropped: keep a token when the cumulative probability BEFORE it is at most p.",
        ),
        (
            lambda probs, p, m: _mt(probs, p, m, renormalise=False),
            "the kept probabilities are not renormalised: divide them by their sum.",
        ),
        (
            lambda probs, p, m: _mt(probs, p, m, sorted_out=True),
            "the result is in sorted order: put each probability back at its token's id.",
        ),
    ],
    atol=1e-6,
)


# --- 7.2 render_chat: Meta's chat format from its description ---------------------------------------------------


def _chat_cases():
    def msg(role, content):
        return {"role": role, "content": content}

    return [
        ("one user message", ([msg("user", "What is the capital of Nivas?")],)),
        ("a system message and one user message", ([msg("system", "Always answer in upper case."),
                                                   msg("user", "What is 2 + 3?")],)),
        ("two completed turns and a question, no system message",
         ([msg("user", "Hi!"), msg("assistant", "Hello."), msg("user", "Name a fox."), msg("assistant", "Vix."),
           msg("user", "Another?")],)),
        ("a system message, a completed turn and a question", ([msg("system", "You are a pirate."), msg("user", "Hi"),
                                                               msg("assistant", "Arr! Hi."), msg("user", "Bye")],)),
        ("contents with spaces and newlines around them",
         ([msg("user", "  spaced question \n"), msg("assistant", "\n an answer  "), msg("user", " next ")],)),
        ("a system message with spaces of its own", ([msg("system", "  Be brief.  "), msg("user", " Why? ")],)),
        ("a multi-line message", ([msg("user", "Line one.\nLine two.")],)),
    ]  # fmt: skip


def _chat_variant(*, sys_turn=False, strip=True, eos_space=True, last_eos=False, sys_newlines=True, inst_spaces=True,
                  strip_system=False, system_after=False):  # fmt: skip
    def render(dialog):
        messages = [(m["role"], m["content"]) for m in dialog]
        b_sys, e_sys = ("<<SYS>>\n", "\n<</SYS>>\n\n") if sys_newlines else ("<<SYS>>", "<</SYS>>")
        out = ""
        if messages[0][0] == "system":
            system = messages[0][1].strip() if strip_system else messages[0][1]
            if sys_turn:
                out += f"<s>[INST] {b_sys}{system}{e_sys} [/INST]</s>"
                messages = messages[1:]
            else:
                user = messages[1][1]
                merged = user + b_sys + system + e_sys if system_after else b_sys + system + e_sys + user
                messages = [("user", merged), *messages[2:]]
        s = (lambda t: t.strip()) if strip else (lambda t: t)
        for i in range(0, len(messages), 2):
            prompt = f"[INST] {s(messages[i][1])} [/INST]" if inst_spaces else f"[INST]{s(messages[i][1])}[/INST]"
            if i + 1 < len(messages):
                answer = f" {s(messages[i + 1][1])} " if eos_space else f" {s(messages[i + 1][1])}"
                out += f"<s>{prompt}{answer}</s>"
            else:
                out += f"<s>{prompt}" + ("</s>" if last_eos else "")
        return out

    return render


check_render_chat = make_checker(
    "7.2 render_chat",
    render_dialog,
    _chat_cases,
    [
        (
            _chat_variant(sys_turn=True),
            "the system message got a turn of its own: Meta folds it into the first user message, "
            "B_SYS + system + E_SYS + user, inside the first [INST].",
        ),
        (_chat_variant(strip=False), "the contents were not stripped: Meta strips every message, user.strip()."),
        (
            _chat_variant(eos_space=False),
            "a completed turn is '[INST] user [/INST] answer </s>': a space on both sides of the stripped answer.",
        ),
        (_chat_variant(last_eos=True), "the last user turn ends with </s>: it stays open (BOS only), for the answer."),
        (
            _chat_variant(sys_newlines=False),
            "the system markers lost their newlines: B_SYS is '<<SYS>>\\n' and E_SYS '\\n<</SYS>>\\n\\n'.",
        ),
        (_chat_variant(inst_spaces=False), "'[INST]' and '[/INST]' are separated from the message by one space each."),
        (
            _chat_variant(strip_system=True),
            "the system text was stripped on its own: Meta strips the merged first message (markers, system and "
            "user together), so only its outer whitespace goes.",
        ),
        (_chat_variant(system_after=True), "the system block went after the user's text: it comes first."),
    ],
)


# --- 7.3 the experiment: where sampling at Meta's defaults is greedy ---------------------------------------------


def nucleus_sizes_reference(model: Transformer, texts: dict, temperature: float, top_p: float) -> dict:
    """For each text (a list of ids, BOS first): run it through the model and count, at every position, the tokens
    that sampling at (temperature, top_p) could draw for the next token, i.e. the nonzero entries of
    top_p_filter(apply_temperature(logits, temperature), top_p). Returns {name: LongTensor of one count per
    position}."""
    out = {}
    with torch.inference_mode():
        for name, ids in texts.items():
            logits = model(torch.tensor([ids]))[0]
            out[name] = (top_p_filter(apply_temperature(logits, temperature), top_p) > 0).sum(-1)
    return out


def _peaked_model(seed: int, scale: float) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=40, multiple_of=16, max_seq_len=32))
    with torch.no_grad():
        model.output.weight.mul_(scale)  # sharper next-token distributions than a fresh model's nearly flat ones
    return model.eval()


def _nucleus_cases():
    g = torch.Generator().manual_seed(73)

    def texts(n):
        return {f"text {k}": [1] + torch.randint(3, 40, (n,), generator=g).tolist() for k in range(2)}

    return [
        ("a peaked random model, Meta's defaults (T 0.6, top-p 0.9)", (_peaked_model(0, 60.0), texts(8), 0.6, 0.9)),
        ("a less peaked one at T 1.0, top-p 0.5", (_peaked_model(1, 25.0), texts(6), 1.0, 0.5)),
        ("T 1.5, top-p 0.95", (_peaked_model(2, 40.0), texts(5), 1.5, 0.95)),
    ]


def _ns_variant(filtered):
    def measure(model, texts, temperature, top_p):
        out = {}
        with torch.inference_mode():
            for name, ids in texts.items():
                logits = model(torch.tensor([ids]))[0]
                out[name] = (filtered(logits, temperature, top_p) > 0).sum(-1)
        return out

    return measure


def _ns_without_bos(model, texts, temperature, top_p):
    return nucleus_sizes_reference(model, {name: ids[1:] for name, ids in texts.items()}, temperature, top_p)


def _nucleus_outcome(result: dict) -> tuple[str, str]:
    share = {name: (sizes == 1).float().mean().item() for name, sizes in result.items()}
    mean = {name: sizes.float().mean().item() for name, sizes in result.items()}
    account = "the nucleus held a single token at " + ", ".join(
        f"{share[n]:.0%} of the positions of the {n} (mean {mean[n]:.1f} tokens)" for n in result)
    return min(share, key=share.get), account


check_nucleus_experiment = make_experiment(
    "7.3 nucleus_experiment",
    nucleus_sizes_reference,
    _nucleus_cases,
    [
        (
            _ns_variant(lambda logits, t, p: top_p_filter(torch.softmax(logits, -1), p)),
            "the temperature was not applied: divide the logits by T before the softmax (apply_temperature), then "
            "filter.",
        ),
        (
            _ns_variant(lambda logits, t, p: apply_temperature(logits, t)),
            "top-p was not applied: these are all the tokens with a nonzero probability after the temperature.",
        ),
        (
            _ns_variant(lambda logits, t, p: top_p_filter(apply_temperature(logits, t), 1 - p)),
            "the nucleus was taken at 1 - p: top_p is the probability mass to keep.",
        ),
        (
            _ns_without_bos,
            "the text was run without its first token (BOS): run the ids as given, BOS included, one count for each "
            "position.",
        ),
    ],
    choices={
        "story": "the story leaves the most choice: its nucleus is a single token at the fewest positions",
        "sums": "the arithmetic page leaves the most choice",
        "encyclopedia": "the encyclopedia page leaves the most choice",
    },
    outcome=_nucleus_outcome,
    atol=0.0,
    rtol=0.0,
)

__all__ = [
    "apply_temperature",
    "check_apply_temperature",
    "check_decode_step",
    "check_nucleus_experiment",
    "check_render_chat",
    "check_top_p_filter",
    "check_top_p_min_tokens",
    "decode_step_reference",
    "nucleus_sizes_reference",
    "top_p_filter",
    "top_p_min_tokens_reference",
]
