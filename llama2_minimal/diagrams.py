"""Diagrams of the architecture, drawn by code from the package's own modules so that they stay in step with it:

    residual_stream()    the pre-norm residual stream of lesson 02, beside the post-norm one
    gqa_grouping(H, K)   which key/value head each query head reads in grouped-query attention (lesson 04)
    llama_layer(args)    one Llama layer as a block diagram, with the names of Meta's llama/model.py (lesson 05)

Every label that names a module is read from a module the package builds (a TransformerBlock's children, the
Attention's projections), and the GQA grouping is computed by `repeat_kv` itself: rename a module or change the
grouping and the pictures change with it (tests/test_diagrams.py).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import FancyBboxPatch

from .model import ModelArgs, TransformerBlock, repeat_kv

COLOURS = {"norm": "#fde9c8", "attention": "#dbe9f6", "ffn": "#e3f1df", "stream": "#444444", "io": "#f2f2f2",
           "op": "#ffffff"}  # fmt: skip
__all__ = ["gqa_grouping", "llama_layer", "residual_stream", "block_parts"]


def block_parts(args: ModelArgs | None = None) -> dict[str, str]:
    """The names of a TransformerBlock's parts, read from a block built on the meta device, with their classes:
    {"attention_norm": "RMSNorm", "attention": "Attention", ...}."""
    args = args or ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=8)
    with torch.device("meta"):
        block = TransformerBlock(0, args)
    return {name: type(module).__name__ for name, module in block.named_children()}


def _box(ax, x, y, text, colour, w=1.6, h=0.5, fontsize=8, bold=False):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.03", fc=colour, ec="#555555",
                                lw=0.9, zorder=3))  # fmt: skip
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight="bold" if bold else "normal", zorder=4)


def _arrow(ax, start, end, colour="#555555", lw=1.0):
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color=colour, lw=lw, shrinkA=0,
                                                          shrinkB=0))  # fmt: skip


def _plus(ax, x, y):
    ax.add_patch(plt.Circle((x, y), 0.16, fc="white", ec=COLOURS["stream"], lw=1.2, zorder=5))
    ax.text(x, y, "+", ha="center", va="center", fontsize=11, zorder=6)


def residual_stream(n_blocks: int = 2):
    """Pre-norm (Llama) and post-norm (the original Transformer) side by side, for n_blocks blocks: where the
    norms sit relative to the residual stream."""
    parts = block_parts()
    norms = [name for name, kind in parts.items() if kind == "RMSNorm"]  # attention_norm, ffn_norm
    sublayers = [name for name, kind in parts.items() if kind != "RMSNorm"]  # attention, feed_forward
    colour = {sublayers[0]: COLOURS["attention"], sublayers[1]: COLOURS["ffn"]}
    steps = [(norm, sub) for norm, sub in zip(norms, sublayers)] * n_blocks
    height = 1.4 * len(steps) + 1.6
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 0.55 * height + 1))
    for ax, order in zip(axes, ("pre-norm (Llama)", "post-norm (original Transformer)")):
        stream_x, y = 0.0, 0.4
        _box(ax, stream_x, y, "tok_embeddings", COLOURS["io"], w=1.8)
        y += 0.6
        for norm, sub in steps:
            branch_y, join_y = y + 0.35, y + 1.05
            ax.plot([stream_x, stream_x], [y - 0.35, join_y - 0.16], color=COLOURS["stream"], lw=2.2)
            if order.startswith("pre"):
                ax.plot([stream_x, 1.3], [branch_y, branch_y], color="#555555", lw=1.0)
                _box(ax, 1.3, branch_y, norm, COLOURS["norm"], w=1.5, h=0.36, fontsize=7)
                _box(ax, 3.1, branch_y, sub, colour[sub], w=1.5, h=0.36, fontsize=7)
                _arrow(ax, (2.05, branch_y), (2.35, branch_y))
                ax.plot([3.85, 4.1, 4.1], [branch_y, branch_y, join_y], color="#555555", lw=1.0)
                _arrow(ax, (4.1, join_y), (stream_x + 0.17, join_y))
                _plus(ax, stream_x, join_y)
                y = join_y + 0.35
            else:
                ax.plot([stream_x, 2.2], [branch_y, branch_y], color="#555555", lw=1.0)
                _box(ax, 2.2, branch_y, sub, colour[sub], w=1.5, h=0.36, fontsize=7)
                ax.plot([2.95, 3.3, 3.3], [branch_y, branch_y, join_y], color="#555555", lw=1.0)
                _arrow(ax, (3.3, join_y), (stream_x + 0.17, join_y))
                _plus(ax, stream_x, join_y)
                ax.plot([stream_x, stream_x], [join_y + 0.16, join_y + 0.3], color=COLOURS["stream"], lw=2.2)
                _box(ax, stream_x, join_y + 0.5, norm, COLOURS["norm"], w=1.5, h=0.36, fontsize=7)
                y = join_y + 0.85
        final = "norm -> output" if order.startswith("pre") else "output"
        ax.plot([stream_x, stream_x], [y - 0.35, y + 0.05], color=COLOURS["stream"], lw=2.2)
        _box(ax, stream_x, y + 0.3, final, COLOURS["io"], w=1.8)
        ax.set_title(order, fontsize=10)
        ax.set_xlim(-1.3, 4.6)
        ax.set_ylim(0, y + 0.7)
        ax.axis("off")
    axes[0].text(-1.2, 0.95, "the stream\n(never normalised\nuntil the end)", fontsize=7, color="#333333", va="bottom")
    axes[1].text(-1.2, 0.95, "the stream is\nnormalised after\nevery sub-layer", fontsize=7, color="#333333",
                 va="bottom")  # fmt: skip
    fig.suptitle(f"The residual stream through {n_blocks} blocks: where the norms sit", fontsize=11)
    fig.tight_layout()
    return fig


def gqa_grouping(n_heads: int = 8, n_kv_heads: int = 2):
    """Query heads on top, key/value heads below, each query head joined to the key/value head it reads. The
    mapping is what `repeat_kv` computes: head j of the expanded keys is a copy of key/value head j // n_rep."""
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}.")
    n_rep = n_heads // n_kv_heads
    heads = torch.arange(n_kv_heads, dtype=torch.float32).view(1, 1, n_kv_heads, 1)
    reads = repeat_kv(heads, n_rep).flatten().long().tolist()  # reads[h]: the key/value head of query head h
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(max(5.0, 0.75 * n_heads + 1), 2.8))
    xq = [i * 0.75 for i in range(n_heads)]
    xkv = [sum(xq[h] for h in range(n_heads) if reads[h] == j) / n_rep for j in range(n_kv_heads)]
    for h, j in enumerate(reads):
        ax.plot([xq[h], xkv[j]], [1.6, 0.55], color=cmap(j % 10), lw=1.2)
        _box(ax, xq[h], 1.8, f"q{h}", cmap(j % 10), w=0.55, h=0.38, fontsize=8)
    for j in range(n_kv_heads):
        _box(ax, xkv[j], 0.35, f"k{j}, v{j}", cmap(j % 10), w=0.95, h=0.38, fontsize=8)
    kind = "grouped-query (GQA)"
    if n_kv_heads in (1, n_heads):
        kind = "multi-head (MHA)" if n_kv_heads == n_heads else "multi-query (MQA)"
    ax.text(xq[-1] + 0.55, 1.8, f"{n_heads} query heads", va="center", fontsize=8)
    ax.text(xq[-1] + 0.55, 0.35, f"{n_kv_heads} key/value heads", va="center", fontsize=8)
    ax.set_title(f"{kind}: query head h reads key/value head h // {n_rep} (n_rep = {n_heads} / {n_kv_heads})",
                 fontsize=10)  # fmt: skip
    ax.set_xlim(-0.6, xq[-1] + 2.3)
    ax.set_ylim(0, 2.2)
    ax.axis("off")
    fig.tight_layout()
    return fig


def llama_layer(args: ModelArgs | None = None):
    """One Llama layer, `layers[i]`, as a block diagram: every box is named after the module of Meta's code that
    computes it, with the shapes of `args` (Llama 2 7B's by default)."""
    args = args or ModelArgs(vocab_size=32000)  # Meta's defaults: the 7B's shape
    with torch.device("meta"):
        block = TransformerBlock(0, args)
    attention, ffn = block.attention, block.feed_forward
    e, d, hq, hk, f = args.dim, args.head_dim, args.n_heads, args.kv_heads, args.hidden_dim

    def shape(linear):
        return f"{linear.in_features} -> {linear.out_features}"

    fig, ax = plt.subplots(figsize=(10, 7.2))
    sx = 0.0  # the residual stream
    ax.plot([sx, sx], [0.3, 9.0], color=COLOURS["stream"], lw=2.4, zorder=1)
    _box(ax, sx, 0.25, f"x: (batch, seq, dim={e})", COLOURS["io"], w=2.4)
    _box(ax, sx, 9.25, "to layers[i + 1] (or norm -> output)", COLOURS["io"], w=3.0)
    # attention sub-layer
    ax.plot([sx, 1.4], [1.2, 1.2], color="#555555", lw=1)
    _box(ax, 1.9, 1.2, f"attention_norm\n({type(block.attention_norm).__name__}, eps {args.norm_eps:g})",
         COLOURS["norm"], w=1.9, h=0.55, fontsize=7)  # fmt: skip
    names = [("wq", attention.wq, hq), ("wk", attention.wk, hk), ("wv", attention.wv, hk)]
    for k, (name, linear, heads) in enumerate(names):
        x = 3.9 + 1.75 * k if k < 2 else 7.45
        _arrow(ax, (2.85, 1.2), (x - 0.8, 2.0))
        _box(ax, x, 2.2, f"attention.{name}\n{shape(linear)}\n{heads} heads x {d}", COLOURS["attention"], w=1.6,
             h=0.75, fontsize=7)  # fmt: skip
    _box(ax, 4.75, 3.35, "apply_rotary_emb\n(RoPE on q and k)", COLOURS["op"], w=2.6, h=0.5, fontsize=7)
    _arrow(ax, (3.9, 2.58), (4.3, 3.1))
    _arrow(ax, (5.65, 2.58), (5.2, 3.1))
    _box(ax, 7.45, 3.35, f"KVCache (decoding):\n{hk} key/value heads kept", COLOURS["op"], w=2.1, h=0.5, fontsize=7)
    _arrow(ax, (6.05, 3.35), (6.4, 3.35))  # k, after RoPE
    _arrow(ax, (7.45, 2.58), (7.45, 3.1))  # v, never rotated
    group = "repeat_kv / enable_gqa" if hk < hq else "(MHA: no grouping)"
    _box(ax, 6.0, 4.35, f"softmax(q k^T / sqrt({d}) + causal mask) v\n{group}: query head h reads kv head "
         f"h // {hq // hk}", COLOURS["attention"], w=4.6, h=0.6, fontsize=7)  # fmt: skip
    _arrow(ax, (4.75, 3.6), (4.9, 4.05))  # q
    _arrow(ax, (7.45, 3.6), (7.0, 4.05))  # k and v of every position so far
    _box(ax, 2.6, 4.35, f"attention.wo\n{shape(attention.wo)}", COLOURS["attention"], w=1.6, h=0.55, fontsize=7)
    _arrow(ax, (3.7, 4.35), (3.4, 4.35))
    _arrow(ax, (1.8, 4.35), (sx + 0.18, 4.35))
    _plus(ax, sx, 4.35)
    ax.text(sx - 0.25, 4.75, "h = x + attention(attention_norm(x))", ha="right", fontsize=7)
    # feed-forward sub-layer
    ax.plot([sx, 1.4], [5.4, 5.4], color="#555555", lw=1)
    _box(ax, 1.9, 5.4, f"ffn_norm\n({type(block.ffn_norm).__name__})", COLOURS["norm"], w=1.9, h=0.55, fontsize=7)
    _box(ax, 4.3, 6.1, f"feed_forward.w1 (gate)\n{shape(ffn.w1)}", COLOURS["ffn"], w=2.0, h=0.55, fontsize=7)
    _box(ax, 6.7, 6.1, f"feed_forward.w3\n{shape(ffn.w3)}", COLOURS["ffn"], w=2.0, h=0.55, fontsize=7)
    _arrow(ax, (2.85, 5.55), (3.4, 5.9))
    _arrow(ax, (2.85, 5.4), (5.75, 5.95))
    _box(ax, 4.3, 7.05, "SiLU", COLOURS["op"], w=0.9, h=0.4, fontsize=7)
    _arrow(ax, (4.3, 6.38), (4.3, 6.85))
    _box(ax, 5.5, 7.75, "silu(w1 x) * w3 x", COLOURS["op"], w=1.5, h=0.4, fontsize=7)
    _arrow(ax, (4.3, 7.25), (5.0, 7.55))
    _arrow(ax, (6.7, 6.38), (6.0, 7.55))
    _box(ax, 2.6, 7.75, f"feed_forward.w2\n{shape(ffn.w2)}", COLOURS["ffn"], w=1.7, h=0.55, fontsize=7)
    _arrow(ax, (4.75, 7.75), (3.45, 7.75))
    _arrow(ax, (1.75, 7.75), (sx + 0.18, 7.75))
    _plus(ax, sx, 7.75)
    ax.text(sx - 0.25, 8.15, "out = h + feed_forward(ffn_norm(h))", ha="right", fontsize=7)
    ax.text(8.5, 6.9, f"SwiGLU: hidden size {f}\n(lesson 02's rule)", fontsize=7, ha="center")
    ax.set_xlim(-3.2, 9.8)
    ax.set_ylim(-0.1, 9.6)
    ax.axis("off")
    ax.set_title(f"layers[i]: one Llama layer (dim {e}, {hq} query heads, {hk} key/value heads of {d})", fontsize=11)
    fig.tight_layout()
    return fig
