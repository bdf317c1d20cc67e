"""The references of lesson 07's checkers are the package's sampler: top_p_filter and apply_temperature give
exactly the distribution that generation.next_token hands to torch.multinomial, and decode_step_reference,
applied step by step, decodes what generation.generate does."""

import pytest
import torch
from tiny_models import TINY_CONFIGS, random_model

from llama2_minimal.checks.inference import decode_step_reference
from llama2_minimal.generation import apply_temperature, generate, next_token, sample_top_p, top_p_filter


@pytest.fixture
def sampled_from(monkeypatch):
    """The probabilities torch.multinomial receives (sorted as sample_top_p passes them for p < 1)."""
    seen = []
    real = torch.multinomial

    def spy(probs, *args, **kwargs):
        seen.append(probs.clone())
        return real(probs, *args, **kwargs)

    monkeypatch.setattr(torch, "multinomial", spy)
    return seen


def in_sorted_order(distribution, like):
    """`distribution` (in vocabulary order) in the order of `like` sorted by descending probability."""
    _, order = torch.sort(like, dim=-1, descending=True)
    return distribution.gather(-1, order)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 1.0])
def test_top_p_filter_is_the_distribution_sample_top_p_draws_from(sampled_from, p):
    probs = torch.softmax(2 * torch.randn(4, 40, generator=torch.Generator().manual_seed(0)), dim=-1)
    sample_top_p(probs, p, torch.Generator().manual_seed(1))
    [drawn_from] = sampled_from
    ours = top_p_filter(probs, p)
    if p >= 1.0:  # the whole vocabulary: drawn in vocabulary order, without the sort
        torch.testing.assert_close(ours, drawn_from)
    else:
        torch.testing.assert_close(in_sorted_order(ours, probs), drawn_from)
    torch.testing.assert_close(ours.sum(-1), torch.ones(4))
    kept_mass = (probs * (ours > 0)).sum(-1)
    assert bool((kept_mass >= min(p, 1.0) - 1e-6).all())  # the nucleus reaches p: the crossing token is kept


@pytest.mark.parametrize("temperature", [0.3, 0.6, 1.0, 1.7])
def test_temperature_then_top_p_is_what_next_token_samples(sampled_from, temperature):
    logits = 4 * torch.randn(3, 30, generator=torch.Generator().manual_seed(2))
    next_token(logits, temperature, 0.9, torch.Generator().manual_seed(3))
    [drawn_from] = sampled_from
    tempered = apply_temperature(logits, temperature)
    torch.testing.assert_close(in_sorted_order(top_p_filter(tempered, 0.9), tempered), drawn_from)


def test_temperature_zero_is_greedy(sampled_from):
    logits = torch.randn(5, 20, generator=torch.Generator().manual_seed(4))
    one_hot = apply_temperature(logits, 0.0)
    assert torch.equal(one_hot.argmax(-1), next_token(logits, 0.0))
    assert torch.equal(one_hot.sum(-1), torch.ones(5)) and sampled_from == []  # greedy never samples


def test_decode_step_reference_decodes_as_generate():
    model = random_model(TINY_CONFIGS["gqa"], seed=3)
    prompts = torch.randint(3, model.vocab_size, (2, 5), generator=torch.Generator().manual_seed(5))
    expected = generate(model, prompts.tolist(), max_new_tokens=8, temperature=0, eos_id=None)
    cache = model.new_cache(2, 13)
    logits, position, out = decode_step_reference(model, prompts, 0, cache), 5, []
    for _ in range(8):
        new = logits.argmax(-1, keepdim=True)
        out.append(new)
        logits, position = decode_step_reference(model, new, position, cache), position + 1
    assert torch.cat(out, dim=1).tolist() == expected
