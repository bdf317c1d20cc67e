import pytest
import torch
from tiny_models import TINY_CONFIGS, random_model

from llama2_minimal.generation import Decoder, decoder, generate, next_token, onednn_linear_available, sample_top_p


@pytest.fixture(scope="module")
def model():
    return random_model(TINY_CONFIGS["gqa"], seed=5)


def prompts(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def test_greedy_without_cache_gives_the_same_tokens(model):
    [prompt] = prompts(model.vocab_size, [5])
    [out] = generate(model, [prompt], max_new_tokens=12, temperature=0, eos_id=None)
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(12):  # the slow way: the whole sequence again at every step
            tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    assert out == tokens[len(prompt) :]


def test_a_batch_of_different_lengths_equals_one_prompt_at_a_time(model):
    batch = prompts(model.vocab_size, [2, 9, 5, 1])
    together = generate(model, batch, max_new_tokens=10, temperature=0, eos_id=None)
    alone = [generate(model, [p], max_new_tokens=10, temperature=0, eos_id=None)[0] for p in batch]
    assert together == alone
    assert all(len(o) == 10 for o in together)


def test_each_sequence_stops_at_its_own_eos(model):
    batch = prompts(model.vocab_size, [4, 6], seed=1)
    free = generate(model, batch, max_new_tokens=12, temperature=0, eos_id=None)
    # Pretend that the first new token of sequence 0 that it had not produced before is EOS.
    k = next(i for i in range(1, 12) if free[0][i] not in free[0][:i])
    eos = free[0][k]
    stopped = generate(model, batch, max_new_tokens=12, temperature=0, eos_id=eos)
    assert stopped[0] == free[0][:k]
    expected = free[1][: free[1].index(eos)] if eos in free[1] else free[1]
    assert stopped[1] == expected


def test_decoding_stops_when_every_sequence_has_finished(model, monkeypatch):
    batch = prompts(model.vocab_size, [3], seed=2)
    free = generate(model, batch, max_new_tokens=10, temperature=0, eos_id=None)
    calls = []
    real = Decoder.hidden
    monkeypatch.setattr(Decoder, "hidden", lambda *a, **k: calls.append(1) or real(*a, **k))
    generate(model, batch, max_new_tokens=10, temperature=0, eos_id=free[0][1])
    assert len(calls) == 2  # the second new token was EOS: no more forward passes


def test_sampling_is_reproducible_with_a_seed(model):
    batch = prompts(model.vocab_size, [3, 3])
    a = generate(model, batch, max_new_tokens=15, temperature=1.0, top_p=1.0, eos_id=None, seed=7)
    b = generate(model, batch, max_new_tokens=15, temperature=1.0, top_p=1.0, eos_id=None, seed=7)
    c = generate(model, batch, max_new_tokens=15, temperature=1.0, top_p=1.0, eos_id=None, seed=8)
    assert a == b and a != c


def test_a_tiny_top_p_is_greedy(model):
    batch = prompts(model.vocab_size, [4])
    greedy = generate(model, batch, max_new_tokens=10, temperature=0, eos_id=None)
    nucleus = generate(model, batch, max_new_tokens=10, temperature=1.5, top_p=1e-6, eos_id=None, seed=3)
    assert greedy == nucleus


def test_top_p_keeps_exactly_meta_s_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.3, 0.15]])
    g = torch.Generator().manual_seed(0)
    # p = 0.7: 0.5 (0 before it), 0.3 (0.5 before it) are kept; 0.15 has 0.8 before it: dropped.
    seen = {int(sample_top_p(probs, 0.7, g)) for _ in range(300)}
    assert seen == {1, 2}
    seen = {int(sample_top_p(probs, 0.85, g)) for _ in range(300)}
    assert seen == {1, 2, 3}
    counts = torch.bincount(torch.cat([sample_top_p(probs, 0.7, g) for _ in range(4000)]).flatten(), minlength=4)
    assert abs(counts[1].item() / 4000 - 0.5 / 0.8) < 0.03  # renormalised over the nucleus


def test_temperature_sharpens_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).repeat(3000, 1)
    g = torch.Generator().manual_seed(0)
    cold = (next_token(logits, 0.3, 1.0, g) == 0).float().mean()
    hot = (next_token(logits, 3.0, 1.0, g) == 0).float().mean()
    assert cold > 0.95 and hot < 0.5
    assert next_token(logits[:1], 0.0).item() == 0


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_bad_settings_are_refused(model, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        generate(model, [[1, 2]], **kwargs)


def test_empty_and_too_long_prompts_are_refused(model):
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1], []])
    with pytest.raises(ValueError, match="no room"):
        generate(model, [[1] * model.params.max_seq_len])


def test_generation_never_runs_past_the_context(model):
    limit = model.params.max_seq_len
    [out] = generate(model, [[1] * (limit - 3)], max_new_tokens=50, temperature=0, eos_id=None)
    assert len(out) == 3


@pytest.mark.parametrize("pack", [True, False], ids=["onednn", "f_linear"])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "separate"])
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_the_decoding_forward_equals_the_model_s_forward(name, fuse, pack):
    from tiny_models import TINY_CONFIGS as configs

    if pack and not onednn_linear_available():
        pytest.skip("this PyTorch has no oneDNN linear with packed weights")
    args = configs[name]
    model = random_model(args, seed=3)
    step = Decoder(model)
    step.fuse, step.pack = fuse, pack
    tokens = torch.randint(0, args.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model.hidden_states(tokens)
        cache, mine = model.new_cache(batch_size=2), model.new_cache(batch_size=2)
        model.hidden_states(tokens[:, :11], 0, cache)
        model.hidden_states(tokens[:, 11:14], 11, cache)
        # a prefill, a chunk at start_pos > 0, then one token at a time: the last position's hidden state each time
        got = [step.hidden(tokens[:, :7], 0, mine), step.hidden(tokens[:, 7:11], 7, mine)]
        got += [step.hidden(tokens[:, i : i + 1], i, mine) for i in range(11, 20)]
    want = full[:, [6, 10, *range(11, 20)]].transpose(0, 1)
    torch.testing.assert_close(torch.stack(got), want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(step.logits(got[-1]), model(tokens)[:, -1], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(mine.k[:, :, :20], cache_after(model, tokens).k[:, :, :20], atol=1e-5, rtol=1e-5)


def cache_after(model, tokens):
    cache = model.new_cache(batch_size=tokens.shape[0])
    with torch.no_grad():
        model.hidden_states(tokens, 0, cache)
    return cache


def test_the_decoder_follows_the_model_s_weights_when_they_change():
    model = random_model(TINY_CONFIGS["gqa"], seed=5)
    step = decoder(model)
    tokens = torch.randint(0, model.vocab_size, (1, 9), generator=torch.Generator().manual_seed(2))

    def both():
        with torch.no_grad():
            return step.hidden(tokens, 0, model.new_cache(1)), model.hidden_states(tokens)[:, -1]

    before, _ = both()
    with torch.no_grad():
        model.load_state_dict(random_model(TINY_CONFIGS["gqa"], seed=9).state_dict())  # written in place
    mine, want = both()
    torch.testing.assert_close(mine, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mine, before)
    with torch.no_grad():
        model.layers[1].feed_forward.w3.weight.mul_(-1)  # one weight changed in place, as an optimiser step does
    mine, want = both()
    torch.testing.assert_close(mine, want, atol=1e-5, rtol=1e-5)
    assert decoder(model) is step  # made once per model


@pytest.mark.parametrize("budget", [1, 5, 1024])
def test_a_long_prefill_goes_through_in_passes_with_the_same_result(monkeypatch, budget):
    import llama2_minimal.generation as generation

    monkeypatch.setattr(generation, "PREFILL_TOKENS", budget)  # 2 prompts: 1, 2 and all 20 positions a pass
    model = random_model(TINY_CONFIGS["gqa"], seed=4)
    tokens = torch.randint(0, model.vocab_size, (2, 20), generator=torch.Generator().manual_seed(3))
    passes = []
    real = Decoder._hidden
    monkeypatch.setattr(Decoder, "_hidden", lambda self, t, *a: passes.append(t.shape[1]) or real(self, t, *a))
    cache = model.new_cache(batch_size=2)
    with torch.no_grad():
        got = Decoder(model).hidden(tokens, 0, cache)
        want = model.hidden_states(tokens)[:, -1]
    assert passes == {1: [1] * 20, 5: [2] * 10, 1024: [20]}[budget]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache.k[:, :, :20], cache_after(model, tokens).k[:, :, :20], atol=1e-5, rtol=1e-5)
