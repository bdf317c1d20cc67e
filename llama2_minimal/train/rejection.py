"""Rejection-sampling fine-tuning (§3.2.3): sample K answers per prompt, score them with the reward model, keep
the best, fine-tune on it; repeat with the improved model.

The reward of an answer is the safety reward model's for a prompt tagged unsafe and the helpfulness reward
model's otherwise (the paper tags prompts in the same way for its combined reward). Each iteration keeps, for every
prompt, the best answer found so far in any iteration (the paper's fix for the regressions it saw when it kept
only the latest samples), so the fine-tuning set only ever improves.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..chat import encode_dialog
from ..generation import generate
from ..model import Transformer
from ..world import World
from ..world.prompts import Prompt
from .reward import RewardModel, rewards


def sample_answers(model: Transformer, tokenizer, prompts: Sequence[Prompt], k: int, temperature: float,
                   top_p: float = 1.0, seed: int = 0, max_new_tokens: int = 80,
                   chunk: int = 512) -> list[list[str]]:  # fmt: skip
    """K answers per prompt, sampled in batches with the KV cache: answers[i][j] is prompt i's j-th sample."""
    ids = [encode_dialog([{"role": "user", "content": p.text}], tokenizer) for p in prompts]
    flat = [x for x in ids for _ in range(k)]
    texts: list[str] = []
    for n, start in enumerate(range(0, len(flat), chunk)):
        outs = generate(model, flat[start : start + chunk], max_new_tokens, temperature, top_p,
                        eos_id=tokenizer.eos_id, seed=seed + n)  # fmt: skip
        texts += [tokenizer.decode(o).strip() for o in outs]
    return [texts[i * k : (i + 1) * k] for i in range(len(prompts))]


def score_answers(reward_models: dict[str, RewardModel], tokenizer, prompts: Sequence[Prompt],
                  answers: Sequence[Sequence[str]]) -> list[list[float]]:  # fmt: skip
    """The reward of every answer: the safety RM's for unsafe prompts, the helpfulness RM's otherwise."""
    out: list[list[float]] = [[] for _ in prompts]
    for kind in ("helpfulness", "safety"):
        rows = [i for i, p in enumerate(prompts) if (p.kind == "unsafe") == (kind == "safety")]
        if not rows:
            continue
        flat_prompts = [prompts[i].text for i in rows for _ in answers[i]]
        flat_answers = [a for i in rows for a in answers[i]]
        scores = rewards(reward_models[kind], tokenizer, flat_prompts, flat_answers)
        at = 0
        for i in rows:
            out[i] = scores[at : at + len(answers[i])]
            at += len(answers[i])
    return out


def best_of(answers: Sequence[str], scores: Sequence[float], k: int | None = None) -> tuple[str, float]:
    """The highest-reward answer among the first k (all by default), and its reward."""
    k = len(answers) if k is None else k
    if not 1 <= k <= len(answers):
        raise ValueError(f"k={k} must be between 1 and the {len(answers)} answers sampled")
    best = max(range(k), key=lambda j: scores[j])
    return answers[best], scores[best]


def reward_vs_k(scores: Sequence[Sequence[float]], ks: Sequence[int]) -> dict[int, dict[str, float]]:
    """Fig 7: the mean over prompts of the max and of the median reward among the first k samples of each."""
    out = {}
    for k in ks:
        out[k] = {"max": statistics.fmean(max(s[:k]) for s in scores),
                  "median": statistics.fmean(statistics.median(s[:k]) for s in scores)}  # fmt: skip
    return out


def gold_vs_k(world: World, prompts: Sequence[Prompt], answers: Sequence[Sequence[str]],
              scores: Sequence[Sequence[float]], ks: Sequence[int]) -> dict[int, float]:  # fmt: skip
    """The gold judge's mean score of the answer the reward model picks among k: what best-of-k really buys
    (helpfulness for helpful prompts, safety for unsafe ones)."""
    out = {}
    for k in ks:
        picked = [best_of(a, s, k)[0] for a, s in zip(answers, scores)]
        out[k] = statistics.fmean(gold_score(world, p, a) for p, a in zip(prompts, picked))
    return out


def gold_score(world: World, prompt: Prompt, answer: str) -> float:
    """The gold judge on what the prompt is for: safety for an unsafe prompt, helpfulness otherwise."""
    criterion = "safety" if prompt.kind == "unsafe" else "helpfulness"
    return world.judge.score(criterion, [{"role": "user", "content": prompt.text}], answer)


@dataclass
class Kept:
    answer: str
    reward: float
    iteration: int


def keep_best(kept: dict[str, Kept], prompts: Sequence[Prompt], answers: Sequence[Sequence[str]],
              scores: Sequence[Sequence[float]], iteration: int) -> dict[str, Kept]:  # fmt: skip
    """The best answer per prompt over this iteration's samples and every earlier iteration's kept answer."""
    merged = dict(kept)
    for p, a, s in zip(prompts, answers, scores):
        answer, reward = best_of(a, s)
        if p.id not in merged or reward > merged[p.id].reward:
            merged[p.id] = Kept(answer, reward, iteration)
    return merged


def rejection_iteration(profile, out_dir, previous: Path, reward_folders: dict[str, Path], iteration: int,
                        k: int, temperature: float) -> Path:  # fmt: skip
    """One iteration: sample k answers per training prompt from the previous model (SFT for RLHF-V1) at the
    temperature, keep the best per prompt over this and every earlier iteration, fine-tune the previous model on
    them. Writes out_dir/model, kept.jsonl, metrics.jsonl and report.json."""
    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..evaluation import chat_prompts
    from ..tokenizer import Tokenizer
    from .reward import load_reward_model
    from .sft import finetune

    out, previous = Path(out_dir), Path(previous)
    settings, seed = profile.rejection, profile.world.seed + iteration
    world = World(profile.world)
    tokenizer_model = previous / "model" / "tokenizer.model"
    tokenizer = Tokenizer(tokenizer_model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_checkpoint(previous / "model", device=device).eval()
    rms = {k: load_reward_model(f, device) for k, f in reward_folders.items()}
    prompts = chat_prompts(world, "train")
    answers = sample_answers(model, tokenizer, prompts, k, temperature, seed=seed)
    scores = score_answers(rms, tokenizer, prompts, answers)
    kept = load_kept(previous / "kept.jsonl") if (previous / "kept.jsonl").is_file() else {}
    kept = keep_best(kept, prompts, answers, scores, iteration)
    by_id = {p.id: p for p in prompts}
    dialogs = [[{"role": "user", "content": by_id[i].text}, {"role": "assistant", "content": k.answer}]
               for i, k in sorted(kept.items()) if k.answer]  # fmt: skip
    torch.manual_seed(seed)
    model.train()
    finetune(model, tokenizer, dialogs, settings.epochs, settings.batch_size, settings.lr, profile.sft.seq_len, out,
             seed=seed, desc=f"rejection sampling V{iteration} [{profile.name}]",
             precision=profile.precision)  # fmt: skip
    save_checkpoint(model.cpu().float(), out / "model", tokenizer_model=tokenizer_model, overwrite=True)
    save_kept(kept, out / "kept.jsonl")
    gold = [gold_score(world, by_id[i], k.answer) for i, k in kept.items()]
    report = {"iteration": iteration, "prompts": len(prompts), "k": k, "temperature": temperature,
              "kept_from_this_iteration": sum(k.iteration == iteration for k in kept.values()),
              "kept_gold_mean": statistics.fmean(gold),
              "sampled_gold_mean": statistics.fmean(gold_score(world, p, a) for p, a_list in zip(prompts, answers)
                                                    for a in a_list)}  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return out / "model"


def save_kept(kept: dict[str, Kept], path) -> None:
    Path(path).write_text("".join(json.dumps({"id": i, **asdict(k)}) + "\n" for i, k in sorted(kept.items())))


def load_kept(path) -> dict[str, Kept]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return {r.pop("id"): Kept(**r) for r in rows}


def build_curves(profile, out_dir, model_folder: Path, reward_folders: dict[str, Path]) -> Path:
    """Figs 7 and 8 on the held-out helpful prompts with the SFT model: the max and median reward among K samples
    against K, the gold judge's score of the best-of-K pick against K, and the max reward against temperature.
    Writes out_dir/curves.json."""
    from ..checkpoint import load_checkpoint
    from ..evaluation import HELPFUL_EVAL_KINDS
    from ..tokenizer import Tokenizer
    from .reward import load_reward_model

    out, settings, seed = Path(out_dir), profile.rejection, profile.world.seed
    world = World(profile.world)
    tokenizer = Tokenizer(Path(model_folder) / "tokenizer.model")
    model = load_checkpoint(model_folder).eval()
    rms = {k: load_reward_model(f) for k, f in reward_folders.items()}
    prompts = [p for p in world.prompts(split="heldout") if p.kind in HELPFUL_EVAL_KINDS]
    ks = list(settings.curve_ks)
    answers = sample_answers(model, tokenizer, prompts, max(ks), settings.temperature, seed=seed)
    scores = score_answers(rms, tokenizer, prompts, answers)
    curves = {"prompts": len(prompts), "temperature": settings.temperature,
              "reward_vs_k": {str(k): v for k, v in reward_vs_k(scores, ks).items()},
              "gold_vs_k": {str(k): v for k, v in gold_vs_k(world, prompts, answers, scores, ks).items()},
              "by_temperature": {}}  # fmt: skip
    k_t = [k for k in ks if k <= settings.k]
    for n, t in enumerate(settings.curve_temperatures):
        a = sample_answers(model, tokenizer, prompts, max(k_t), t, seed=seed + 100 + n)
        s = score_answers(rms, tokenizer, prompts, a)
        curves["by_temperature"][f"{t:g}"] = {"reward_vs_k": {str(k): v for k, v in reward_vs_k(s, k_t).items()},
                                              "gold_vs_k": {str(k): v for k, v in gold_vs_k(world, prompts, a, s,
                                                                                            k_t).items()}}  # fmt: skip
    # K and temperature for the iterations, chosen on these held-out prompts: the best gold score of the pick,
    # among K >= 2 (with one sample there is nothing to reject); ties go to the smaller K
    options = [(v["gold_vs_k"][str(k)], -k, float(t)) for t, v in curves["by_temperature"].items() for k in k_t
               if k >= 2]  # fmt: skip
    gold, minus_k, temperature = max(options)
    curves["chosen"] = {"k": -minus_k, "temperature": temperature, "gold": gold}
    (out / "curves.json").write_text(json.dumps(curves, indent=1) + "\n")
    return out / "curves.json"
