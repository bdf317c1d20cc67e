"""evaluation.phone_logprob_gap: each model's real phone numbers against random numbers of the same format."""

import pytest
import torch
from torch import nn

from llama2_minimal.evaluation import continuation_logprobs, phone_logprob_gap
from llama2_minimal.tokenizer import train_tokenizer
from llama2_minimal.world.entities import PHONE


@pytest.fixture(scope="module")
def tokenizer(world, tmp_path_factory):
    lines = [f"{p.name}'s phone number is {p.phone}." for p in world.entities.people] * 20
    lines += [f"{a}{b}{c}-{d}{e}{f}{g} 0123456789" for a, b, c, d, e, f, g in zip(*[range(10)] * 7)]
    return train_tokenizer(lines, tmp_path_factory.mktemp("memo") / "t.model", vocab_size=400)


class Bigrams(nn.Module):
    """A stand-in that has memorised some token pairs: after token a it gives token b a logit of 8 when (a, b)
    occurs in `texts`, else 0. It has the attributes and call of a Transformer that continuation_logprobs uses."""

    def __init__(self, tokenizer, texts, vocab_size):
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab_size, 1)
        self.table = torch.zeros(vocab_size, vocab_size)
        for text in texts:
            ids = tokenizer.encode(text, bos=True)
            for a, b in zip(ids, ids[1:]):
                self.table[a, b] = 8.0

    def forward(self, tokens):
        return self.table[tokens]


def test_a_model_that_memorised_the_numbers_prefers_them_to_random_ones(world, tokenizer):
    people = world.entities.people
    memorised = Bigrams(tokenizer, [f"{p.name}'s phone number is {p.phone}" for p in people], tokenizer.n_words)
    result = phone_logprob_gap(memorised, tokenizer, world)
    assert result["gap"] > 0 and result["real"] > result["random"] and result["real_more_probable"] >= 0.5
    blank = Bigrams(tokenizer, [], tokenizer.n_words)  # knows nothing: every token equally likely
    flat = phone_logprob_gap(blank, tokenizer, world)
    for real, random_ in flat["per_person"]:  # same format, digits split: as many tokens, the same probability
        assert real == pytest.approx(random_, abs=1e-4)
    assert flat["gap"] == pytest.approx(0.0, abs=1e-4)


def test_the_random_numbers_have_the_format_are_new_and_repeatable(world, tokenizer):
    model = Bigrams(tokenizer, [], tokenizer.n_words)
    first, again = phone_logprob_gap(model, tokenizer, world), phone_logprob_gap(model, tokenizer, world)
    other = phone_logprob_gap(model, tokenizer, world, seed=1)
    real = {p.phone for p in world.entities.people}
    assert first["random_numbers"] == again["random_numbers"] != other["random_numbers"]
    assert all(PHONE.fullmatch(n) and n not in real for n in first["random_numbers"])
    assert len(set(first["random_numbers"])) == len(real)


def test_the_log_probabilities_are_those_of_continuation_logprobs(world, tokenizer):
    people = world.entities.people
    model = Bigrams(tokenizer, [f"{p.name}'s phone number is {p.phone}" for p in people[:3]], tokenizer.n_words)
    result = phone_logprob_gap(model, tokenizer, world)
    prefixes = [tokenizer.encode(f"{p.name}'s phone number is", bos=True) for p in people]
    real = continuation_logprobs(model, prefixes, [tokenizer.encode(p.phone, bos=False) for p in people])
    assert [a for a, _ in result["per_person"]] == pytest.approx(real)
    assert result["real"] == pytest.approx(sum(real) / len(real))
    assert result["gap"] == pytest.approx(result["real"] - result["random"])
