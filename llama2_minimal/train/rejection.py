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


def score_samples(reward_models: dict[str, RewardModel], tokenizer, prompts: Sequence[Prompt],
                  answers: Sequence[Sequence[str]]) -> list[list[float]]:  # fmt: skip
    """The reward of every sampled answer: the safety RM's for unsafe prompts, the helpfulness RM's otherwise.
    (evaluation.score_answers is the gold judge's verdict on answers; this is the reward models'.)"""
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


def groups_of(n: int, k: int) -> list[range]:
    """The n // k disjoint groups of k consecutive samples among n: best-of-k measured on each group and averaged
    is the expected value of best-of-k, estimated from all n samples rather than from the first k alone."""
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the {n} samples drawn")
    return [range(g * k, (g + 1) * k) for g in range(n // k)]


def best_of_k_per_prompt(scores: Sequence[Sequence[float]], gold: Sequence[Sequence[float]],
                         k: int) -> dict[str, list[float]]:  # fmt: skip
    """For each prompt, over the disjoint groups of k of its samples (groups_of), the mean of:
    max       the highest reward in the group (what best-of-k keeps, in the reward model's eyes: Fig 7's upper curve)
    median    the group's median reward (Fig 7's lower curve)
    pick      the gold judge's score of the reward model's pick (what best-of-k really buys)
    oracle    the best gold score in the group (the judge's own pick: the ceiling of any selector)
    At k = 1 pick and oracle are both the mean gold score of one sample."""
    out: dict[str, list[float]] = {"max": [], "median": [], "pick": [], "oracle": []}
    for s, g in zip(scores, gold, strict=True):
        groups = groups_of(len(s), k)
        picks = [max(group, key=lambda j: s[j]) for group in groups]
        out["max"].append(statistics.fmean(s[j] for j in picks))
        out["median"].append(statistics.fmean(statistics.median(s[j] for j in group) for group in groups))
        out["pick"].append(statistics.fmean(g[j] for j in picks))
        out["oracle"].append(statistics.fmean(max(g[j] for j in group) for group in groups))
    return out


def gold_score(world: World, prompt: Prompt, answer: str) -> float:
    """The gold judge on what the prompt is for: safety for an unsafe prompt, helpfulness otherwise."""
    criterion = "safety" if prompt.kind == "unsafe" else "helpfulness"
    return world.judge.score(criterion, [{"role": "user", "content": prompt.text}], answer)


def curve(world: World, prompts: Sequence[Prompt], answers: Sequence[Sequence[str]],
          scores: Sequence[Sequence[float]], ks: Sequence[int], seed: int = 0) -> dict:  # fmt: skip
    """Best-of-k on these samples for each k: {"reward_vs_k": {k: {max, median}}, "gold_vs_k": {k: gold of the RM's
    pick}, "oracle_vs_k": {k: gold of the judge's pick}, "gold_gain_vs_k1": {k: the pick's gold minus one sample's,
    with its 95% bootstrap interval over prompts}}; keys are strings, as in curves.json."""
    from ..stats import paired_difference

    gold = [[gold_score(world, p, a) for a in row] for p, row in zip(prompts, answers)]
    rows = {k: best_of_k_per_prompt(scores, gold, k) for k in ks}
    one = dict(zip((p.id for p in prompts), best_of_k_per_prompt(scores, gold, 1)["pick"]))
    out: dict = {"reward_vs_k": {}, "gold_vs_k": {}, "oracle_vs_k": {}, "gold_gain_vs_k1": {}}
    for k, row in rows.items():
        out["reward_vs_k"][str(k)] = {"max": statistics.fmean(row["max"]), "median": statistics.fmean(row["median"])}
        out["gold_vs_k"][str(k)] = statistics.fmean(row["pick"])
        out["oracle_vs_k"][str(k)] = statistics.fmean(row["oracle"])
        out["gold_gain_vs_k1"][str(k)] = paired_difference(dict(zip((p.id for p in prompts), row["pick"])), one,
                                                           seed=seed)  # fmt: skip
    return out


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


def rescore(kept: dict[str, Kept], rms: dict, tokenizer, prompts: Sequence[Prompt]) -> dict[str, Kept]:
    """The kept answers with their rewards by these reward models: the best of the earlier iterations competes with
    this one's samples on one scale, also when the reward models were retrained in between (§3.2.1's batches)."""
    if not kept:
        return {}
    by_id = {p.id: p for p in prompts}
    ids = sorted(i for i in kept if i in by_id)
    scores = score_samples(rms, tokenizer, [by_id[i] for i in ids], [[kept[i].answer] for i in ids])
    return {i: Kept(kept[i].answer, row[0], kept[i].iteration) for i, row in zip(ids, scores)}


def rejection_iteration(profile, out_dir, previous: Path, reward_folders: dict[str, Path], iteration: int,
                        k: int, temperature: float, control: bool = False) -> Path:  # fmt: skip
    """One iteration: sample k answers per training prompt from the previous model (SFT for RLHF-V1) at the
    temperature, keep the best per prompt over this and every earlier iteration, fine-tune the previous model on
    them. Writes out_dir/model, kept.jsonl, metrics.jsonl and report.json.

    control=True is the control of RLHF-V1: one answer per prompt at the same temperature, kept whatever its
    reward, fine-tuned on in the same way (k must be 1). What V1 gains over it is what the selection buys; what it
    gains over SFT includes fine-tuning on the model's own samples, which the control isolates."""
    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..evaluation import chat_prompts
    from ..tokenizer import Tokenizer
    from .reward import load_reward_model
    from .sft import finetune

    if control and k != 1:
        raise ValueError(f"the control samples one answer per prompt: k must be 1, got {k}")
    out, previous = Path(out_dir), Path(previous)
    settings, seed = profile.rejection, profile.world.seed + iteration
    world = World(profile.world)
    tokenizer_model = previous / "model" / "tokenizer.model"
    tokenizer = Tokenizer(tokenizer_model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_checkpoint(previous / "model", device=device).eval()
    rms = {name: load_reward_model(f, device) for name, f in reward_folders.items()}
    prompts = chat_prompts(world, "train")
    answers = sample_answers(model, tokenizer, prompts, k, temperature, seed=seed)
    scores = score_samples(rms, tokenizer, prompts, answers)
    kept = load_kept(previous / "kept.jsonl") if (previous / "kept.jsonl").is_file() and not control else {}
    kept = rescore(kept, rms, tokenizer, prompts)  # an iteration's reward models may be newer than the kept rewards
    kept = keep_best(kept, prompts, answers, scores, iteration)
    by_id = {p.id: p for p in prompts}
    dialogs = [[{"role": "user", "content": by_id[i].text}, {"role": "assistant", "content": x.answer}]
               for i, x in sorted(kept.items()) if x.answer]  # fmt: skip
    name = "the K = 1 control" if control else f"V{iteration}"
    torch.manual_seed(seed)
    model.train()
    finetune(model, tokenizer, dialogs, settings.epochs, settings.batch_size, settings.lr, profile.sft.seq_len, out,
             seed=seed, desc=f"rejection sampling, {name} [{profile.name}]",
             precision=profile.precision)  # fmt: skip
    save_checkpoint(model.cpu().float(), out / "model", tokenizer_model=tokenizer_model, overwrite=True)
    save_kept(kept, out / "kept.jsonl")
    gold = [gold_score(world, by_id[i], x.answer) for i, x in kept.items()]
    report = {"iteration": iteration, "control": control, "prompts": len(prompts), "k": k,
              "temperature": temperature, "fine_tuned_on": len(dialogs),
              "kept_from_this_iteration": sum(x.iteration == iteration for x in kept.values()),
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
    """Figs 7 and 8 for the SFT model on the helpful prompts (facts, sums, stories, borderline questions), and the
    choice of K and T for the iterations. Writes out_dir/curves.json:

    validation   at each temperature of the grid, `k` samples per validation prompt: best-of-k's reward and the
                 gold judge's score of its pick (Fig 8, and the choice)
    chosen       the (K >= 2, T) whose pick scores best with the judge on validation; ties go to the smaller K
    test         at the chosen T, max(curve_ks) samples per test prompt: Fig 7 (max and median reward against K),
                 the gold of the RM's pick and of the judge's own pick, and the pick's gain over one sample with its
                 95% interval
    test_hottest the same at the grid's highest temperature, up to `k` samples: where over-optimisation shows

    Every figure is best-of-K averaged over the disjoint groups of K among the samples (best_of_k_per_prompt).
    The judge chooses rather than the reward model, because by the reward the largest K always wins, blind spots
    included; it chooses on validation, so the test figures and the models judged on test are not fitted to it."""
    from ..checkpoint import load_checkpoint
    from ..evaluation import HELPFUL_EVAL_KINDS
    from ..tokenizer import Tokenizer
    from .reward import load_reward_model

    out, settings, seed = Path(out_dir), profile.rejection, profile.world.seed
    world = World(profile.world)
    tokenizer = Tokenizer(Path(model_folder) / "tokenizer.model")
    model = load_checkpoint(model_folder).eval()
    rms = {name: load_reward_model(f) for name, f in reward_folders.items()}

    def helpful(split):
        return [p for p in world.prompts(split=split) if p.kind in HELPFUL_EVAL_KINDS]

    def measure(prompts, n, temperature, ks, sampling_seed):
        answers = sample_answers(model, tokenizer, prompts, n, temperature, seed=sampling_seed)
        scores = score_samples(rms, tokenizer, prompts, answers)
        return {"prompts": len(prompts), "temperature": temperature, "samples": n,
                **curve(world, prompts, answers, scores, ks, seed)}  # fmt: skip

    ks = sorted(settings.curve_ks)
    if ks[0] != 1:
        raise ValueError(f"curve_ks must start at 1 (one sample, the baseline of every gain), got {ks}")
    k_t = [k for k in ks if k <= settings.k]
    validation, test = helpful("validation"), helpful("test")
    curves: dict = {"validation": {}}
    for n, t in enumerate(settings.curve_temperatures):
        curves["validation"][f"{t:g}"] = measure(validation, max(k_t), t, k_t, seed + 100 + n)
    # Rejection sampling needs two samples to reject one, so the choice is among K >= 2 (K = 1 is the control)
    options = [(v["gold_vs_k"][str(k)], -k, float(t)) for t, v in curves["validation"].items() for k in k_t
               if k >= 2]  # fmt: skip
    gold, minus_k, temperature = max(options)
    curves["chosen"] = {"k": -minus_k, "temperature": temperature, "validation_gold": gold,
                        "validation_prompts": len(validation)}  # fmt: skip
    curves["test"] = measure(test, max(ks), temperature, ks, seed)
    hottest = max(settings.curve_temperatures)
    curves["test_hottest"] = measure(test, max(k_t), hottest, k_t, seed + 200)
    (out / "curves.json").write_text(json.dumps(curves, indent=1) + "\n")
    return out / "curves.json"
