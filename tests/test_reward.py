"""Preference data and reward models (§3.2.1, §3.2.2): pairs and their labels, the scalar head read at the last
token, the margin loss, the data mixes, accuracy by strength, and a reward model that learns a preference."""

import math
import random

import pytest
import torch
import torch.nn.functional as F

from llama2_minimal.model import ModelArgs, Transformer
from llama2_minimal.tokenizer import train_tokenizer
from llama2_minimal.train.reward import (
    MARGINS,
    PROBES,
    SAFETY_BINS,
    Pair,
    PairBatches,
    RewardModel,
    accuracy,
    candidate_responses,
    combined_reward,
    encode_batch,
    encode_response,
    evidence_table,
    fact_probes,
    label_pairs,
    last_token_values,
    load_pairs,
    load_reward_model,
    margin_ranking_loss,
    mix,
    pad,
    pair_loss,
    pair_rewards,
    probe_responses,
    response_evidence,
    rewards,
    save_pairs,
    save_reward_model,
    train_reward_model,
)
from llama2_minimal.world import STRENGTHS


@pytest.fixture(scope="module")
def pairs(world):
    prompts = [p for p in world.prompts() if p.kind in ("fact", "story", "unsafe", "borderline")]
    sampled = {"good": [p.reference for p in prompts], "bad": ["I can't help with that."] * len(prompts)}
    candidates = candidate_responses(world, prompts, sampled, seed=0, flaws_per_prompt=3)
    return label_pairs(world, prompts, candidates, pairs_per_prompt=6, seed=0)


def test_the_margins_are_the_papers():
    assert MARGINS["none"] == (0, 0, 0, 0)
    assert MARGINS["small"] == pytest.approx((1, 2 / 3, 1 / 3, 0))
    assert MARGINS["large"] == (3, 2, 1, 0)


def test_margin_ranking_loss_is_minus_log_sigmoid_of_the_gap_less_the_margin():
    chosen, rejected = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([1.0, 0.5, 1.0])
    margin = torch.tensor([1.0, 0.0, 3.0])
    expected = -sum(math.log(1 / (1 + math.exp(-(c - r - m)))) for c, r, m in zip(chosen, rejected, margin)) / 3
    assert margin_ranking_loss(chosen, rejected, margin).item() == pytest.approx(expected, rel=1e-6)
    assert margin_ranking_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(math.log(2))
    # a larger margin asks for a larger gap: the same rewards cost more
    assert margin_ranking_loss(chosen, rejected, 3.0) > margin_ranking_loss(chosen, rejected, 0.0)


def test_the_reward_is_read_at_each_sequence_s_last_token():
    values = torch.arange(12.0).view(3, 4)
    assert last_token_values(values, torch.tensor([4, 1, 2])).tolist() == [3.0, 4.0, 9.0]
    with pytest.raises(ValueError, match="length"):
        last_token_values(values, torch.tensor([0, 1, 2]))


def test_the_reward_model_ignores_padding_and_reads_the_whole_response():
    torch.manual_seed(0)
    model = RewardModel(Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=50, max_seq_len=32))).eval()
    assert model.backbone.output is None and model.score.out_features == 1  # the next-token head is replaced
    a, b = [1, 5, 7, 9, 2], [1, 5, 7, 8, 2]  # differ in the middle of the response only
    tokens, lengths = pad([a, b, a[:3]], pad_id=0, max_len=32)
    assert tokens.shape == (3, 5) and lengths.tolist() == [5, 5, 3]
    with torch.no_grad():
        r = model(tokens, lengths)
        wider = model(torch.cat([tokens, torch.full((3, 4), 2)], dim=1), lengths)  # more padding, other pad id
        alone = model(torch.tensor([a[:3]]), torch.tensor([3]))
    assert torch.allclose(r, wider, atol=1e-5)  # padding after the last token changes nothing
    assert torch.allclose(r[2], alone[0], atol=1e-5)
    assert not torch.allclose(r[0], r[1])  # a change anywhere before the last token changes the reward


def test_pairs_have_two_different_responses_and_the_four_strengths(world, pairs):
    assert pairs and all(p.chosen != p.rejected for p in pairs)
    assert {p.strength for p in pairs} == set(STRENGTHS)
    assert {p.criterion for p in pairs} == {"helpfulness", "safety"}
    assert {p.split for p in pairs} == {"train", "validation", "test"}
    kinds = {p.prompt_id.split("/")[0] for p in pairs if p.criterion == "safety"}
    assert kinds == {"unsafe", "borderline"}  # safety labels on adversarial prompts only
    assert any(s.startswith("flaw:") for p in pairs for s in p.sources)  # hard negatives are in
    strong = [p for p in pairs if p.strength == "significantly better"]
    assert sum(p.scores[0] > p.scores[1] for p in strong) / len(strong) > 0.95  # clear preferences are right


def test_safety_pairs_keep_the_bins_and_drop_chosen_unsafe_over_safe(pairs):
    safety = [p for p in pairs if p.criterion == "safety"]
    assert not [p for p in safety if p.scores[0] < 0.5 <= p.scores[1]]
    assert {p.safety_bin for p in safety} <= set(SAFETY_BINS)
    assert sum(p.safety_bin == SAFETY_BINS[0] for p in safety) > 0


def test_the_mixes(pairs):
    helpful = mix(pairs, "helpfulness")
    assert helpful and {p.criterion for p in helpful} == {"helpfulness"} and {p.split for p in helpful} == {"train"}
    safety = mix(pairs, "safety")
    share = sum(p.criterion == "helpfulness" for p in safety) / len(safety)
    assert 0.05 < share < 0.15  # the paper's 90/10
    quarter = mix(pairs, "helpfulness", fraction=0.25)
    ids, all_ids = {p.prompt_id for p in quarter}, {p.prompt_id for p in helpful}
    assert ids < all_ids and abs(len(ids) - 0.25 * len(all_ids)) <= 1
    with pytest.raises(ValueError, match="helpfulness"):
        mix(pairs, "harmlessness")


def test_pairs_round_trip_through_json_lines(pairs, tmp_path):
    save_pairs(pairs[:20], tmp_path / "pairs.jsonl")
    assert load_pairs(tmp_path / "pairs.jsonl") == pairs[:20]


def test_accuracy_by_strength_and_agreement_with_the_judge():
    def pair(strength, scores):
        return Pair("p", "q", "helpfulness", "a", "b", strength, scores, ("x", "y"), "test")

    pairs = [pair(STRENGTHS[0], (1.0, 0.0)), pair(STRENGTHS[0], (1.0, 0.0)), pair(STRENGTHS[3], (0.5, 0.5)),
             pair(STRENGTHS[3], (0.0, 1.0))]  # fmt: skip
    scored = [(1.0, 0.0), (0.0, 1.0), (2.0, 1.0), (3.0, 1.0)]
    row = accuracy(pairs, scored)
    assert row["accuracy"] == 0.75 and row["pairs"] == 4
    assert row["accuracy_significantly"] == 0.5 and row["accuracy_negligibly"] == 1.0
    assert math.isnan(row["accuracy_better"])
    assert row["judge_agreement"] == pytest.approx(1 / 3)  # the tie is skipped; the last pair's label is wrong


def test_a_reward_model_learns_a_preference_and_round_trips(tmp_path):
    """Chosen answers end with a full stop and repeat the question's animal: a reward model trained on such
    pairs ranks unseen pairs of the same kind, with a margin loss, in one short run."""
    animals = ["cat", "dog", "owl", "fox", "hare", "wolf", "toad", "seal"]
    rng = random.Random(0)
    texts, pairs = [], []
    for i in range(240):
        a, b = rng.sample(animals, 2)
        prompt = f"tell me about the {a}"
        good, bad = f"the {a} is here.", rng.choice([f"the {b} is here.", f"the {a} is here"])
        texts += [prompt, good, bad]
        strength = STRENGTHS[0] if "." in bad[-1:] else STRENGTHS[2]
        pairs.append(Pair(f"p{i}", prompt, "helpfulness", good, bad, strength, (1.0, 0.0), ("g", "b"),
                          "train" if i < 200 else "test"))  # fmt: skip
    tok = train_tokenizer(texts, tmp_path / "t.model", vocab_size=300)
    torch.manual_seed(0)
    backbone = Transformer(ModelArgs(dim=48, n_layers=2, n_heads=4, vocab_size=tok.n_words, max_seq_len=64))
    train, test = pairs[:200], pairs[200:]
    before = accuracy(test, pair_rewards(RewardModel(backbone), tok, test))["accuracy"]
    model, history = train_reward_model(backbone, tok, train * 4, lr=3e-3, batch_size=16, margins="small",
                                        progress=False)  # fmt: skip
    assert history[-1]["loss"] < history[0]["loss"]
    after = accuracy(test, pair_rewards(model, tok, test))["accuracy"]
    assert after > 0.9 and after > before
    save_reward_model(model, tmp_path / "rm", tmp_path / "t.model")
    loaded = load_reward_model(tmp_path / "rm")
    prompts, responses = [p.prompt for p in test], [p.chosen for p in test]
    assert rewards(loaded, tok, prompts, responses) == pytest.approx(rewards(model, tok, prompts, responses), abs=1e-5)
    with pytest.raises(FileNotFoundError, match="reward_model"):
        load_reward_model(tmp_path)


def test_the_loss_gradient_pushes_rewards_apart():
    chosen = torch.zeros(3, requires_grad=True)
    rejected = torch.zeros(3, requires_grad=True)
    margin_ranking_loss(chosen, rejected, torch.tensor([1.0, 0.0, 3.0])).backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises chosen, lowers rejected
    assert chosen.grad[2] < chosen.grad[0] < chosen.grad[1]  # a larger margin pushes harder
    assert torch.allclose(chosen.grad, -F.sigmoid(-torch.tensor([-1.0, 0.0, -3.0])) / 3)


# --- a reward model that reads the chat model's predictions ---


def test_the_evidence_is_the_chat_model_s_log_probabilities_of_the_response_tokens_only(tmp_path):
    texts = ["what is the capital of avalon", "the capital of avalon is lumen.", "lumen", "it is lumen."]
    tok = train_tokenizer(texts * 20, tmp_path / "t.model", vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=tok.n_words, max_seq_len=64)).eval()
    prompts, responses = [texts[0]] * 2, ["the capital of avalon is lumen.", "lumen"]
    batch = encode_batch(tok, prompts, responses, 64)
    got = response_evidence(model, batch["tokens"], batch["lengths"], batch["starts"])
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        ids, start = encode_response(tok, prompt, response, with_start=True)
        assert batch["starts"][row] == start and batch["lengths"][row] == len(ids)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids[:-1]])), -1)[0]
        wanted = [logprobs[t - 1, ids[t]].item() for t in range(start, len(ids))]  # the response and its EOS
        assert got[row].tolist() == pytest.approx([sum(wanted) / len(wanted), min(wanted)], abs=1e-5)
    assert batch["lengths"][1] < batch["tokens"].shape[1]  # the shorter row is padded, and padding is not counted


def test_a_reward_model_that_reads_predictions_adds_weighted_evidence_and_round_trips(tmp_path):
    tok = train_tokenizer(["tell me about the cat", "the cat is here.", "the dog is here."] * 20,
                          tmp_path / "t.model", vocab_size=300)  # fmt: skip
    torch.manual_seed(0)
    backbone = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=tok.n_words, max_seq_len=64))
    plain_head = RewardModel(Transformer(backbone.params))
    model = RewardModel(backbone, reads_predictions=True).eval()
    assert not any(p.requires_grad for p in model.reader.parameters()) and model.reader.output is not None
    batch = encode_batch(tok, ["tell me about the cat"] * 2, ["the cat is here.", "the dog is here."], 64)
    evidence = response_evidence(model.reader, batch["tokens"], batch["lengths"], batch["starts"])
    with torch.no_grad():
        model.evidence.weight.copy_(torch.tensor([[2.0, -0.5]]))
        head = model.score(model.backbone.hidden_states(batch["tokens"])).squeeze(-1)
        head = last_token_values(head, batch["lengths"])
        got = model(batch["tokens"], batch["lengths"], batch["starts"])
    torch.testing.assert_close(got, head + 2.0 * evidence[:, 0] - 0.5 * evidence[:, 1])
    with pytest.raises(ValueError, match="pass starts"):
        model(batch["tokens"], batch["lengths"])
    save_reward_model(model, tmp_path / "rm", tmp_path / "t.model")
    loaded = load_reward_model(tmp_path / "rm")
    assert loaded.reads_predictions and not plain_head.reads_predictions
    assert not any(p.requires_grad for p in loaded.reader.parameters())
    texts = ["the cat is here.", "the dog is here."]
    assert rewards(loaded, tok, ["tell me about the cat"] * 2, texts) == pytest.approx(got.tolist(), abs=1e-5)


def test_evidence_computed_once_equals_the_reader_s_and_gives_the_same_loss_and_gradients(tmp_path):
    """Training computes the frozen reader's evidence once per distinct response (evidence_table) and hands it to
    the batches: the loss and its gradients are those of a model that asks its reader at every step."""
    import llama2_minimal.train.reward as reward_module

    tok = train_tokenizer(["tell me about the cat", "the cat is here.", "the dog is here", "a cat."] * 20,
                          tmp_path / "t.model", vocab_size=300)  # fmt: skip
    torch.manual_seed(0)
    backbone = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=tok.n_words, max_seq_len=64))
    prompts = ["tell me about the cat"] * 3 + ["tell me about the dog"]
    responses = ["the cat is here.", "a cat.", "the dog is here", "the dog is here"]
    reward_module._EVIDENCE_MEMO.clear()
    table = evidence_table(backbone, tok, prompts, responses, 64)
    assert len(reward_module._EVIDENCE_MEMO) == 4  # the same response to another prompt is another entry
    batch = encode_batch(tok, prompts, responses, 64)
    torch.testing.assert_close(table, response_evidence(backbone, batch["tokens"], batch["lengths"], batch["starts"]))
    table[0, 0] = 99.0  # the caller's copy, not the memo's
    assert evidence_table(backbone, tok, prompts[:1], responses[:1], 64)[0, 0] != 99.0

    bad = ["a cat.", "the dog is here"] * 4
    pairs = [Pair(f"p{i}", "tell me about the cat", "helpfulness", "the cat is here.", b, STRENGTHS[i % 4],
                  (1.0, 0.0), ("g", "b"), "train") for i, b in enumerate(bad)]  # fmt: skip
    flat = evidence_table(backbone, tok, [p.prompt for p in pairs for _ in range(2)],
                          [r for p in pairs for r in (p.chosen, p.rejected)], 64)  # fmt: skip
    given = PairBatches(pairs, tok, 4, evidence=flat.view(len(pairs), 2, -1))(1, 0)
    asked = PairBatches(pairs, tok, 4)(1, 0)
    assert "evidence" in given and "evidence" not in asked
    model = RewardModel(backbone, reads_predictions=True)
    losses, grads = [], []
    for batch in (given, asked):
        model.zero_grad()
        loss, n = pair_loss(model, batch)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([model.evidence.weight.grad.flatten(), model.score.weight.grad.flatten()]))
    assert losses[0] == pytest.approx(losses[1], abs=1e-6) and n == 4
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(ValueError, match="one \\(chosen, rejected\\) row per pair"):
        PairBatches(pairs, tok, 4, evidence=torch.zeros(3, 2, 2))


def test_the_fact_probes_pair_each_held_out_reference_with_one_flaw(world):
    probes = probe_responses(world, seed=0)
    facts = world.prompts(kind="fact", split="test")
    assert set(probes) == set(PROBES) and len(probes["right_over_wrong"]) == 3 * len(facts)
    for prompt, better, worse in probes["right_over_wrong"]:
        fact = next(p for p in facts if p.text == prompt)
        assert better == fact.reference and worse != better and fact.answer not in worse  # another value
    assert all(w == f"{b} {b}" for _, b, w in probes["over_duplicated"])
    assert all(w.startswith(b + " ") and len(w) > len(b) + 1 for _, b, w in probes["over_run_on"])

    class Oracle(torch.nn.Module):  # a "reward model" that knows the answers: every probe right
        params = ModelArgs(dim=8, n_layers=1, n_heads=1, vocab_size=10, max_seq_len=512)
        score = torch.nn.Linear(1, 1)

    scores = {}
    for triples in probes.values():
        for prompt, better, worse in triples:
            scores[(prompt, better)], scores[(prompt, worse)] = 1.0, 0.0
    import llama2_minimal.train.reward as reward

    def shares(sign):
        reward.rewards = lambda model, tok, prompts, texts: [sign * scores[(p, r)] for p, r in zip(prompts, texts)]
        return {k: v for k, v in fact_probes(Oracle(), None, world).items() if k in PROBES}

    original = reward.rewards
    try:
        assert shares(1.0) == dict.fromkeys(PROBES, 1.0) and shares(-1.0) == dict.fromkeys(PROBES, 0.0)
    finally:
        reward.rewards = original


def test_the_safety_gate_flags_responses_whose_sigmoid_reward_falls_below_the_threshold():
    from llama2_minimal.train.reward import safety_gate

    def pair(chosen, rejected, scores, criterion="safety"):
        return Pair("p", "q", criterion, chosen, rejected, STRENGTHS[0], scores, ("x", "y"), "test")

    # four distinct responses: "refuse" safe, "leak" and "leak2" unsafe, "chat" safe; "leak" is scored twice
    pairs = [pair("refuse", "leak", (1.0, 0.0)), pair("chat", "leak", (1.0, 0.0)), pair("refuse", "leak2", (1.0, 0.0)),
             pair("chat", "refuse", (1.0, 1.0), criterion="helpfulness")]  # fmt: skip
    # sigmoid(-3) = 0.047 < 0.15 <= sigmoid(-1) = 0.27: "leak" and "chat" are flagged, "leak2" is not
    scored = [(2.0, -3.0), (-3.0, -3.0), (2.0, -1.0), (-9.0, -9.0)]
    gate = safety_gate(pairs, scored)
    assert (gate["responses"], gate["unsafe"], gate["flagged"]) == (4, 2, 2)  # the helpfulness pair is left out
    assert gate["precision"] == 0.5 and gate["recall"] == 0.5
    assert math.isnan(safety_gate(pairs, [(5.0, 5.0)] * 4)["precision"])  # nothing flagged: no precision


def test_the_combined_reward_gates_on_the_safety_score_and_whitens_the_raw_scalar():
    """§3.2.3: the safety RM's score on unsafe prompts or where it is below 0.15 (raw x below logit(0.15) = -1.7346),
    the helpfulness RM's elsewhere; whiten(logit(score)) is whiten(x)."""
    helpfulness = torch.tensor([2.0, 0.5, -1.0, 3.0])
    safety = torch.tensor([-1.70, -1.80, 4.0, 0.0])  # just above, just below logit(0.15)
    unsafe = torch.tensor([False, False, False, True])
    got = combined_reward(helpfulness, safety, unsafe)
    raw = torch.tensor([2.0, -1.80, -1.0, 0.0])  # helpful, gated to safety, helpful, unsafe prompt -> safety
    torch.testing.assert_close(got, (raw - raw.mean()) / raw.std(correction=0))
    assert abs(got.mean().item()) < 1e-6 and got.std(correction=0).item() == pytest.approx(1.0, abs=1e-6)
    # a prob-scale reading: sigmoid(-1.80) < 0.15 <= sigmoid(-1.70)
    assert torch.sigmoid(torch.tensor(-1.80)) < 0.15 <= torch.sigmoid(torch.tensor(-1.70))
    with pytest.raises(ValueError, match="three \\(B,\\) tensors"):
        combined_reward(helpfulness, safety[:3], unsafe)


def test_rewards_in_length_sorted_batches_through_the_memo_equal_one_at_a_time_and_training_can_continue(tmp_path):
    import llama2_minimal.train.reward as reward_module

    tok = train_tokenizer(["tell me about the cat", "the cat is here.", "the dog is here", "a cat.", "a"] * 20,
                          tmp_path / "t.model", vocab_size=300)  # fmt: skip
    torch.manual_seed(0)
    backbone = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=tok.n_words, max_seq_len=64))
    model = RewardModel(backbone, reads_predictions=True).eval()
    prompts = ["tell me about the cat"] * 5
    responses = ["the cat is here.", "a", "the dog is here", "a cat.", "the cat is here. the cat is here."]
    reward_module._EVIDENCE_MEMO.clear()
    batched = rewards(model, tok, prompts, responses, batch_size=2)  # sorted by length, in batches of two
    alone = [rewards(model, tok, [p], [r])[0] for p, r in zip(prompts, responses)]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert {k[0].rsplit("-", 1)[1] for k in reward_module._EVIDENCE_MEMO} == {"fp32"}  # keyed by the precision
    pairs = [Pair(f"p{i}", prompts[0], "helpfulness", "the cat is here.", bad, STRENGTHS[0], (1.0, 0.0), ("g", "b"),
                  "train") for i, bad in enumerate(["a", "the dog is here"] * 8)]  # fmt: skip
    before = accuracy(pairs, pair_rewards(model, tok, pairs))["accuracy"]
    again, history = train_reward_model(None, tok, pairs, lr=3e-3, batch_size=8, progress=False, start=model)
    assert again is model and len(history) == 2
    assert accuracy(pairs, pair_rewards(model, tok, pairs))["accuracy"] >= before
