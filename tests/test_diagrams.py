"""The diagrams are drawn from the package's own modules: their labels name the modules that exist."""

import matplotlib

matplotlib.use("Agg")

import dataclasses  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from llama2_minimal import diagrams  # noqa: E402
from llama2_minimal.model import LLAMA2_PARAMS, ModelArgs  # noqa: E402


def texts(fig) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts) + "\n".join(
        ax.get_title() for ax in fig.axes
    )


def test_block_parts_are_the_block_s_children():
    assert diagrams.block_parts() == {"attention": "Attention", "feed_forward": "FeedForward",
                                      "attention_norm": "RMSNorm", "ffn_norm": "RMSNorm"}  # fmt: skip


def test_residual_stream_names_the_norms_and_sub_layers():
    fig = diagrams.residual_stream(n_blocks=1)
    labels = texts(fig)
    for name in ("attention_norm", "attention", "ffn_norm", "feed_forward", "tok_embeddings", "pre-norm", "post-norm"):
        assert name in labels
    plt.close(fig)


@pytest.mark.parametrize("n_heads,n_kv_heads", [(8, 2), (4, 4), (6, 1), (64, 8)])
def test_gqa_grouping_follows_repeat_kv(n_heads, n_kv_heads):
    fig = diagrams.gqa_grouping(n_heads, n_kv_heads)
    labels = texts(fig)
    assert f"q{n_heads - 1}" in labels and f"k{n_kv_heads - 1}, v{n_kv_heads - 1}" in labels
    assert f"h // {n_heads // n_kv_heads}" in labels
    plt.close(fig)
    with pytest.raises(ValueError, match="divisible"):
        diagrams.gqa_grouping(6, 4)


def test_llama_layer_uses_meta_s_names_and_the_shapes_of_its_args():
    args = ModelArgs.from_params(LLAMA2_PARAMS["70B"], vocab_size=32000)
    fig = diagrams.llama_layer(args)
    labels = texts(fig)
    for name in ("attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo", "ffn_norm",
                 "feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "apply_rotary_emb", "KVCache"):  # fmt: skip
        assert name in labels, name
    assert "8192 -> 1024" in labels and "28672" in labels and "h // 8" in labels
    plt.close(fig)
    mha = diagrams.llama_layer(dataclasses.replace(args, n_kv_heads=None))
    assert "no grouping" in texts(mha)
    plt.close(mha)
