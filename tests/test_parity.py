"""Parity with Hugging Face transformers' LlamaForCausalLM on the same weights, through both conversions."""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TINY_CONFIGS, random_model

from llama2_minimal.checkpoint import convert_checkpoint, load_checkpoint, save_checkpoint
from llama2_minimal.generation import generate

transformers = pytest.importorskip("transformers")
ATOL = 1e-4


def hf_from_folder(path):
    model = transformers.LlamaForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    return model.float().eval()


def random_hf_model(args, seed=0):
    """A model made by transformers itself (its own initialisation), with random norm weights."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=args.dim,
        intermediate_size=args.hidden_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.kv_heads,
        vocab_size=args.vocab_size,
        rms_norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,
        max_position_embeddings=args.max_seq_len,
        initializer_range=0.1,
    )
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_ours_to_hugging_face(name, tmp_path):
    args = TINY_CONFIGS[name]
    ours = random_model(args, seed=1)
    save_checkpoint(ours, tmp_path / "hf", layout="hf")
    hf = hf_from_folder(tmp_path / "hf")
    tokens = torch.randint(0, args.vocab_size, (3, 17))
    with torch.no_grad():
        a, b = ours(tokens), hf(tokens).logits
        hf_loss = hf(tokens, labels=tokens).loss
    assert (a - b).abs().max().item() < ATOL
    ours_loss = F.cross_entropy(a[:, :-1].reshape(-1, args.vocab_size), tokens[:, 1:].reshape(-1))
    assert abs(ours_loss.item() - hf_loss.item()) < 1e-5


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_hugging_face_to_ours_directly_and_through_meta(name, tmp_path):
    args = TINY_CONFIGS[name]
    hf = random_hf_model(args, seed=2)
    hf.save_pretrained(tmp_path / "hf")
    convert_checkpoint(tmp_path / "hf", tmp_path / "meta", to="meta")
    via_hf, via_meta = load_checkpoint(tmp_path / "hf"), load_checkpoint(tmp_path / "meta")
    assert via_meta.params == via_hf.params
    assert via_meta.params.hidden_dim == args.hidden_dim
    tokens = torch.randint(0, args.vocab_size, (2, 23))
    with torch.no_grad():
        reference = hf(tokens).logits
        assert (via_hf(tokens) - reference).abs().max().item() < ATOL
        assert (via_meta(tokens) - reference).abs().max().item() < ATOL
    # ... and back to Hugging Face's layout, readable by transformers again.
    convert_checkpoint(tmp_path / "meta", tmp_path / "hf2", to="hf")
    with torch.no_grad():
        assert (hf_from_folder(tmp_path / "hf2")(tokens).logits - reference).abs().max().item() < ATOL


@pytest.mark.parametrize("name", ["gqa", "odd"])
def test_greedy_generation_equals_transformers_generate(name, tmp_path):
    args = TINY_CONFIGS[name]
    ours = random_model(args, seed=3)
    save_checkpoint(ours, tmp_path / "hf", layout="hf")
    hf = hf_from_folder(tmp_path / "hf")
    torch.manual_seed(4)
    prompts = [torch.randint(3, args.vocab_size, (n,)).tolist() for n in (1, 6, 11)]
    batched = generate(ours, prompts, max_new_tokens=20, temperature=0, eos_id=None)
    for prompt, got in zip(prompts, batched):
        with torch.no_grad():
            out = hf.generate(
                torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        assert got == out[0, len(prompt) :].tolist()
