"""Decoding with the KV cache: greedy, temperature and top-p sampling, batches of prompts of different lengths.

The batching follows Meta's llama/generation.py: prompts are left-aligned in one tensor; decoding starts at the
shortest prompt's end, and at each position a sequence whose prompt is still running keeps its prompt token
instead of the sampled one. Every sequence thus sees its own tokens at their true positions, with no padding
inside the attention, and the cache is filled one position at a time for the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .model import _SDPA_SHARES_KV_HEADS, KVCache, Transformer, causal_mask, precompute_freqs_cis, repeat_kv

DEFAULT_TEMPERATURE = 0.6  # Meta's chat defaults (llama/generation.py)
DEFAULT_TOP_P = 0.9


def _nucleus(probs: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta's top-p: sort descending, zero every token whose cumulative probability before it exceeds p (the
    token that crosses p is kept), renormalise. Returns (sorted probabilities, their token ids)."""
    probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
    probs_sum = torch.cumsum(probs_sort, dim=-1)
    probs_sort = probs_sort.masked_fill(probs_sum - probs_sort > p, 0.0)
    return probs_sort / probs_sort.sum(dim=-1, keepdim=True), probs_idx


def sample_top_p(probs: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2020) as Meta does it: probs (B, V) -> sampled ids (B, 1). With p = 1
    the nucleus is the whole vocabulary, so the sort is skipped: the same distribution, drawn in vocabulary
    order (the sort is a tenth of a sampling step of rejection sampling's large batches)."""
    if p >= 1.0:
        return torch.multinomial(probs, num_samples=1, generator=generator)
    probs_sort, probs_idx = _nucleus(probs, p)
    next_token = torch.multinomial(probs_sort, num_samples=1, generator=generator)
    return torch.gather(probs_idx, -1, next_token)


def top_p_filter(probs: torch.Tensor, p: float) -> torch.Tensor:
    """The distribution sample_top_p draws from, in vocabulary order (what the sampling explorer shows)."""
    probs_sort, probs_idx = _nucleus(probs, p)
    return torch.zeros_like(probs).scatter(-1, probs_idx, probs_sort)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The next-token distribution before top-p: softmax(logits / T) in float32; T = 0 is greedy decoding,
    all the probability on the argmax (a one-hot distribution)."""
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()
    return torch.softmax(logits.float() / temperature, dim=-1)


def next_token(
    logits: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, V) of the last position -> the next ids (B,): argmax at temperature 0, else top-p sampling."""
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    return sample_top_p(apply_temperature(logits, temperature), top_p, generator).squeeze(-1)


def _check_sampling(temperature: float, top_p: float, max_new_tokens: int) -> None:
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy).")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1].")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt_tokens: Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    eos_id: int | None = 2,
    seed: int | None = None,
) -> list[list[int]]:
    """Continue each prompt (a list of ids, BOS included) by up to max_new_tokens ids.

    Returns the new ids of each sequence, cut before its first EOS; decoding stops once every sequence has
    produced EOS. The seed makes sampling reproducible. A sequence never runs past the model's max_seq_len.
    """
    _check_sampling(temperature, top_p, max_new_tokens)
    if not prompt_tokens or any(len(p) == 0 for p in prompt_tokens):
        raise ValueError("every prompt needs at least one token (start it with BOS).")
    max_seq_len = model.params.max_seq_len
    lengths = [len(p) for p in prompt_tokens]
    if max(lengths) >= max_seq_len:
        raise ValueError(
            f"a prompt of {max(lengths)} tokens leaves no room in the model's context of {max_seq_len} "
            "tokens (max_seq_len): shorten the prompt or use a model with a longer context."
        )
    device = model.tok_embeddings.weight.device
    bsz = len(prompt_tokens)
    total_len = min(max_seq_len, max(lengths) + max_new_tokens)
    tokens = torch.zeros((bsz, total_len), dtype=torch.long, device=device)
    is_prompt = torch.zeros((bsz, total_len), dtype=torch.bool, device=device)
    for i, prompt in enumerate(prompt_tokens):
        tokens[i, : len(prompt)] = torch.tensor(prompt, dtype=torch.long, device=device)
        is_prompt[i, : len(prompt)] = True
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    cache = model.new_cache(bsz, total_len)
    step = decoder(model)
    layers = step.weights()  # fetched once for all the steps
    finished = torch.zeros(bsz, dtype=torch.bool, device=device)
    prev_pos = 0
    for cur_pos in range(min(lengths), total_len):
        hidden = step.hidden(tokens[:, prev_pos:cur_pos], prev_pos, cache, layers)
        logits = step.logits(hidden)  # only the last position is needed
        new = next_token(logits, temperature, top_p, generator)
        new = torch.where(is_prompt[:, cur_pos], tokens[:, cur_pos], new)
        tokens[:, cur_pos] = new
        if eos_id is not None:
            finished |= ~is_prompt[:, cur_pos] & (new == eos_id)
            if bool(finished.all()):
                break
        prev_pos = cur_pos

    out = []
    for i, length in enumerate(lengths):
        ids = tokens[i, length : min(cur_pos + 1, length + max_new_tokens)].tolist()
        if eos_id is not None and eos_id in ids:
            ids = ids[: ids.index(eos_id)]
        out.append(ids)
    return out


def complete_text(
    model: Transformer,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    seed: int | None = None,
) -> list[str]:
    """Text in, continuations out (the prompt is encoded with BOS, as in Meta's text_completion)."""
    ids = [tokenizer.encode(p, bos=True, eos=False) for p in prompts]
    out = generate(model, ids, max_new_tokens, temperature, top_p, eos_id=tokenizer.eos_id, seed=seed)
    return [tokenizer.decode(o) for o in out]


def complete_chat(
    model: Transformer,
    tokenizer,
    dialogs: Sequence[list[dict]],
    max_new_tokens: int = 64,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    seed: int | None = None,
) -> list[str]:
    """Dialogs (ending with the user's message) in Meta's chat format -> the assistant's replies."""
    from .chat import encode_dialog

    ids = [encode_dialog(d, tokenizer) for d in dialogs]
    out = generate(model, ids, max_new_tokens, temperature, top_p, eos_id=tokenizer.eos_id, seed=seed)
    return [tokenizer.decode(o).strip() for o in out]


# --- the decoding forward -------------------------------------------------------------------------------------

FUSE_LIMIT = 2**27  # parameters: above this the fused copies would cost more memory than the calls they save
# Tokens per forward pass when prompts fill the cache: a batch of 512 prompts of 24 tokens goes in 12 passes of 2
# positions, so the passes' temporaries stay small beside the KV cache, which is allocated whole at the start.
PREFILL_TOKENS = 1024
_ONEDNN: bool | None = None


def onednn_linear_available() -> bool:
    """Whether PyTorch's oneDNN matrix product with prepacked weights (the one torch.compile uses on CPU) is
    there and agrees with F.linear; checked once. On this project's 2-core AMD machine it multiplies a float32
    batch of 16 rows 2 to 3 times faster than F.linear, whose BLAS is not tuned for that CPU."""
    global _ONEDNN
    if _ONEDNN is None:
        try:
            w, x = torch.randn(24, 16, generator=torch.Generator().manual_seed(0)), torch.randn(3, 16)
            with torch.inference_mode():
                got = _onednn_linear(x, _onednn_pack(w))
            _ONEDNN = bool(torch.backends.mkldnn.is_available()) and torch.allclose(got, F.linear(x, w), atol=1e-5)
        except (AttributeError, RuntimeError, NotImplementedError):  # an older PyTorch, or one built without it
            _ONEDNN = False
    return _ONEDNN


def _onednn_pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, None)


def _onednn_linear(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")  # x (..., in) -> (..., out)


class Weight:
    """A weight matrix as the decoding forward multiplies by it: as is, or prepacked for oneDNN (CPU, float32)."""

    __slots__ = ("tensor", "packed")

    def __init__(self, tensor: torch.Tensor, pack: bool):
        self.packed = _onednn_pack(tensor) if pack else None
        self.tensor = None if pack else tensor  # the packed copy replaces it

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.tensor) if self.packed is None else _onednn_linear(x, self.packed)


class Decoder:
    """The model's forward (model.py), restated for decoding: the same arithmetic in fewer calls.

    Decoding a small model one token at a time is dominated by the cost of each call, not by arithmetic: a step
    of the 4M-parameter laptop model is some 40 small operations per layer. This forward makes one matrix
    product of wq, wk and wv (their rows stacked), one of w1 and w3, rotates queries and keys in one complex
    product, uses the fused RMSNorm kernel (bitwise equal to Meta's on float32) and calls no nn.Module, so no
    hook machinery runs. On a CPU in float32 its matrix products are oneDNN's, on weights prepacked once
    (`onednn_linear_available`: the same float32 arithmetic to within rounding, 1.6 times the batch-16 speed on
    this project's machine); elsewhere F.linear. The model's modules, names and state dict stay Meta's; the stacked
    (and packed) copies are made once
    and remade when any weight changes (PyTorch bumps a tensor's version on every in-place update, which is how
    an optimiser step and load_state_dict write). Models above FUSE_LIMIT parameters (a real Llama 2) keep their
    separate products: there the arithmetic dominates and a second copy of the weights would not fit.
    tests/test_generation.py checks it against model.forward on every configuration of the parity tests.
    """

    def __init__(self, model: Transformer):
        self.model = model
        self.fuse = model.num_parameters() <= FUSE_LIMIT
        self.pack: bool | None = None  # None: oneDNN where available (CPU, float32, fused); tests set it
        self._key: tuple | None = None
        self._layers: list[tuple] = []
        self._output: Weight | None = None

    def weights(self) -> list[tuple]:
        """Each layer's (attention_norm, q/k/v weights, wo, ffn_norm, w1/w3 weights, w2), made anew when the
        model's weights have changed since the last call."""
        params = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.model.parameters())
        key = (params, self.fuse, self.pack)
        if key != self._key:
            weight = self.model.output.weight
            pack = self.pack
            if pack is None:
                pack = self.fuse and weight.device.type == "cpu" and weight.dtype == torch.float32
                pack = pack and onednn_linear_available()
            with torch.no_grad():
                self._layers = []
                for layer in self.model.layers:
                    a, f = layer.attention, layer.feed_forward
                    if self.fuse:
                        qkv = (torch.cat([a.wq.weight, a.wk.weight, a.wv.weight]),)
                        ffn = (torch.cat([f.w1.weight, f.w3.weight]),)
                    else:
                        qkv, ffn = (a.wq.weight, a.wk.weight, a.wv.weight), (f.w1.weight, f.w3.weight)
                    qkv, ffn = tuple(Weight(w, pack) for w in qkv), tuple(Weight(w, pack) for w in ffn)
                    self._layers.append((layer.attention_norm, qkv, Weight(a.wo.weight, pack), layer.ffn_norm, ffn,
                                         Weight(f.w2.weight, pack)))  # fmt: skip
                self._output = Weight(weight, pack)
            self._key = key
        return self._layers

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output head on final hidden states (B, E) from `hidden`: float32 logits (B, V). Like `hidden` with
        the layers a caller fetched, it uses the weights of the last weights() call (made at the start of each
        generation), so that a decoding step does not look over every parameter again."""
        if self._output is None:
            self.weights()
        return self._output(hidden).float()

    @staticmethod
    def _norm(x: torch.Tensor, norm) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.eps)
        return norm(x)  # Meta's float32 statistics for a low-precision model

    def hidden(self, tokens: torch.Tensor, start_pos: int, cache: KVCache, layers: list[tuple] | None = None):
        """tokens (B, S) at positions start_pos.. -> the final normalised hidden state of the LAST position
        (B, E), the cache updated: what model.hidden_states(tokens, start_pos, cache)[:, -1] gives. `layers`
        is self.weights(), fetched once by a caller that makes many steps. More than PREFILL_TOKENS tokens go
        through in passes of as many positions as fit."""
        bsz, seqlen = tokens.shape
        if start_pos + seqlen > cache.max_seq_len:
            self.model.hidden_states(tokens, start_pos, cache)  # raises the model's own error naming the fix
        layers = layers or self.weights()
        chunk = max(1, PREFILL_TOKENS // bsz)
        for first in range(0, seqlen, chunk):
            out = self._hidden(tokens[:, first : first + chunk], start_pos + first, cache, layers)
        return out

    def _hidden(self, tokens: torch.Tensor, start_pos: int, cache: KVCache, layers: list[tuple]) -> torch.Tensor:
        model, args = self.model, self.model.params
        bsz, seqlen = tokens.shape
        h = F.embedding(tokens, model.tok_embeddings.weight)
        if model.freqs_cis.device != h.device:  # as the model's forward does: the table follows the input
            model.freqs_cis = precompute_freqs_cis(args.head_dim, args.max_seq_len, args.rope_theta).to(h.device)
        freqs = model.freqs_cis[start_pos : start_pos + seqlen].view(1, seqlen, 1, -1)
        n_h, n_kv, hd = args.n_heads, args.kv_heads, args.head_dim
        mask = None
        if seqlen > 1 and start_pos > 0:
            mask = causal_mask(seqlen, start_pos, h.device)
        gqa = {"enable_gqa": True} if n_h != n_kv and _SDPA_SHARES_KV_HEADS else {}
        end = start_pos + seqlen
        fp32 = h.dtype == torch.float32  # then the rotation needs no casts
        for i, (attention_norm, qkv_w, wo, ffn_norm, ffn_w, w2) in enumerate(layers):
            x = self._norm(h, attention_norm)
            qkv = qkv_w[0](x) if len(qkv_w) == 1 else torch.cat([w(x) for w in qkv_w], -1)
            # queries and keys rotated together: Meta's complex product (model.apply_rotary_emb), one call
            qk = qkv[..., : (n_h + n_kv) * hd]
            qk = torch.view_as_complex((qk if fp32 else qk.float()).reshape(bsz, seqlen, n_h + n_kv, -1, 2))
            qk = torch.view_as_real(qk * freqs).flatten(3)
            qk = qk if fp32 else qk.type_as(qkv)
            xq, xk = qk[:, :, :n_h], qk[:, :, n_h:]
            xv = qkv[..., (n_h + n_kv) * hd :].view(bsz, seqlen, n_kv, hd)
            cache.k[i, :bsz, start_pos:end] = xk
            cache.v[i, :bsz, start_pos:end] = xv
            keys, values = cache.k[i, :bsz, :end], cache.v[i, :bsz, :end]
            if n_h != n_kv and not _SDPA_SHARES_KV_HEADS:
                keys, values = repeat_kv(keys, n_h // n_kv), repeat_kv(values, n_h // n_kv)
            out = F.scaled_dot_product_attention(xq.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                                 attn_mask=mask, is_causal=mask is None and seqlen > 1,
                                                 **gqa)  # fmt: skip
            h = h + wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))
            x = self._norm(h, ffn_norm)
            if len(ffn_w) == 1:
                gate, up = ffn_w[0](x).chunk(2, dim=-1)
            else:
                gate, up = ffn_w[0](x), ffn_w[1](x)
            h = h + w2(F.silu(gate) * up)
        return self._norm(h[:, -1], model.norm)


def decoder(model: Transformer) -> Decoder:
    """The model's Decoder, made once and kept on the model (its fused weights follow the model's)."""
    found = model.__dict__.get("_decoder")
    if found is None:
        found = model.__dict__["_decoder"] = Decoder(model)
    return found


@torch.inference_mode()
def stream_generate(
    model: Transformer,
    prompt_tokens: Sequence[int],
    max_new_tokens: int = 64,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    eos_id: int | None = 2,
    seed: int | None = None,
):
    """Continue one prompt and yield each new id as soon as it is decoded (what a chat shows while it types).

    The ids are those of generate([prompt_tokens], ...)[0] with the same settings and seed: the prompt fills the
    KV cache in one pass, then each step feeds the last id. Stops before EOS, after max_new_tokens, or at the end
    of the model's context (max_seq_len); a caller tells the last case by len(prompt) + len(ids) == max_seq_len.
    """
    _check_sampling(temperature, top_p, max_new_tokens)
    if len(prompt_tokens) == 0:
        raise ValueError("the prompt needs at least one token (start it with BOS).")
    max_seq_len = model.params.max_seq_len
    if len(prompt_tokens) >= max_seq_len:
        raise ValueError(
            f"a prompt of {len(prompt_tokens)} tokens leaves no room in the model's context of {max_seq_len} "
            "tokens (max_seq_len): shorten the prompt or use a model with a longer context."
        )
    device = model.tok_embeddings.weight.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    total_len = min(max_seq_len, len(prompt_tokens) + max_new_tokens)
    cache = model.new_cache(1, total_len)
    tokens = torch.tensor([list(prompt_tokens)], dtype=torch.long, device=device)
    pos, step = 0, decoder(model)
    layers = step.weights()
    for cur_pos in range(len(prompt_tokens), total_len):
        hidden = step.hidden(tokens, pos, cache, layers)
        new = next_token(step.logits(hidden), temperature, top_p, generator)
        if eos_id is not None and int(new) == eos_id:
            return
        yield int(new)
        pos, tokens = cur_pos, new.view(1, 1)
