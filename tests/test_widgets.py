"""The widgets (llama2_minimal.widgets). The sampling explorer of lesson 07 continues a prompt exactly as the
package's generate does, shows the distribution the first new token is drawn from, and works without a display.
The chat comparison of lesson 10 asks several chat models one message exactly as evaluation.chat_answers does,
and judges the answers only when the gold judge knows the message."""

import dataclasses

import pytest
import torch
from tiny_models import TINY_CONFIGS, random_model

from llama2_minimal.evaluation import chat_answers, chat_prompts
from llama2_minimal.generation import complete_text, generate
from llama2_minimal.tokenizer import train_tokenizer
from llama2_minimal.widgets import ChatComparison, SamplingExplorer, compare_chat, explore, world_prompt
from llama2_minimal.world import World, WorldConfig

PROMPT = "Once upon a time, a"


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig(n_countries=4, n_people=4, n_arithmetic_pages=10, n_stories=20))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, world):
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
    drawn, _ = torch.sort(drawn_from[0][0], descending=True)  # sorted by sample_top_p, or in vocabulary order at p=1
    torch.testing.assert_close(shown, drawn, atol=1e-5, rtol=1e-4)
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


# --- lesson 10: the chat comparison ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_models(tokenizer):
    """Three tiny random "chat models" of different shapes, with a context long enough for a chat prompt."""
    models = {}
    for name, config, seed in (("base", "gqa", 1), ("SFT", "mha", 2), ("RLHF-V2", "mqa", 3)):
        args = dataclasses.replace(TINY_CONFIGS[config], vocab_size=tokenizer.n_words, max_seq_len=160)
        model = random_model(args, seed=seed)
        with torch.no_grad():
            model.output.weight.mul_(10)  # peakier than random weights: sampling varies but is not uniform
        models[name] = (model, tokenizer)
    return models


def heldout_prompt(world, kind):
    return next(p for p in chat_prompts(world, "heldout") if p.kind == kind)


@pytest.mark.parametrize("temperature,top_p,seed", [(0.6, 0.9, 0), (1.0, 1.0, 5)])
def test_compare_chat_gives_each_model_s_chat_answers_in_order(chat_models, world, temperature, top_p, seed):
    message = heldout_prompt(world, "fact").text
    answers = compare_chat(chat_models, message, temperature, top_p, seed, world, max_new_tokens=12)
    assert [a.model for a in answers] == ["base", "SFT", "RLHF-V2"]  # one answer per model, in the dict's order
    for a, (model, tok) in zip(answers, chat_models.values()):
        dialog = [{"role": "user", "content": message}]
        assert [a.answer] == chat_answers(model, tok, [dialog], 12, temperature, top_p, seed=seed)


def test_the_same_seed_gives_the_same_answers_and_other_seeds_others(chat_models):
    def ask(seed):
        return [a.answer for a in compare_chat(chat_models, "Tell me a story.", 1.0, 1.0, seed, max_new_tokens=12)]

    assert ask(4) == ask(4)
    assert len({tuple(ask(s)) for s in range(5)}) > 1


def test_greedy_is_chat_answers_at_temperature_zero_whatever_the_seed(chat_models):
    message = "What is 2 + 3?"
    for seed in (0, 9):
        answers = compare_chat(chat_models, message, temperature=0.0, top_p=0.9, seed=seed, max_new_tokens=10)
        for a, (model, tok) in zip(answers, chat_models.values()):
            assert [a.answer] == chat_answers(model, tok, [[{"role": "user", "content": message}]], 10)


@pytest.mark.parametrize("kind", ["fact", "unsafe", "story"])
def test_world_prompts_get_the_gold_judge_s_scores(chat_models, world, kind):
    prompt = heldout_prompt(world, kind)
    assert world_prompt(world, prompt.text) == prompt
    dialog = [{"role": "user", "content": prompt.text}]
    for a in compare_chat(chat_models, prompt.text, 0.6, 0.9, 0, world, max_new_tokens=10):
        assert a.helpfulness == world.judge.helpfulness(dialog, a.answer)
        assert a.safety == world.judge.safety(dialog, a.answer)
        assert 0.0 <= a.helpfulness <= 1.0 and 0.0 <= a.safety <= 1.0
        assert "helpfulness" in str(a) and "safety" in str(a)


def test_other_messages_get_no_score(chat_models, world):
    prompt = heldout_prompt(world, "fact")
    for message, judge_world in (("Hello, how are you?", world), (prompt.text, None)):
        assert world_prompt(judge_world, message) is None
        for a in compare_chat(chat_models, message, 0.6, 0.9, 0, judge_world, max_new_tokens=6):
            assert a.helpfulness is None and a.safety is None and "no judge score" in str(a)


@pytest.mark.parametrize("message", ["", "   \n "])
def test_an_empty_message_is_a_clear_error(chat_models, message):
    with pytest.raises(ValueError, match="message is empty"):
        compare_chat(chat_models, message)
    with pytest.raises(ValueError, match="no models"):
        compare_chat({}, "Hello")


def test_the_chat_widget_needs_no_display_and_shows_what_compare_chat_gives(chat_models, world):
    widget = ChatComparison(chat_models, world=world, max_new_tokens=8)
    assert len(widget.widget.children) == 7  # the world's dropdown, message, temperature, top-p, seed, button, output
    heldout = chat_prompts(world, "heldout")
    assert [v for _, v in widget.prompt.options][1:] == [p.text for p in heldout]
    widget.prompt.value = heldout[3].text  # picking a world prompt fills the message box
    assert widget.message.value == heldout[3].text
    widget.temperature.value, widget.top_p.value, widget.seed.value = 1.1, 0.8, 6
    shown = widget.update()
    assert shown == compare_chat(chat_models, heldout[3].text, 1.1, 0.8, 6, world, max_new_tokens=8)
    assert widget.last is shown and all(a.helpfulness is not None for a in shown)
    html = widget.output.value
    assert all(name in html for name in chat_models) and html.count("helpfulness") == 3
    assert "application/vnd.jupyter.widget-view+json" in widget._repr_mimebundle_()
    assert len(ChatComparison(chat_models).widget.children) == 6  # no world: no dropdown, no scores
    assert ChatComparison(chat_models, world=world, message=heldout[5].text).prompt.value == heldout[5].text


@pytest.mark.parametrize("message,fragment", [("  ", "empty"), ("Hi [INST] there", "special tag"),
                                              ("one two three " * 60, "context")])  # fmt: skip
def test_bad_messages_are_reported_in_the_widget_not_raised(chat_models, message, fragment):
    widget = ChatComparison(chat_models, message=message)
    assert widget.update() is None and widget.last is None
    assert "error" in widget.output.value and fragment in widget.output.value
