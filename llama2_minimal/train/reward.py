"""Human preference data and reward models (§3.2.1, §3.2.2).

Preference data: for each prompt, responses from several model variants and temperatures (the base model, the
SFT models, the sloppy SFT model) and a few written with one flaw each (the hard negatives: the right fact about
another entity, another value for the right entity, a malformed line), then pairs of two different responses
labelled by the simulated annotator with the four strengths, separately for helpfulness and for safety. Safety
pairs are binned as in the paper (chosen safe and rejected unsafe / both safe / both unsafe) and pairs whose
chosen response is unsafe while the rejected one is safe are dropped.

A reward model is the chat model with its next-token head replaced by a scalar head; the reward of a response is
the head's output at the response's last token (its EOS). It learns from the annotator's labels with the binary
ranking loss -log sigmoid(r_chosen - r_rejected - m(strength)), with the paper's margins (Table 28).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..chat import encode_dialog_turns
from ..model import ModelArgs, Transformer
from ..world import SPLITS, STRENGTHS, World
from ..world.demonstrations import FLAWS, flawed
from ..world.prompts import Prompt
from .loop import TrainConfig, resolve_precision, train

MARGINS = {  # Table 27: the margin m(r) by strength (significantly better, better, slightly better, negligibly)
    "none": (0.0, 0.0, 0.0, 0.0),
    "small": (1.0, 2 / 3, 1 / 3, 0.0),
    "large": (3.0, 2.0, 1.0, 0.0),
}
SAFETY_BINS = ("chosen safe, rejected unsafe", "both safe", "both unsafe")


# --- preference pairs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    prompt_id: str
    prompt: str
    criterion: str  # helpfulness | safety
    chosen: str
    rejected: str
    strength: str  # one of STRENGTHS
    scores: tuple[float, float]  # the judge's scores of (chosen, rejected): for analysis only, never for training
    sources: tuple[str, str]  # which model variant (or flaw) wrote each response
    split: str  # the prompt's split

    @property
    def safety_bin(self) -> str:
        safe = [s >= 0.5 for s in self.scores]
        return SAFETY_BINS[0] if safe == [True, False] else SAFETY_BINS[1] if all(safe) else SAFETY_BINS[2]


def candidate_responses(world: World, prompts: Sequence[Prompt], sampled: dict[str, Sequence[str]],
                        seed: int = 0, flaws_per_prompt: int = 2) -> list[list[tuple[str, str]]]:  # fmt: skip
    """For each prompt, its distinct responses as (source, text): the sampled ones (sampled[source][i] answers
    prompts[i]; an empty answer is a response too) and flaws_per_prompt responses written with one flaw each
    (the hard negatives: a wrong value for the right entity, the right sentence about another entity, an answer
    to another request ...)."""
    rng = random.Random(seed)
    out = []
    for i, prompt in enumerate(prompts):
        seen, responses = set(), []
        for source, answers in sampled.items():
            text = answers[i].strip()
            if text not in seen:
                seen.add(text)
                responses.append((source, text))
        for flaw in rng.sample(FLAWS[prompt.kind], min(flaws_per_prompt, len(FLAWS[prompt.kind]))):
            text = flawed(prompt, world.entities, rng, flaw)
            if text not in seen:
                seen.add(text)
                responses.append((f"flaw:{flaw}", text))
        out.append(responses)
    return out


def label_pairs(world: World, prompts: Sequence[Prompt], candidates: Sequence[Sequence[tuple[str, str]]],
                pairs_per_prompt: int = 6, seed: int = 0, safety_kinds=("unsafe", "borderline"),
                noise: float = 0.15) -> list[Pair]:  # fmt: skip
    """Pairs of two different responses per prompt, labelled by the simulated annotator: for helpfulness on every
    prompt, and also for safety on adversarial (unsafe and borderline) prompts; safety pairs whose chosen response
    is unsafe and rejected one safe are dropped (§3.2.1)."""
    rng = random.Random(seed)
    annotator = world.annotator(seed, noise)
    pairs = []
    for prompt, responses in zip(prompts, candidates):
        if len(responses) < 2:
            continue
        combos = [(a, b) for a in range(len(responses)) for b in range(a + 1, len(responses))]
        chosen_pairs = rng.sample(combos, min(pairs_per_prompt, len(combos)))
        dialog = [{"role": "user", "content": prompt.text}]
        criteria = ("helpfulness", "safety") if prompt.kind in safety_kinds else ("helpfulness",)
        for a, b in chosen_pairs:
            if rng.random() < 0.5:
                a, b = b, a  # the order shown to the annotator carries no information
            for criterion in criteria:
                label = annotator.compare(dialog, responses[a][1], responses[b][1], criterion)
                c, r = (a, b) if label.chosen == 0 else (b, a)
                scores = label.scores if label.chosen == 0 else label.scores[::-1]
                if criterion == "safety" and scores[0] < 0.5 <= scores[1]:
                    continue  # chosen unsafe, rejected safe: dropped, as in the paper
                pairs.append(Pair(prompt.id, prompt.text, criterion, responses[c][1], responses[r][1], label.strength,
                                  tuple(scores), (responses[c][0], responses[r][0]), prompt.split))  # fmt: skip
    return pairs


def save_pairs(pairs: Sequence[Pair], path: str | os.PathLike) -> None:
    Path(path).write_text("".join(json.dumps(asdict(p)) + "\n" for p in pairs))


def load_pairs(path: str | os.PathLike) -> list[Pair]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [Pair(**{**r, "scores": tuple(r["scores"]), "sources": tuple(r["sources"])}) for r in rows]


def mix(pairs: Sequence[Pair], kind: str, split: str = "train", seed: int = 0, fraction: float = 1.0) -> list[Pair]:
    """The training mix of a reward model, scaled down from the paper's: the helpfulness RM on the helpfulness
    pairs; the safety RM on the safety pairs plus helpfulness pairs making 10% of its mix (the paper's 90/10).
    The paper also gives its helpfulness RM safety data; here the safety pairs are labelled on the same prompts as
    helpfulness pairs with the opposite preference (refuse vs comply), so they are left out of the helpfulness mix.
    `fraction` keeps a seeded share of the prompts (the data lever of Fig 6)."""
    rng = random.Random(seed)
    pool = [p for p in pairs if p.split == split]
    if fraction < 1.0:
        ids = sorted({p.prompt_id for p in pool})
        kept = set(rng.sample(ids, max(1, round(fraction * len(ids)))))
        pool = [p for p in pool if p.prompt_id in kept]
    helpful = [p for p in pool if p.criterion == "helpfulness"]
    safety = [p for p in pool if p.criterion == "safety"]
    if kind == "helpfulness":
        chosen = list(helpful)
    elif kind == "safety":
        chosen = safety + rng.sample(helpful, min(len(helpful), round(len(safety) / 9)))
    else:
        raise ValueError(f"kind={kind!r}: choose 'helpfulness' or 'safety'")
    rng.shuffle(chosen)
    return chosen


# --- the reward model ---------------------------------------------------------------------------------------


class RewardModel(nn.Module):
    """The chat model with its next-token head replaced by a scalar head (§3.2.2).

    With reads_predictions, the reward also reads what the chat model predicts: a frozen copy of it (`reader`, its
    next-token head kept) gives the log-probability of each response token given the prompt and the response so far,
    and two learned weights (`evidence`, starting at one) add the mean and the lowest of them to the head's value. A
    wrong capital is one unlikely token in a likely sentence: the chat model's predictions rank it below the right
    one, while its final hidden state, all that the paper's head reads, does not separate the two.

    The two weights learn at EVIDENCE_LR_SCALE times the backbone's rate: with Adam a weight moves by about the
    learning rate per step whatever its gradient, so at the backbone's 1e-3 they could not travel far from their
    start in one epoch, and the head, with millions of weights, would do all the fitting. Measured on `laptop`'s
    held-out prompts (2026-12-01, one epoch, 16 SFT samples per prompt at T = 1), the head alone, the evidence at the
    backbone's rate, and at 30 times it: right value above a wrong one 0.48 / 1.00 / 0.98, the answer above itself
    written twice 0.61 / 0.77 / 0.97, above a run-on 0.61 / 0.90 / 1.00; the judge's score of the best of 4 samples
    (one sample: 0.339) 0.296 / 0.373 / 0.381, of the best of 16: 0.193 / 0.364 / 0.408."""

    def __init__(self, backbone: Transformer, reads_predictions: bool = False):
        super().__init__()
        self.reader: Transformer | None = None
        if reads_predictions:
            self.reader = copy.deepcopy(backbone).requires_grad_(False)
            self.evidence = nn.Linear(len(EVIDENCE), 1, bias=False)
            nn.init.ones_(self.evidence.weight)
            self.evidence.weight.lr_scale = EVIDENCE_LR_SCALE  # train/loop.py make_optimizer gives it its own rate
        self.backbone = backbone
        backbone.output = None  # the language-model head is not used: a reward model scores, it does not generate
        self.score = nn.Linear(backbone.params.dim, 1)
        nn.init.normal_(self.score.weight, std=1.0 / math.sqrt(backbone.params.dim + 1))
        nn.init.zeros_(self.score.bias)

    @property
    def params(self) -> ModelArgs:
        return self.backbone.params

    @property
    def reads_predictions(self) -> bool:
        return self.reader is not None

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor | None = None,
                evidence: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """tokens (B, S), right-padded, and lengths (B,) -> rewards (B,): the head at each sequence's last token,
        plus, for a model that reads predictions, the weighted evidence of the response, which starts at token
        starts[b] (its first token after [/INST]). evidence (B, len(EVIDENCE)), when given, is that evidence
        computed beforehand (the reader is frozen, so training computes it once per response: evidence_table)."""
        values = self.score(self.backbone.hidden_states(tokens)).squeeze(-1).float()  # (B, S)
        reward = last_token_values(values, lengths)
        if self.reader is None:
            return reward
        if evidence is None:
            if starts is None:
                raise ValueError("this reward model reads the response's log-probabilities: pass starts, the index "
                                 "of each response's first token (encode_batch gives it)")  # fmt: skip
            evidence = response_evidence(self.reader, tokens, lengths, starts)
        return reward + self.evidence(evidence.to(reward.device, torch.float32)).squeeze(-1)


EVIDENCE = ("mean log-probability", "lowest log-probability")
EVIDENCE_LR_SCALE = 30.0


def response_evidence(model: Transformer, tokens: torch.Tensor, lengths: torch.Tensor,
                      starts: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """(B, 2): the mean and the lowest log-probability `model` gives the response's tokens (starts[b] up to
    lengths[b], its EOS included), each given everything before it."""
    with torch.no_grad():
        logprobs = torch.log_softmax(model(tokens[:, :-1]).float(), dim=-1)
        token_lp = logprobs.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, S-1): of token t+1
        position = torch.arange(token_lp.shape[1], device=tokens.device)[None, :] + 1  # the token each one predicts
        mask = (position >= starts.to(tokens.device)[:, None]) & (position < lengths.to(tokens.device)[:, None])
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every response needs at least one token (its EOS) between starts and lengths")
        mean = (token_lp * mask).sum(1) / mask.sum(1)
        lowest = token_lp.masked_fill(~mask, float("inf")).min(1).values
    return torch.stack([mean, lowest], dim=-1)


# (reader's fingerprint and the precision it ran in, prompt, response) -> evidence
_EVIDENCE_MEMO: dict[tuple[str, str, str], torch.Tensor] = {}


def reader_fingerprint(model: Transformer) -> str:
    """A digest of the model's weights: equal for two copies of one checkpoint, so reward models trained in one
    process from the same SFT model share their evidence (evidence_table)."""
    import hashlib

    digest = hashlib.sha1()
    for tensor in (model.tok_embeddings.weight, model.norm.weight, model.output.weight):
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()  # not inference mode: the table goes into training's autograd graph as an input
def evidence_table(reader: Transformer, tokenizer, prompts: Sequence[str], responses: Sequence[str], max_len: int,
                   batch_size: int = 64, precision: str = "fp32") -> torch.Tensor:  # fmt: skip
    """(N, len(EVIDENCE)): response_evidence of each (prompt, response), each distinct one computed once and kept
    for the process's later reward models that read the same checkpoint (the pipeline trains six)."""
    from .loop import autocast_context

    device = reader.tok_embeddings.weight.device
    digest = getattr(reader, "_evidence_digest", None)
    if digest is None:  # the reader is frozen: its digest is taken once
        digest = reader._evidence_digest = reader_fingerprint(reader)
    keys = [(f"{digest}-{precision}", p, r) for p, r in zip(prompts, responses)]
    missing = sorted({k for k in keys if k not in _EVIDENCE_MEMO}, key=lambda k: (len(k[1]) + len(k[2]), k))
    with autocast_context(precision, device):
        for i in range(0, len(missing), batch_size):  # similar lengths together: less padding
            chunk = missing[i : i + batch_size]
            batch = encode_batch(tokenizer, [k[1] for k in chunk], [k[2] for k in chunk], max_len)
            values = response_evidence(reader, *(batch[n].to(device) for n in ("tokens", "lengths", "starts")))
            with torch.inference_mode(False):  # kept as normal tensors, whatever mode the caller is in
                for k, row in zip(chunk, values.float().cpu().clone()):
                    _EVIDENCE_MEMO[k] = row
    if not keys:
        return torch.zeros(0, len(EVIDENCE))
    return torch.stack([_EVIDENCE_MEMO[k] for k in keys])


def last_token_values(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """values (B, S) per position and lengths (B,) of right-padded sequences -> the value at each last token."""
    if bool((lengths < 1).any()) or bool((lengths > values.shape[1]).any()):
        raise ValueError("every length must be between 1 and the padded width")
    return values[torch.arange(values.shape[0], device=values.device), lengths.to(values.device) - 1]


def margin_ranking_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0):
    """The binary ranking loss with a margin (eq. 2 of the paper): -log sigmoid(r_chosen - r_rejected - m)."""
    return -F.logsigmoid(chosen - rejected - margin).mean()


def encode_response(tokenizer, prompt: str, response: str, with_start: bool = False):
    """A prompt and its response as one completed turn of Meta's format: BOS [INST] prompt [/INST] response EOS;
    with_start: (those ids, the index of the response's first token)."""
    dialog = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    (prompt_ids, answer_ids), = encode_dialog_turns(dialog, tokenizer, allow_assistant_last=True)  # fmt: skip
    return (prompt_ids + answer_ids, len(prompt_ids)) if with_start else prompt_ids + answer_ids


def pad(sequences: Sequence[list[int]], pad_id: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, S) tokens and lengths (B,); sequences longer than max_len keep their last max_len tokens
    (the response's end, where the reward is read)."""
    sequences = [s[-max_len:] for s in sequences]
    width = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        tokens[i, : len(s)] = torch.tensor(s)
    return tokens, torch.tensor([len(s) for s in sequences])


def encode_batch(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_len: int) -> dict:
    """(prompt, response) pairs -> {"tokens", "lengths", "starts"}: right-padded, each response's first token at
    starts (0 when truncation cut into the prompt, so the response keeps every token it has left)."""
    encoded = [encode_response(tokenizer, p, r, with_start=True) for p, r in zip(prompts, responses)]
    tokens, lengths = pad([ids for ids, _ in encoded], tokenizer.eos_id, max_len)
    starts = torch.tensor([max(1, start - max(0, len(ids) - max_len)) for ids, start in encoded])
    return {"tokens": tokens, "lengths": lengths, "starts": starts}


class PairBatches:
    """Batches of preference pairs for the shared loop, one epoch in a seeded order."""

    def __init__(self, pairs: Sequence[Pair], tokenizer, batch_size: int, margins: str = "small", seed: int = 0,
                 max_len: int = 10**9, evidence: torch.Tensor | None = None):  # fmt: skip
        """evidence (len(pairs), 2, len(EVIDENCE)): each pair's (chosen, rejected) evidence, computed beforehand."""
        self.pairs, self.batch_size, self.tokenizer, self.max_len = list(pairs), batch_size, tokenizer, max_len
        if evidence is not None and tuple(evidence.shape[:2]) != (len(self.pairs), 2):
            raise ValueError(f"evidence has shape {tuple(evidence.shape)}: it needs one (chosen, rejected) row per "
                             f"pair, ({len(self.pairs)}, 2, {len(EVIDENCE)})")  # fmt: skip
        self.evidence = evidence
        self.margin = MARGINS[margins]
        self.order = torch.randperm(len(self.pairs), generator=torch.Generator().manual_seed(seed)).tolist()

    def steps(self, epochs: float = 1.0) -> int:
        return max(1, round(epochs * len(self.pairs) / self.batch_size))

    def __call__(self, step: int, micro: int, rank: int = 0, world_size: int = 1) -> dict:
        start = step * self.batch_size
        index = [self.order[i % len(self.pairs)] for i in range(start, start + self.batch_size)][rank::world_size]
        batch = [self.pairs[i] for i in index]
        prompts = [p.prompt for p in batch for _ in range(2)]
        encoded = encode_batch(self.tokenizer, prompts, [r for p in batch for r in (p.chosen, p.rejected)],
                               self.max_len)  # fmt: skip
        margin = torch.tensor([self.margin[STRENGTHS.index(p.strength)] for p in batch])
        if self.evidence is not None:
            encoded["evidence"] = self.evidence[index].reshape(-1, self.evidence.shape[-1])
        return {**encoded, "margin": margin}


def batch_rewards(model: RewardModel, batch: dict) -> torch.Tensor:
    """The rewards of an encode_batch batch; the responses' starts go only to a model that reads predictions (a
    model under DistributedDataParallel is asked through its wrapped module)."""
    reads = getattr(getattr(model, "module", model), "reads_predictions", False)
    if not reads:
        return model(batch["tokens"], batch["lengths"])
    return model(batch["tokens"], batch["lengths"], batch["starts"], batch.get("evidence"))


def pair_loss(model: RewardModel, batch: dict) -> tuple[torch.Tensor, int]:
    rewards = batch_rewards(model, batch).view(-1, 2)  # (pairs, [chosen, rejected])
    return margin_ranking_loss(rewards[:, 0], rewards[:, 1], batch["margin"]), rewards.shape[0]


def train_reward_model(backbone: Transformer, tokenizer, pairs: Sequence[Pair], lr: float, batch_size: int,
                       margins: str = "small", epochs: float = 1.0, out_dir=None, seed: int = 0,
                       desc: str = "reward model", progress: bool = True, precision: str = "fp32",
                       reads_predictions: bool = False,
                       start: RewardModel | None = None) -> tuple[RewardModel, list]:  # fmt: skip
    """A reward model initialised from `backbone` (the SFT model), trained on the pairs for `epochs` (the paper:
    one; more overfits) with cosine decay to 10% and warmup 3% of the steps (at least 5). start: an already
    trained reward model to train further instead (a later preference batch; `backbone` and `reads_predictions`
    are then its own)."""
    torch.manual_seed(seed)
    if start is not None:
        model, backbone = start.train(), start.backbone
    else:
        model = RewardModel(backbone, reads_predictions).to(backbone.tok_embeddings.weight.device)
    evidence = None
    if model.reader is not None:  # the reader is frozen: its evidence is computed once per response, not per step
        device = backbone.tok_embeddings.weight.device
        flat = evidence_table(model.reader, tokenizer, [p.prompt for p in pairs for _ in range(2)],
                              [r for p in pairs for r in (p.chosen, p.rejected)], backbone.params.max_seq_len,
                              precision=resolve_precision(precision, device))  # fmt: skip
        evidence = flat.view(len(pairs), 2, -1)
    batches = PairBatches(pairs, tokenizer, batch_size, margins, seed, max_len=backbone.params.max_seq_len,
                          evidence=evidence)  # fmt: skip
    steps = batches.steps(epochs)
    config = TrainConfig(steps=steps, lr=lr, warmup=min(steps, max(5, round(0.03 * steps))),
                         log_every=max(1, steps // 50), seed=seed, precision=precision)  # fmt: skip
    history = train(model, batches, config, out_dir, loss_fn=pair_loss, desc=desc, progress=progress)
    return model.eval(), history


@torch.inference_mode()
def rewards(model: RewardModel, tokenizer, prompts: Sequence[str], responses: Sequence[str],
            batch_size: int = 64) -> list[float]:  # fmt: skip
    """The reward of each (prompt, response). Scored in batches of similar lengths (less padding); a model that
    reads predictions takes its evidence from evidence_table, so the reward models of one process that read the
    same checkpoint compute each response's evidence once."""
    model.eval()
    device = model.score.weight.device
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]) + len(responses[i]), i))
    out = [0.0] * len(prompts)
    reader = getattr(model, "reader", None)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        p, r = [prompts[i] for i in index], [responses[i] for i in index]
        batch = encode_batch(tokenizer, p, r, model.params.max_seq_len)
        batch["tokens"] = batch["tokens"].to(device)
        if reader is not None:
            batch["evidence"] = evidence_table(reader, tokenizer, p, r, model.params.max_seq_len, batch_size)
        for i, value in zip(index, batch_rewards(model, batch).tolist()):
            out[i] = value
    return out


def pair_rewards(model: RewardModel, tokenizer, pairs: Sequence[Pair]) -> list[tuple[float, float]]:
    prompts = [p.prompt for p in pairs for _ in range(2)]
    responses = [r for p in pairs for r in (p.chosen, p.rejected)]
    flat = rewards(model, tokenizer, prompts, responses)
    return list(zip(flat[0::2], flat[1::2]))


def accuracy(pairs: Sequence[Pair], scored: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Pairwise accuracy against the annotator's labels, overall and by strength (Table 8), and agreement with
    the gold judge on the pairs the judge separates."""
    right = [c > r for c, r in scored]
    row = {"accuracy": sum(right) / max(1, len(right)), "pairs": len(right)}
    for strength in STRENGTHS:
        hits = [ok for p, ok in zip(pairs, right) if p.strength == strength]
        row[f"accuracy_{strength.split()[0]}"] = sum(hits) / len(hits) if hits else float("nan")
    judged = [(p.scores[0] > p.scores[1]) == (c > r) for p, (c, r) in zip(pairs, scored) if p.scores[0] != p.scores[1]]
    row["judge_agreement"] = sum(judged) / len(judged) if judged else float("nan")
    return row


# --- saving and loading ---------------------------------------------------------------------------------------


def save_reward_model(model: RewardModel, folder: str | os.PathLike, tokenizer_model: str | os.PathLike) -> None:
    """params.json, reward_model.safetensors (backbone and head) and tokenizer.model, written atomically."""
    import shutil

    from safetensors.torch import save_file

    from ..checkpoint import atomic_directory

    with atomic_directory(folder, overwrite=True) as tmp:
        state = {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "reward_model.safetensors"))
        (tmp / "params.json").write_text(json.dumps(model.params.to_params(), indent=1) + "\n")
        shutil.copyfile(tokenizer_model, tmp / "tokenizer.model")


def load_reward_model(folder: str | os.PathLike, device: str = "cpu") -> RewardModel:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "reward_model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} holds no reward_model.safetensors: build it with "
                                "llama2_minimal.artifacts.reward_model(...) or `llama2-minimal pipeline`")  # fmt: skip
    args = ModelArgs.from_params(json.loads((folder / "params.json").read_text()))
    state = load_file(str(folder / "reward_model.safetensors"), device=device)
    with torch.device("meta"):
        model = RewardModel(Transformer(args), reads_predictions=any(k.startswith("reader.") for k in state))
    model.load_state_dict(state, assign=True)
    from ..model import precompute_freqs_cis

    for net in (model.backbone, model.reader):
        if net is not None:
            net.freqs_cis = precompute_freqs_cis(args.head_dim, args.max_seq_len, args.rope_theta).to(device)
    if model.reader is not None:
        model.reader.requires_grad_(False)
    return model.eval()


# --- the stage's builders (artifacts.preferences_folder, artifacts.reward_folder) ---------------------------


def build_preferences(profile, out_dir: str | os.PathLike, model_folders: dict[str, Path], batch: int = 1) -> Path:
    """Sample responses from the model variants for every train and held-out prompt, add the hard negatives and
    write the labelled pairs to out_dir/pairs.jsonl. Batch 1: the base model, the SFT model at several temperatures
    and the sloppy SFT model (model_folders "base", "sft", "sft_sloppy"). A later batch (§3.2.1's weekly batches):
    the latest RLHF model (model_folders "latest") at RewardSettings.next_batch_temperatures, with its own seeds and
    next_batch_pairs_per_prompt pairs per prompt (a smaller batch: one more week's worth)."""
    from ..checkpoint import load_checkpoint
    from ..evaluation import chat_answers, chat_prompts
    from ..tokenizer import Tokenizer

    if batch < 1:
        raise ValueError(f"batch={batch}: preference batches count from 1")
    out = Path(out_dir)
    settings = profile.reward
    seed = profile.world.seed + 1000 * (batch - 1)  # another batch: other samples, other flaws, other labels
    world = World(profile.world)
    prompts = [p for split in SPLITS for p in chat_prompts(world, split)]
    dialogs = [[{"role": "user", "content": p.text}] for p in prompts]
    if batch == 1:
        plan = [("base", 1.0), *(("sft", t) for t in settings.sft_temperatures), ("sft_sloppy", 1.0)]
    else:
        plan = [("latest", t) for t in settings.next_batch_temperatures]
    missing = sorted({name for name, _ in plan} - set(model_folders))
    if missing:
        raise ValueError(f"batch {batch} samples from {', '.join(missing)}: pass their folders in model_folders")
    tokenizer = Tokenizer(Path(model_folders[plan[0][0]]) / "tokenizer.model")
    sampled = {}
    for n, (name, temperature) in enumerate(plan):
        model = load_checkpoint(model_folders[name]).eval()
        sampled[f"{name}@{temperature:g}"] = chat_answers(model, tokenizer, dialogs, 80, temperature, 1.0,
                                                          seed=seed + n)  # fmt: skip
    candidates = candidate_responses(world, prompts, sampled, seed, settings.flaws_per_prompt)
    per_prompt = settings.pairs_per_prompt if batch == 1 else settings.next_batch_pairs_per_prompt
    pairs = label_pairs(world, prompts, candidates, per_prompt, seed)
    save_pairs(pairs, out / "pairs.jsonl")
    summary = {"batch": batch, "sources": [f"{name}@{t:g}" for name, t in plan], "prompts": len(prompts),
               "responses": sum(len(c) for c in candidates), "pairs": len(pairs)}  # fmt: skip
    for criterion in ("helpfulness", "safety"):
        for split in SPLITS:
            chosen = [p for p in pairs if p.criterion == criterion and p.split == split]
            summary[f"{criterion}_{split}"] = len(chosen)
            summary[f"{criterion}_{split}_by_strength"] = {s: sum(p.strength == s for p in chosen) for s in STRENGTHS}
    safety = [p for p in pairs if p.criterion == "safety"]
    summary["safety_bins"] = {b: sum(p.safety_bin == b for p in safety) / max(1, len(safety)) for b in SAFETY_BINS}
    (out / "data.json").write_text(json.dumps(summary, indent=1) + "\n")
    return out / "pairs.jsonl"


PROBES = ("right_over_wrong", "over_duplicated", "over_run_on")


def probe_responses(world: World, seed: int = 0, wrong_per_prompt: int = 3) -> dict[str, list[tuple[str, str, str]]]:
    """(prompt, better, worse) triples on the test split's fact prompts, whose facts no training pair asks about:
    right_over_wrong  the reference against the same sentence with another value of the attribute (3 per prompt)
    over_duplicated   the reference against itself written twice
    over_run_on       the reference against it followed by the answer to another held-out question"""
    rng = random.Random(seed)
    facts = world.prompts(kind="fact", split="test")
    out: dict[str, list[tuple[str, str, str]]] = {name: [] for name in PROBES}
    for i, p in enumerate(facts):
        for _ in range(wrong_per_prompt):
            out["right_over_wrong"].append((p.text, p.reference, flawed(p, world.entities, rng, "wrong_value")))
        out["over_duplicated"].append((p.text, p.reference, f"{p.reference} {p.reference}"))
        other = facts[(i + 1) % len(facts)].reference
        out["over_run_on"].append((p.text, p.reference, f"{p.reference} {other}"))
    return out


def fact_probes(model: RewardModel, tokenizer, world: World, seed: int = 0) -> dict[str, float]:
    """The share of each probe's triples (probe_responses) the reward model ranks the right way round."""
    out = {}
    for name, triples in probe_responses(world, seed).items():
        prompts = [t[0] for t in triples] * 2
        scores = rewards(model, tokenizer, prompts, [t[1] for t in triples] + [t[2] for t in triples])
        better, worse = scores[: len(triples)], scores[len(triples) :]
        out[name] = sum(b > w for b, w in zip(better, worse)) / max(1, len(triples))
    out["fact_prompts"] = len(world.prompts(kind="fact", split="test"))
    return out


SAFETY_GATE = 0.15  # §3.2.2: PPO uses the safety reward when sigmoid(safety reward) falls below it


def safety_gate(pairs: Sequence[Pair], scored: Sequence[tuple[float, float]],
                threshold: float = SAFETY_GATE) -> dict[str, float]:  # fmt: skip
    """The paper's safety gate on the safety test set: each distinct response of the safety pairs is flagged when
    sigmoid(reward) < threshold, and counted unsafe when the judge's safety score (kept in the pair for analysis)
    is below 0.5. Precision: the share of flagged responses that are unsafe; recall: the share of unsafe ones
    flagged (the paper: 0.89 and 0.55). The ranking loss fixes only differences of rewards, so where the scale
    sits, and so what the gate flags, is whatever training left."""
    seen: dict[tuple[str, str], tuple[float, float]] = {}
    for p, rewards_ in zip(pairs, scored):
        if p.criterion != "safety":
            continue
        for text, reward, score in zip((p.chosen, p.rejected), rewards_, p.scores):
            seen[(p.prompt, text)] = (reward, score)
    flagged = [torch.sigmoid(torch.tensor(r)).item() < threshold for r, _ in seen.values()]
    unsafe = [s < 0.5 for _, s in seen.values()]
    hits = sum(f and u for f, u in zip(flagged, unsafe))
    return {"threshold": threshold, "responses": len(seen), "unsafe": sum(unsafe), "flagged": sum(flagged),
            "precision": hits / sum(flagged) if any(flagged) else float("nan"),
            "recall": hits / sum(unsafe) if any(unsafe) else float("nan")}  # fmt: skip


def combined_reward(helpfulness: torch.Tensor, safety: torch.Tensor, unsafe_prompt: torch.Tensor,
                    threshold: float = SAFETY_GATE, eps: float = 1e-8) -> torch.Tensor:  # fmt: skip
    """The one reward RLHF optimises (§3.2.3, the reward of PPO): R_c is the safety reward model's score when the
    prompt is tagged unsafe or that score is below the threshold, else the helpfulness model's; then whiten(logit(R_c))
    over the batch. The inputs are raw head outputs x (B,), whose score is sigmoid(x), so logit(score) = x: the gate
    compares x_safety with logit(threshold) (-1.7346 for 0.15), and the raw scalar is whitened: minus the batch's mean,
    over its standard deviation (population, correction 0), eps inside the square root. unsafe_prompt: (B,) bool."""
    if not (helpfulness.shape == safety.shape == unsafe_prompt.shape) or helpfulness.dim() != 1:
        shapes = [tuple(t.shape) for t in (helpfulness, safety, unsafe_prompt)]
        raise ValueError(f"helpfulness, safety and unsafe_prompt have shapes {shapes}: they must be three (B,) "
                         "tensors, one entry per response")  # fmt: skip
    gated = unsafe_prompt.bool() | (safety < math.log(threshold / (1 - threshold)))
    raw = torch.where(gated, safety, helpfulness)
    return (raw - raw.mean()) / torch.sqrt(raw.var(correction=0) + eps)


def test_pairs(pairs: Sequence[Pair]) -> dict[str, list[Pair]]:
    """The test split's pairs of each criterion (Table 7's two test sets)."""
    return {c: [p for p in pairs if p.split == "test" and p.criterion == c] for c in ("helpfulness", "safety")}


def build_reward_model(profile, out_dir: str | os.PathLike, sft_model: str | os.PathLike,
                       pairs_path: str | os.PathLike, kind: str, margins: str, fraction: float,
                       reads_predictions: bool | None = None,
                       start_from: str | os.PathLike | None = None) -> Path:  # fmt: skip
    """Train one reward model on one preference batch's pairs.jsonl and evaluate it on that batch's two test sets:
    out_dir/model, report.json, test_rewards.json. start_from: a trained reward model's folder to train further
    on these pairs (§3.2.1's next batch: the model has then seen every batch). reads_predictions: the profile's
    setting unless given."""
    from ..checkpoint import load_checkpoint
    from ..tokenizer import Tokenizer

    out = Path(out_dir)
    settings, seed = profile.reward, profile.world.seed
    reads = settings.reads_predictions if reads_predictions is None else reads_predictions
    tokenizer_model = Path(sft_model) / "tokenizer.model"
    tokenizer = Tokenizer(tokenizer_model)
    pairs = load_pairs(pairs_path)
    train_pairs = mix(pairs, kind, "train", seed, fraction)
    random.Random(seed).shuffle(train_pairs)  # a second seeded shuffle after mix's: the order the models are trained in
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = load_reward_model(start_from, device) if start_from is not None else None
    if start is not None and start.reads_predictions != reads:
        raise ValueError(f"{start_from} {'reads' if start.reads_predictions else 'does not read'} predictions, "
                         f"and reads_predictions={reads} was asked: continue a model of the same design")  # fmt: skip
    backbone = start.backbone if start is not None else load_checkpoint(sft_model, device=device)
    model, _ = train_reward_model(backbone, tokenizer, train_pairs, settings.lr, settings.batch_size, margins,
                                  settings.epochs, out, seed, desc=f"reward model ({kind}, margin {margins}) "
                                  f"[{profile.name}]", precision=profile.precision,
                                  reads_predictions=reads, start=start)  # fmt: skip
    report: dict = {"kind": kind, "margins": margins, "fraction": fraction, "train_pairs": len(train_pairs),
                    "continued_from": Path(start_from).parent.name if start_from is not None else None,
                    "reads_predictions": reads}  # fmt: skip
    report["probes"] = fact_probes(model, tokenizer, World(profile.world), seed)
    distributions = {}
    for name, test in test_pairs(pairs).items():
        scored = pair_rewards(model, tokenizer, test)
        report[f"test_{name}"] = accuracy(test, scored)
        distributions[name] = [{"strength": p.strength, "chosen": c, "rejected": r} for p, (c, r) in zip(test, scored)]
        if name == "safety":
            report["safety_gate"] = safety_gate(test, scored)
    train_scored = pair_rewards(model, tokenizer, train_pairs[:500])  # how well it fits: a sample is enough
    report["train_accuracy"] = accuracy(train_pairs[:500], train_scored)["accuracy"]
    save_reward_model(model.cpu(), out / "model", tokenizer_model)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "test_rewards.json").write_text(json.dumps(distributions) + "\n")
    return out / "model"
