"""Rejection sampling (§3.2.3): K samples per prompt with the KV cache, best-of-K, the curves of Figs 7 and 8, and
keeping the best answers of every iteration."""

import statistics

import pytest
import torch

from llama2_minimal.chat import encode_dialog
from llama2_minimal.generation import generate
from llama2_minimal.model import ModelArgs, Transformer
from llama2_minimal.tokenizer import train_tokenizer
from llama2_minimal.train.rejection import (
    Kept,
    best_of,
    best_of_k_per_prompt,
    curve,
    groups_of,
    keep_best,
    load_kept,
    rescore,
    sample_answers,
    save_kept,
    score_samples,
)


def test_best_of_picks_the_highest_reward_among_the_first_k():
    answers, scores = ["a", "b", "c", "d"], [0.1, 0.7, 0.3, 0.9]
    assert best_of(answers, scores) == ("d", 0.9)
    assert best_of(answers, scores, k=3) == ("b", 0.7)
    assert best_of(answers, scores, k=1) == ("a", 0.1)
    with pytest.raises(ValueError, match="between 1"):
        best_of(answers, scores, k=5)


def test_best_of_k_is_averaged_over_disjoint_groups_of_k():
    assert groups_of(7, 3) == [range(0, 3), range(3, 6)]  # the seventh sample makes no third group
    with pytest.raises(ValueError, match="between 1 and the 4"):
        groups_of(4, 5)
    scores = [[0.0, 3.0, 2.0, 1.0]]
    gold = [[1.0, 0.0, 1.0, 1.0]]  # the reward model likes sample 1 best; the judge likes it least
    at = {k: best_of_k_per_prompt(scores, gold, k) for k in (1, 2, 4)}
    assert [at[k]["max"] for k in (1, 2, 4)] == [[1.5], [2.5], [3.0]]  # k = 2: samples (0, 1) and (2, 3)
    assert [at[k]["median"] for k in (1, 2, 4)] == [[1.5], [1.5], [1.5]]
    assert [at[k]["pick"] for k in (1, 2, 4)] == [[0.75], [0.5], [0.0]]  # k = 1: the mean gold of one sample
    assert [at[k]["oracle"] for k in (1, 2, 4)] == [[0.75], [1.0], [1.0]]


def test_fig_7_max_grows_and_median_stays():
    scores = [[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]]
    gold = [[0.0] * 4] * 2
    by_k = {k: best_of_k_per_prompt(scores, gold, k) for k in (1, 2, 4)}
    assert [statistics.fmean(by_k[k]["max"]) for k in (1, 2, 4)] == [1.5, 2.0, 3.0]
    assert [statistics.fmean(by_k[k]["median"]) for k in (1, 2, 4)] == [1.5, 1.5, 1.5]


def test_the_curve_scores_what_the_reward_model_picks(world):
    prompt = world.prompts(kind="fact", split="test")[0]
    right, wrong = prompt.reference, "I can't help with that."
    # The reward model prefers the refusal: the more samples, the more often it finds it (over-optimisation).
    assert curve(world, [prompt], [[right, wrong]], [[0.0, 1.0]], [1, 2])["gold_vs_k"] == {"1": 0.5, "2": 0.0}
    assert curve(world, [prompt], [[wrong, right]], [[0.0, 1.0]], [1, 2])["gold_vs_k"] == {"1": 0.5, "2": 1.0}


def test_the_curve_gives_each_k_the_gain_over_one_sample_with_its_interval(world):
    prompts = world.prompts(kind="fact")[:6]
    wrong = "I can't help with that."
    # prompts 0-3: the reward model finds the right answer; prompts 4-5: it prefers the refusal
    answers = [[p.reference, wrong] for p in prompts]
    scores = [[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 2
    row = curve(world, prompts, answers, scores, [1, 2], seed=0)
    assert row["gold_vs_k"] == {"1": 0.5, "2": pytest.approx(4 / 6)}
    assert row["oracle_vs_k"] == {"1": 0.5, "2": 1.0}
    gain = row["gold_gain_vs_k1"]["2"]
    assert gain["difference"] == pytest.approx(1 / 6) and gain["prompts"] == 6
    assert gain["low"] < gain["difference"] < gain["high"]  # six prompts, +0.5 or -0.5 each: a wide interval
    assert gain["low"] < 0 < gain["high"]


def test_keep_best_keeps_the_best_answer_of_every_iteration(world, tmp_path):
    a, b = world.prompts(kind="fact", split="train")[:2]
    kept = keep_best({}, [a, b], [["a1", "a2"], ["b1", "b2"]], [[0.5, 0.9], [0.2, 0.1]], iteration=1)
    assert kept == {a.id: Kept("a2", 0.9, 1), b.id: Kept("b1", 0.2, 1)}
    # iteration 2 samples worse answers for a and better ones for b: a keeps iteration 1's (no regression)
    kept = keep_best(kept, [a, b], [["a3"], ["b3"]], [[0.3], [0.8]], iteration=2)
    assert kept == {a.id: Kept("a2", 0.9, 1), b.id: Kept("b3", 0.8, 2)}
    save_kept(kept, tmp_path / "kept.jsonl")
    assert load_kept(tmp_path / "kept.jsonl") == kept


def test_kept_answers_are_rescored_by_the_iteration_s_reward_models_before_they_compete(world, monkeypatch):
    """V2's reward models are retrained on a second batch (§3.2.1): V1's kept rewards are on the old models' scale,
    so they are scored again by the new ones before this iteration's samples compete with them."""
    import llama2_minimal.train.rejection as rejection

    a, b = world.prompts(kind="fact", split="train")[:2]
    kept = {a.id: Kept("a long old answer", 0.9, 1), b.id: Kept("b old", 0.2, 1)}
    new_scale = lambda rms, tok, prompts, answers: [[float(len(x)) for x in row] for row in answers]  # noqa: E731
    monkeypatch.setattr(rejection, "score_samples", new_scale)
    rescored = rescore(kept, {}, None, [a, b])
    assert rescored == {a.id: Kept("a long old answer", 17.0, 1), b.id: Kept("b old", 5.0, 1)}
    # on the new scale b's new sample (length 9) beats its old answer, a's (length 5) does not
    merged = keep_best(rescored, [a, b], [["short"], ["b3 longer"]], [[5.0], [9.0]], iteration=2)
    assert merged == {a.id: Kept("a long old answer", 17.0, 1), b.id: Kept("b3 longer", 9.0, 2)}
    assert rescore({}, {}, None, [a, b]) == {}


def test_sampling_k_answers_per_prompt_with_the_cache(world, tmp_path):
    prompts = world.prompts(kind="fact", split="train")[:3]
    tok = train_tokenizer([p.text for p in world.prompts()] + [p.reference for p in world.prompts()],
                          tmp_path / "t.model", vocab_size=400)  # fmt: skip
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=tok.n_words, max_seq_len=96)).eval()
    answers = sample_answers(model, tok, prompts, k=16, temperature=1.0, seed=3, max_new_tokens=6, chunk=20)
    assert len(answers) == 3 and all(len(a) == 16 for a in answers)
    assert len({x for a in answers for x in a}) > 3  # sampled, not one answer repeated
    assert answers == sample_answers(model, tok, prompts, k=16, temperature=1.0, seed=3, max_new_tokens=6, chunk=20)
    # greedy: every sample of a prompt is the greedy continuation of that prompt
    greedy = sample_answers(model, tok, prompts, k=2, temperature=0.0, max_new_tokens=6)
    ids = [encode_dialog([{"role": "user", "content": p.text}], tok) for p in prompts]
    expected = [tok.decode(o).strip() for o in generate(model, ids, 6, temperature=0, eos_id=tok.eos_id)]
    assert greedy == [[e, e] for e in expected]


def test_unsafe_prompts_are_scored_by_the_safety_reward_model(world):
    class Constant(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value
            self.score = torch.nn.Linear(1, 1)
            self.params = ModelArgs(dim=8, n_layers=1, n_heads=1, vocab_size=10, max_seq_len=512)

        def forward(self, tokens, lengths):
            return torch.full((tokens.shape[0],), self.value)

    class Tok:
        eos_id = 2

        def encode(self, s, bos=True, eos=False):
            return [1] * bos + [5] * len(s.split()) + [2] * eos

    prompts = [world.prompts(kind="fact")[0], world.prompts(kind="unsafe")[0]]
    scores = score_samples({"helpfulness": Constant(1.0), "safety": Constant(-1.0)}, Tok(), prompts,
                           [["x", "y"], ["z"]])  # fmt: skip
    assert scores == [[1.0, 1.0], [-1.0]]
