"""Decoding with the KV cache: greedy, temperature and top-p sampling, batches of prompts of different lengths.

The batching follows Meta's llama/generation.py: prompts are left-aligned in one tensor; decoding starts at the
shortest prompt's end, and at each position a sequence whose prompt is still running keeps its prompt token
instead of the sampled one. Every sequence thus sees its own tokens at their true positions, with no padding
inside the attention, and the cache is filled one position at a time for the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .model import Transformer

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
    """Nucleus sampling (Holtzman et al. 2020) as Meta does it: probs (B, V) -> sampled ids (B, 1)."""
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
    finished = torch.zeros(bsz, dtype=torch.bool, device=device)
    prev_pos = 0
    for cur_pos in range(min(lengths), total_len):
        hidden = model.hidden_states(tokens[:, prev_pos:cur_pos], prev_pos, cache)
        logits = model.output(hidden[:, -1]).float()  # only the last position is needed
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
    pos = 0
    for cur_pos in range(len(prompt_tokens), total_len):
        hidden = model.hidden_states(tokens, pos, cache)
        new = next_token(model.output(hidden[:, -1]).float(), temperature, top_p, generator)
        if eos_id is not None and int(new) == eos_id:
            return
        yield int(new)
        pos, tokens = cur_pos, new.view(1, 1)
