import dataclasses

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TINY_CONFIGS, random_model

from llama2_minimal.model import (
    LLAMA2_PARAMS,
    KVCache,
    ModelArgs,
    RMSNorm,
    Transformer,
    apply_rotary_emb,
    count_parameters,
    ffn_hidden_dim,
    parameter_counts,
    precompute_freqs_cis,
    repeat_kv,
)

# The params.json files as Meta ships them, written out here independently of LLAMA2_PARAMS.
PARAMS_7B = {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05, "vocab_size": -1}
PARAMS_13B = {"dim": 5120, "multiple_of": 256, "n_heads": 40, "n_layers": 40, "norm_eps": 1e-05, "vocab_size": -1}
PARAMS_70B = {
    "dim": 8192, "multiple_of": 4096, "ffn_dim_multiplier": 1.3, "n_heads": 64, "n_kv_heads": 8, "n_layers": 80,
    "norm_eps": 1e-05, "vocab_size": -1,
}  # fmt: skip
EXPECTED = [(PARAMS_7B, 6_738_415_616, 11008), (PARAMS_13B, 13_015_864_320, 13824), (PARAMS_70B, 68_976_648_192, 28672)]


@pytest.mark.parametrize("params,total,hidden", EXPECTED)
def test_parameter_counts_of_the_released_models(params, total, hidden):
    args = ModelArgs.from_params(params, vocab_size=32000)
    assert args.hidden_dim == hidden
    assert count_parameters(args) == total
    with torch.device("meta"):  # the same count from the modules themselves, without allocating weights
        assert Transformer(args).num_parameters() == total


@pytest.mark.parametrize("params,total,hidden", EXPECTED)
def test_parameter_counts_agree_with_transformers(params, total, hidden):
    from transformers import LlamaConfig, LlamaForCausalLM

    args = ModelArgs.from_params(params, vocab_size=32000)
    config = LlamaConfig(
        hidden_size=args.dim,
        intermediate_size=hidden,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.kv_heads,
        vocab_size=32000,
    )
    with torch.device("meta"):
        hf = LlamaForCausalLM(config)
    assert sum(p.numel() for p in hf.parameters()) == total


def test_the_package_s_released_params_are_meta_s():
    assert LLAMA2_PARAMS == {"7B": PARAMS_7B, "13B": PARAMS_13B, "70B": PARAMS_70B}


def test_parameter_breakdown_sums_to_total():
    args = ModelArgs.from_params(PARAMS_7B, vocab_size=32000)
    parts = parameter_counts(args)
    assert parts["tok_embeddings"] == parts["output"] == 32000 * 4096
    assert parts["feed_forward"] == 32 * 3 * 4096 * 11008
    assert sum(parts.values()) == count_parameters(args)


def test_ffn_rule():
    assert ffn_hidden_dim(4096, 256) == 11008
    assert ffn_hidden_dim(8192, 4096, 1.3) == 28672
    assert ffn_hidden_dim(64, 32) == 192  # int(2 * 256 / 3) = 170, rounded up to a multiple of 32


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        (dict(dim=100, n_heads=8), "not divisible by n_heads"),
        (dict(dim=64, n_heads=8, n_kv_heads=3), "not divisible by n_kv_heads"),
        (dict(dim=24, n_heads=8), "head_dim = dim / n_heads = 3 is odd"),
        (dict(dim=64, n_heads=4, vocab_size=0), "vocab_size=0"),
        (dict(dim=64, n_heads=4, n_layers=0), "n_layers=0"),
        (dict(dim=64, n_heads=4, n_kv_heads=0), "n_kv_heads=0"),
        (dict(dim=64, n_heads=4, norm_eps=0.0), "norm_eps"),
        (dict(dim=64, n_heads=4, ffn_dim_multiplier=-1.0), "ffn_dim_multiplier"),
        (dict(dim=64, n_heads=4, max_seq_len=0), "max_seq_len"),
        (dict(dim=64, n_heads=4, rope_theta=0.0), "rope_theta"),
    ],
)
def test_invalid_model_args_name_the_fix(kwargs, fragment):
    with pytest.raises(ValueError, match="Invalid ModelArgs") as err:
        ModelArgs(**kwargs)
    assert fragment in str(err.value)


def test_unset_vocab_is_refused_when_building():
    args = ModelArgs(dim=64, n_heads=4, n_layers=1)  # vocab_size -1, as in Meta's params.json
    with pytest.raises(ValueError, match="tokenizer"):
        Transformer(args)
    with pytest.raises(ValueError, match="tokenizer"):
        count_parameters(args)


def test_unknown_params_json_key_is_refused():
    with pytest.raises(ValueError, match="use_scaled_rope"):
        ModelArgs.from_params({**PARAMS_7B, "use_scaled_rope": True})


def test_rmsnorm_is_computed_in_float32():
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 8) * 1e-3
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    xb = x.to(torch.bfloat16)
    out = norm(xb)
    reference = (xb.float() * torch.rsqrt(xb.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
    assert out.dtype == torch.float32  # bf16 activations times the float32 weight
    torch.testing.assert_close(out, reference.float() * norm.weight)


def test_rotary_embedding_is_meta_interleaved_complex_rotation():
    head_dim, seqlen = 8, 5
    freqs = precompute_freqs_cis(head_dim, seqlen)
    assert freqs.shape == (seqlen, head_dim // 2) and freqs.dtype == torch.complex64
    x = torch.randn(1, seqlen, 2, head_dim)
    rotated, _ = apply_rotary_emb(x, x, freqs)
    m, j = 3, 1  # position 3, pair (2, 3), angle 3 * 10000^(-2/8)
    angle = m * 10000 ** (-2 * j / head_dim)
    a, b = x[0, m, 0, 2 * j], x[0, m, 0, 2 * j + 1]
    expected = torch.tensor(
        [
            a * torch.cos(torch.tensor(angle)) - b * torch.sin(torch.tensor(angle)),
            a * torch.sin(torch.tensor(angle)) + b * torch.cos(torch.tensor(angle)),
        ]
    )
    torch.testing.assert_close(rotated[0, m, 0, 2 * j : 2 * j + 2], expected)
    torch.testing.assert_close(rotated[:, 0], x[:, 0])  # position 0 is not rotated
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths


def test_rotary_scores_depend_only_on_relative_position():
    freqs = precompute_freqs_cis(16, 32)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        qm, _ = apply_rotary_emb(q, q, freqs[m : m + 1])
        kn, _ = apply_rotary_emb(k, k, freqs[n : n + 1])
        return (qm * kn).sum()

    torch.testing.assert_close(score(7, 3), score(20, 16))
    assert not torch.allclose(score(7, 3), score(7, 4))


def test_repeat_kv_matches_repeat_interleave():
    x = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(repeat_kv(x, 4), torch.repeat_interleave(x, 4, dim=2))
    assert repeat_kv(x, 1) is x


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_incremental_decoding_with_the_cache_equals_the_full_forward(name):
    args = TINY_CONFIGS[name]
    model = random_model(args)
    tokens = torch.randint(0, args.vocab_size, (2, 20))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(batch_size=2)
        steps = [model(tokens[:, :7], 0, cache)]  # a prefill ...
        steps += [model(tokens[:, 7:11], 7, cache)]  # ... a chunk at start_pos > 0 (explicit causal mask) ...
        steps += [model(tokens[:, i : i + 1], i, cache) for i in range(11, 20)]  # ... then one token at a time
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_attention_is_causal():
    args = TINY_CONFIGS["gqa"]
    model = random_model(args)
    tokens = torch.randint(0, args.vocab_size, (1, 12))
    changed = tokens.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % args.vocab_size
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_cache_stores_only_the_key_value_heads():
    args = TINY_CONFIGS["gqa"]
    cache = KVCache(args, batch_size=3)
    assert cache.k.shape == (args.n_layers, 3, args.max_seq_len, 2, args.head_dim)
    mha = KVCache(dataclasses.replace(args, n_kv_heads=None), batch_size=3)
    assert mha.nbytes() == 3 * cache.nbytes()  # 6 query heads share 2 key/value heads


def test_a_prompt_longer_than_the_context_gets_a_clear_error():
    args = TINY_CONFIGS["mha"]
    model = random_model(args)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, args.max_seq_len + 1, dtype=torch.long))
    cache = model.new_cache(1, max_seq_len=16)
    with pytest.raises(ValueError, match="exceed the context of 16"):
        model(torch.zeros(1, 4, dtype=torch.long), start_pos=14, cache=cache)


def test_training_step_reduces_the_loss():
    args = TINY_CONFIGS["gqa"]
    model = random_model(args).train()
    tokens = torch.randint(0, args.vocab_size, (4, 33))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, args.vocab_size), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert all(p.grad is not None for p in model.parameters())


def test_casting_the_model_keeps_the_rotary_table_complex():
    args = TINY_CONFIGS["mha"]
    model = random_model(args)
    tokens = torch.randint(0, args.vocab_size, (1, 10))
    with torch.no_grad():
        reference = model(tokens)
        model = model.to(torch.float64)
        assert model.freqs_cis.is_complex()
        torch.testing.assert_close(model(tokens), reference, atol=1e-5, rtol=1e-5)
