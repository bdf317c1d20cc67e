"""Tiny random models shared by the tests (a module of its own: the repository's conftest.py is not importable)."""

import torch

from llama2_minimal.model import ModelArgs, Transformer

# Random tiny configurations that exercise every shape rule: multi-head, grouped-query, multi-query,
# an FFN multiplier, odd sizes (head_dim 8, multiple_of 7), another rope_theta and norm_eps.
TINY_CONFIGS = {
    "mha": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=97, multiple_of=32, max_seq_len=64),
    "gqa": ModelArgs(
        dim=96,
        n_layers=3,
        n_heads=6,
        n_kv_heads=2,
        vocab_size=101,
        multiple_of=16,
        ffn_dim_multiplier=1.3,
        max_seq_len=64,
    ),
    "mqa": ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=1, vocab_size=50, multiple_of=1, max_seq_len=64),
    "odd": ModelArgs(
        dim=40,
        n_layers=2,
        n_heads=5,
        vocab_size=33,
        multiple_of=7,
        ffn_dim_multiplier=0.77,
        rope_theta=500000.0,
        norm_eps=1e-6,
        max_seq_len=48,
    ),
}


def random_model(args: ModelArgs, seed: int = 0) -> Transformer:
    """A model with random weights, norm weights included (all-ones norms would hide a wrong norm mapping)."""
    torch.manual_seed(seed)
    model = Transformer(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()
