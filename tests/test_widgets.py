"""The sampling explorer of lesson 07 (llama2_minimal.widgets): it continues a prompt exactly as the package's
generate does, shows the distribution the first new token is drawn from, and works without a display."""

import dataclasses

import pytest
import torch
from tiny_models import TINY_CONFIGS, random_model

from llama2_minimal.generation import complete_text, generate
from llama2_minimal.tokenizer import train_tokenizer
from llama2_minimal.widgets import SamplingExplorer, explore
from llama2_minimal.world import World, WorldConfig

PROMPT = "Once upon a time, a"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    world = World(WorldConfig(n_countries=4, n_people=4, n_arithmetic_pages=10, n_stories=20))
    texts = [d.text for d in world.corpus()]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tokenizer.model", vocab_size=400)


@pytest.fixture(scope="module")
def model(tokenizer):
    args = dataclasses.replace(TINY_CONFIGS["gqa"], vocab_size=tokenizer.n_words)
    model = random_model(args, seed=11)
    with torch.no_grad():
        model.output.weight.mul_(20)  # a peakier next-token distribution than random weights give
    return model


@pytest.mark.parametrize("temperature,top_p,seed", [(0.6, 0.9, 0), (1.0, 0.5, 3), (1.5, 1.0, 7), (0.0, 0.9, 0)])
def test_explore_continues_the_prompt_exactly_as_generate(model, tokenizer, temperature, top_p, seed):
    result = explore(model, tokenizer, PROMPT, temperature, top_p, max_new_tokens=12, seed=seed)
    ids = tokenizer.encode(PROMPT, bos=True)
    [new] = generate(model, [ids], 12, temperature, top_p, eos_id=tokenizer.eos_id, seed=seed)
    assert result.continuation == tokenizer.decode(new)
    assert [result.continuation] == complete_text(model, tokenizer, [PROMPT], 12, temperature, top_p, seed=seed)
    assert result.text.startswith(tokenizer.decode(ids)) and result.text.endswith("]")


def test_the_seed_changes_what_is_sampled_and_nothing_else(model, tokenizer):
    texts = {explore(model, tokenizer, PROMPT, 1.0, 1.0, max_new_tokens=12, seed=s).continuation for s in range(6)}
    assert len(texts) > 1
    again = explore(model, tokenizer, PROMPT, 1.0, 1.0, max_new_tokens=12, seed=2)
    assert again.continuation == explore(model, tokenizer, PROMPT, 1.0, 1.0, max_new_tokens=12, seed=2).continuation


@pytest.mark.parametrize("temperature,top_p", [(0.6, 0.9), (1.0, 0.3), (2.0, 0.95), (0.0, 0.9)])
def test_the_distributions_shown_sum_to_one_and_keep_the_nucleus(model, tokenizer, temperature, top_p):
    result = explore(model, tokenizer, PROMPT, temperature, top_p, max_new_tokens=1)
    for distribution in (result.probs, result.tempered, result.filtered):
        assert abs(float(distribution.sum()) - 1.0) < 1e-5
    kept = result.filtered > 0
    if temperature == 0:
        assert int(kept.sum()) == 1 and int(result.filtered.argmax()) == int(result.probs.argmax())
    else:
        assert float(result.tempered[kept].sum()) >= top_p - 1e-6  # the kept tokens reach top_p ...
        smallest = result.tempered[kept].min()
        assert float(result.tempered[kept].sum() - smallest) <= top_p + 1e-6  # ... and no more than needed
    rows = result.top(10)
    assert [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)
    if int(kept.sum()) <= 10:  # every token that can be drawn is in the table: its column sums to 1
        assert abs(sum(r[4] for r in rows) - 1.0) < 1e-5


@pytest.mark.parametrize("temperature,top_p", [(0.8, 0.6), (1.7, 0.95), (0.3, 1.0)])
def test_the_filtered_distribution_is_what_the_first_new_token_is_drawn_from(model, tokenizer, monkeypatch,
                                                                             temperature, top_p):  # fmt: skip
    drawn_from, real = [], torch.multinomial
    monkeypatch.setattr(torch, "multinomial", lambda probs, *a, **k: drawn_from.append(probs) or real(probs, *a, **k))
    result = explore(model, tokenizer, PROMPT, temperature, top_p, max_new_tokens=1)
    shown, _ = torch.sort(result.filtered, descending=True)
    torch.testing.assert_close(shown, drawn_from[0][0], atol=1e-5, rtol=1e-4)  # sample_top_p's sorted order
    prompt_ids = tokenizer.encode(PROMPT, bos=True)
    for seed in range(10):
        [new] = generate(model, [prompt_ids], 1, temperature, top_p, eos_id=None, seed=seed)
        assert result.filtered[new[0]] > 0, seed


def test_the_widget_needs_no_display_and_shows_what_explore_gives(model, tokenizer, capsys):
    explorer = SamplingExplorer(model, tokenizer, prompt="The capital of", max_new_tokens=8)
    assert len(explorer.widget.children) == 7
    explorer.temperature.value, explorer.top_p.value, explorer.seed.value = 1.2, 0.8, 5
    shown = explorer.update()
    expected = explore(model, tokenizer, "The capital of", 1.2, 0.8, max_new_tokens=8, seed=5)
    assert shown.continuation == expected.continuation and explorer.last is shown
    assert torch.equal(shown.filtered, expected.filtered)
    assert "top-p 0.8" in capsys.readouterr().out  # outside a kernel the output widget prints to stdout
    assert "application/vnd.jupyter.widget-view+json" in explorer._repr_mimebundle_()


def test_a_prompt_too_long_for_the_context_is_reported_not_raised(model, tokenizer, capsys):
    explorer = SamplingExplorer(model, tokenizer, prompt="one two three " * 40)
    assert explorer.update() is None
    assert "context" in capsys.readouterr().out
