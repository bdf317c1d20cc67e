"""The Llama 2 model, one module per idea of the paper (§2.2), named after Meta's llama/model.py.

Shapes in comments use: B batch, S sequence (new tokens), T keys seen so far (cache + new),
H query heads, K key/value heads, D head_dim, E dim (model width), F FFN hidden size, V vocabulary.

The same modules serve training on full sequences (start_pos=0, no cache) and incremental decoding
(a KVCache and the position of the first new token). Nothing here knows about training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """Meta's FFN size rule: 2/3 of 4*dim (SwiGLU has three matrices, so this keeps the parameter count of a
    4*dim two-matrix FFN), optionally scaled, rounded UP to a multiple of `multiple_of`.
    7B: 11008, 13B: 13824, 70B (multiple_of 4096, multiplier 1.3): 28672."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass
class ModelArgs:
    """Meta's ModelArgs (llama/model.py) with its defaults, plus rope_theta (Code Llama's params.json has it).

    vocab_size=-1 means "not set yet": Meta's params.json leaves it to the tokenizer. Everything else is
    checked as soon as the arguments are made; the vocabulary when a model is built or counted.
    """

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = -1
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_batch_size: int = 32
    max_seq_len: int = 2048

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"Invalid ModelArgs: {message}")

        for name in ("dim", "n_layers", "n_heads", "multiple_of", "max_batch_size", "max_seq_len"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"{name}={value!r} must be a positive integer.")
        need(
            self.dim % self.n_heads == 0,
            f"dim={self.dim} is not divisible by n_heads={self.n_heads}: choose n_heads among the divisors "
            f"of dim (e.g. {_divisors_near(self.dim, self.n_heads)}) or change dim.",
        )
        need(
            self.head_dim % 2 == 0,
            f"head_dim = dim / n_heads = {self.head_dim} is odd, but rotary embeddings rotate pairs of "
            "features: choose dim and n_heads so that dim / n_heads is even.",
        )
        if self.n_kv_heads is not None:
            need(
                isinstance(self.n_kv_heads, int) and self.n_kv_heads >= 1,
                f"n_kv_heads={self.n_kv_heads!r} must be a positive integer or None (= n_heads).",
            )
            need(
                self.n_heads % self.n_kv_heads == 0,
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}: each key/value "
                f"head serves a whole group of query heads; choose n_kv_heads among "
                f"{[d for d in range(1, self.n_heads + 1) if self.n_heads % d == 0]}.",
            )
        need(
            isinstance(self.vocab_size, int) and (self.vocab_size >= 1 or self.vocab_size == -1),
            f"vocab_size={self.vocab_size!r} must be a positive integer (or -1 until the tokenizer sets it).",
        )
        if self.ffn_dim_multiplier is not None:
            need(self.ffn_dim_multiplier > 0, f"ffn_dim_multiplier={self.ffn_dim_multiplier} must be > 0.")
        need(self.norm_eps > 0, f"norm_eps={self.norm_eps} must be > 0 (it keeps RMSNorm away from 0/0).")
        need(self.rope_theta > 0, f"rope_theta={self.rope_theta} must be > 0.")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def hidden_dim(self) -> int:
        return ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    def require_vocab(self) -> None:
        if self.vocab_size < 1:
            raise ValueError(
                "Invalid ModelArgs: vocab_size is -1 (unset, as in Meta's params.json). Set it to the "
                "tokenizer's size, e.g. dataclasses.replace(args, vocab_size=tokenizer.n_words)."
            )

    @classmethod
    def from_params(cls, params: dict, **overrides) -> ModelArgs:
        """Build from a params.json dictionary (Meta's keys); keyword arguments override it."""
        known = {f.name for f in dataclasses.fields(cls)}
        merged = {**params, **overrides}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(
                f"params.json has keys this Llama 2 model does not know: {unknown}. Known keys: "
                f"{sorted(known)}. (Llama 3's use_scaled_rope, for example, is not supported.)"
            )
        return cls(**merged)

    def to_params(self) -> dict:
        """The params.json dictionary: Meta's keys, with rope_theta and max_seq_len kept for our runs."""
        params = {
            "dim": self.dim,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "multiple_of": self.multiple_of,
            "norm_eps": self.norm_eps,
            "vocab_size": self.vocab_size,
            "rope_theta": self.rope_theta,
            "max_seq_len": self.max_seq_len,
        }
        if self.n_kv_heads is not None:
            params["n_kv_heads"] = self.n_kv_heads
        if self.ffn_dim_multiplier is not None:
            params["ffn_dim_multiplier"] = self.ffn_dim_multiplier
        return params


# Meta's params.json of the released Llama 2 models. vocab_size is -1 in the files: the tokenizer has 32000.
LLAMA2_VOCAB_SIZE = 32000
LLAMA2_PARAMS = {
    "7B": {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05, "vocab_size": -1},
    "13B": {"dim": 5120, "multiple_of": 256, "n_heads": 40, "n_layers": 40, "norm_eps": 1e-05, "vocab_size": -1},
    "70B": {
        "dim": 8192,
        "multiple_of": 4096,
        "ffn_dim_multiplier": 1.3,
        "n_heads": 64,
        "n_kv_heads": 8,
        "n_layers": 80,
        "norm_eps": 1e-05,
        "vocab_size": -1,
    },
}


def _divisors_near(n: int, target: int) -> list[int]:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return sorted(divisors, key=lambda d: abs(d - target))[:3]


def parameter_counts(args: ModelArgs) -> dict[str, int]:
    """Parameters per part, computed from the arguments alone (no weights are allocated)."""
    args.require_vocab()
    e, kv = args.dim, args.kv_heads * args.head_dim
    per_layer_attention = e * e + 2 * e * kv + e * e  # wq, wk, wv, wo
    per_layer_ffn = 3 * e * args.hidden_dim  # w1, w2, w3
    return {
        "tok_embeddings": args.vocab_size * e,
        "attention": args.n_layers * per_layer_attention,
        "feed_forward": args.n_layers * per_layer_ffn,
        "norms": args.n_layers * 2 * e + e,  # attention_norm and ffn_norm per layer, then the final norm
        "output": args.vocab_size * e,  # untied from the embedding in Llama 2
    }


def count_parameters(args: ModelArgs) -> int:
    """Total parameter count: 7B 6,738,415,616; 13B 13,015,864,320; 70B 68,976,648,192 (vocab 32000)."""
    return sum(parameter_counts(args).values())


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019): LayerNorm without centring or bias.
    Computed in float32 and cast back, so that bf16 activations do not lose the small mean square."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm(x.float()).type_as(x) * self.weight


def precompute_freqs_cis(head_dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:
    """exp(i * m * theta^(-2j/D)) for positions m < end and pairs j < D/2: complex64 of shape (end, D/2)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    positions = torch.arange(end, dtype=torch.float32)
    angles = torch.outer(positions, freqs)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rotary_emb(xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys (B, S, heads, D) by their positions, Meta's interleaved form: features
    (2j, 2j+1) of a head are one complex number, multiplied by freqs_cis[m, j] (shape (S, D/2)).
    Hugging Face pairs j with j + D/2 instead; checkpoint.py permutes wq/wk rows between the two."""
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    freqs = freqs_cis.view(1, xq_.shape[1], 1, xq_.shape[-1])  # broadcast over batch and heads
    xq_out = torch.view_as_real(xq_ * freqs).flatten(3)
    xk_out = torch.view_as_real(xk_ * freqs).flatten(3)
    return xq_out.type_as(xq), xk_out.type_as(xk)


# PyTorch 2.5+ lets scaled_dot_product_attention share key/value heads itself (enable_gqa), which is what
# repeat_kv computes, without materialising the n_rep copies; older versions get repeat_kv, as in Meta's code.
_SDPA_SHARES_KV_HEADS = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 5)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, T, K, D) -> (B, T, K*n_rep, D), each key/value head repeated for its group of query heads
    (grouped-query attention, §2.2 and Table 18); equal to torch.repeat_interleave(x, n_rep, dim=2)."""
    if n_rep == 1:
        return x
    bs, slen, n_kv_heads, head_dim = x.shape
    return (
        x[:, :, :, None, :]
        .expand(bs, slen, n_kv_heads, n_rep, head_dim)
        .reshape(bs, slen, n_kv_heads * n_rep, head_dim)
    )


class KVCache:
    """Keys (after RoPE) and values of every layer for the positions decoded so far, stored before
    repetition, so grouped-query attention shrinks the cache by n_heads / n_kv_heads."""

    def __init__(
        self,
        args: ModelArgs,
        batch_size: int,
        max_seq_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.max_seq_len = args.max_seq_len if max_seq_len is None else max_seq_len
        if self.max_seq_len > args.max_seq_len:
            raise ValueError(
                f"KVCache of {self.max_seq_len} positions exceeds the model's max_seq_len={args.max_seq_len}."
            )
        shape = (args.n_layers, batch_size, self.max_seq_len, args.kv_heads, args.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def update(
        self, layer: int, start_pos: int, xk: torch.Tensor, xv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values (B, S, K, D) at start_pos and return all of them so far (B, T, K, D)."""
        end = start_pos + xk.shape[1]
        self.k[layer, : xk.shape[0], start_pos:end] = xk
        self.v[layer, : xv.shape[0], start_pos:end] = xv
        return self.k[layer, : xk.shape[0], :end], self.v[layer, : xv.shape[0], :end]

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads, rotary positions and an optional KV cache."""

    def __init__(self, args: ModelArgs, layer_id: int = 0):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = args.n_heads
        self.n_kv_heads = args.kv_heads
        self.n_rep = self.n_heads // self.n_kv_heads
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, args.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        freqs_cis: torch.Tensor,
        start_pos: int = 0,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, S, E) at positions start_pos..start_pos+S-1. mask: None means causal (each new token sees
        the cache and the new tokens up to itself); otherwise a boolean (.., S, T) mask, True = attend."""
        bsz, seqlen, _ = x.shape
        xq = self.wq(x).view(bsz, seqlen, self.n_heads, self.head_dim)
        xk = self.wk(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        xv = self.wv(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        xq, xk = apply_rotary_emb(xq, xk, freqs_cis)

        if cache is not None:
            xk, xv = cache.update(self.layer_id, start_pos, xk, xv)  # (B, T, K, D)
        if _SDPA_SHARES_KV_HEADS:
            gqa = {"enable_gqa": self.n_rep > 1}  # the kernel reads each key/value head for its whole group
        else:
            xk, xv, gqa = repeat_kv(xk, self.n_rep), repeat_kv(xv, self.n_rep), {}  # (B, T, H, D)

        q, k, v = xq.transpose(1, 2), xk.transpose(1, 2), xv.transpose(1, 2)  # (B, heads, ., D)
        if mask is None and seqlen > 1 and k.shape[2] > seqlen:
            mask = causal_mask(seqlen, k.shape[2] - seqlen, x.device)
        is_causal = mask is None and seqlen > 1
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, **gqa)
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))


def causal_mask(seqlen: int, start_pos: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (S, start_pos + S) mask: new token i (at position start_pos + i) sees positions <= its own."""
    rows = torch.arange(seqlen, device=device)[:, None] + start_pos
    cols = torch.arange(start_pos + seqlen, device=device)[None, :]
    return cols <= rows


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-normalisation (§2.2, after GPT-3): h = x + attention(norm(x)); out = h + ffn(norm(h))."""

    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args, layer_id)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        freqs_cis: torch.Tensor,
        start_pos: int = 0,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), freqs_cis, start_pos, cache, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Token embedding, n_layers pre-norm blocks, a final RMSNorm and an untied output head."""

    def __init__(self, params: ModelArgs):
        super().__init__()
        params.require_vocab()
        self.params = params
        self.vocab_size = params.vocab_size
        self.n_layers = params.n_layers
        self.tok_embeddings = nn.Embedding(params.vocab_size, params.dim)
        self.layers = nn.ModuleList(TransformerBlock(i, params) for i in range(params.n_layers))
        self.norm = RMSNorm(params.dim, eps=params.norm_eps)
        self.output = nn.Linear(params.dim, params.vocab_size, bias=False)
        # A plain attribute, as in Meta's code, not a buffer: model.to(bfloat16) would cast a complex buffer
        # to real and silently drop the sines. Rebuilt from the arguments, never saved (Meta's checkpoints
        # carry it as rope.freqs, which the loader drops); moved to the input's device in forward.
        self.freqs_cis = precompute_freqs_cis(params.head_dim, params.max_seq_len, params.rope_theta)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Meta's code is inference-only and has no initialisation; for training from scratch we use the
        # usual N(0, 0.02) of GPT-2 and Hugging Face's Llama.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens (B, S) at positions start_pos.. -> logits (B, S, V) in float32."""
        return self.output(self.hidden_states(tokens, start_pos, cache, mask)).float()

    def hidden_states(
        self,
        tokens: torch.Tensor,
        start_pos: int = 0,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final normalised hidden states (B, S, E): what the output head (or a reward head) reads."""
        _bsz, seqlen = tokens.shape
        limit = self.params.max_seq_len if cache is None else cache.max_seq_len
        if start_pos + seqlen > limit:
            raise ValueError(
                f"{start_pos + seqlen} positions (start_pos={start_pos} + {seqlen} tokens) exceed the "
                f"context of {limit} (max_seq_len): shorten the prompt, lower max_new_tokens, or build the "
                f"model with a larger max_seq_len."
            )
        if cache is not None and tokens.shape[0] > cache.batch_size:
            raise ValueError(f"batch of {tokens.shape[0]} exceeds the cache's batch size {cache.batch_size}.")
        h = self.tok_embeddings(tokens)
        if self.freqs_cis.device != h.device:
            self.freqs_cis = precompute_freqs_cis(
                self.params.head_dim, self.params.max_seq_len, self.params.rope_theta
            ).to(h.device)
        freqs_cis = self.freqs_cis[start_pos : start_pos + seqlen]
        for layer in self.layers:
            h = layer(h, freqs_cis, start_pos, cache, mask)
        return self.norm(h)

    def new_cache(self, batch_size: int, max_seq_len: int | None = None) -> KVCache:
        """An empty KV cache on this model's device and dtype."""
        weight = self.tok_embeddings.weight
        return KVCache(self.params, batch_size, max_seq_len, device=weight.device, dtype=weight.dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = [
    "LLAMA2_PARAMS",
    "LLAMA2_VOCAB_SIZE",
    "Attention",
    "FeedForward",
    "KVCache",
    "ModelArgs",
    "RMSNorm",
    "Transformer",
    "TransformerBlock",
    "apply_rotary_emb",
    "causal_mask",
    "count_parameters",
    "ffn_hidden_dim",
    "parameter_counts",
    "precompute_freqs_cis",
    "repeat_kv",
]
