"""`llama2-minimal pipeline`: every stage of the recipe that exists, on the built-in toy world, ending with one
results table (stage, metric, value) and DIR/results.json ({stage: {metric: value}}) beside the checkpoints.

Stages so far: world, tokenizer, pretraining (on the cleaned corpus, and on the uncleaned one for the
memorisation probe), the evaluation of the base model, supervised fine-tuning (with the data-quality ablation),
reward models (helpfulness and safety; margins; the data lever; the paper's head-only design beside the course's)
and rejection sampling (best-of-K curves, K and T chosen on validation prompts, the iterations RLHF-V1 and V2 and
V1's K = 1 control). Chat models are judged on the test prompts by the gold judge, at Meta's chat sampling settings
(temperature 0.6, top-p 0.9) and greedily; every comparison of two carries its 95% bootstrap interval over prompts.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import artifacts
from .profiles import PROFILES, get_profile


def _read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def run_pipeline(profile_name: str | None = None, out: str | os.PathLike | None = None, log=print,
                 seed: int | None = None, precision: str | None = None) -> dict:
    from .checkpoint import load_checkpoint
    from .evaluation import evaluate_base, memorisation
    from .tokenizer import Tokenizer
    from .train.pretrain import corpus_texts, pretraining_rows
    from .world import World

    profile = get_profile(profile_name, seed, precision)
    root = Path(out) if out is not None else None
    results: dict[str, dict] = {}
    where = artifacts.cache_root(root) / profile.name
    trained_in = artifacts.training_precision(profile)
    log(f"llama2-minimal pipeline, profile {profile.name}, seed {profile.world.seed}, training in {trained_in} "
        f"({profile.precision}), output in {where}")

    def timed(stage: str, fn):
        start = time.perf_counter()
        results[stage] = fn()
        results[stage]["seconds"] = round(time.perf_counter() - start, 1)

    world = World(profile.world)
    texts, report = corpus_texts(profile, clean=True)

    def world_stage():
        return {"documents": report["documents_in"], "characters": sum(len(t) for t in texts),
                "prompts_train": len(world.prompts(split="train")),
                "prompts_validation": len(world.prompts(split="validation")),
                "prompts_test": len(world.prompts(split="test"))}  # fmt: skip

    timed("world", world_stage)

    def tokenizer_stage():
        tok = Tokenizer(artifacts.tokenizer_file(profile, root))
        n_tokens = sum(len(tok.encode(t, bos=False)) for t in texts)
        return {"vocab_size": tok.n_words, "characters_per_token": sum(len(t) for t in texts) / n_tokens}

    timed("tokenizer", tokenizer_stage)

    folders = {}

    def pretrain_stage(clean: bool):
        folder = folders[clean] = artifacts.pretrained_folder(profile, clean, root)
        metrics, data = _read_metrics(folder), json.loads((folder / "data.json").read_text())
        row = {"final_train_loss": metrics[-1]["loss"], "tokens_seen": metrics[-1]["tokens"],
               "steps": metrics[-1]["step"] + 1}  # fmt: skip
        if clean:
            row.update({k: data[k] for k in ("duplicates_removed", "phone_numbers_removed", "emails_removed")})
        return row

    timed("pretrain", lambda: pretrain_stage(True))
    timed("pretrain_uncleaned", lambda: pretrain_stage(False))

    def base_stage():
        tokenizer_path = artifacts.tokenizer_file(profile, root)
        model = load_checkpoint(folders[True] / "model").eval()
        _, validation, _ = pretraining_rows(profile, tokenizer_path, clean=True)
        tokenizer = Tokenizer(tokenizer_path)
        row = evaluate_base(model, tokenizer, world, validation)
        raw = load_checkpoint(folders[False] / "model").eval()
        row.update({f"{k}_uncleaned": v for k, v in memorisation(raw, tokenizer, world).items()})
        row["parameters"] = model.num_parameters()
        return row

    timed("base", base_stage)
    tokenizer = Tokenizer(artifacts.tokenizer_file(profile, root))
    per_prompt: dict[str, dict] = {}  # the chat models' per-prompt scores, judged once, compared in later stages
    timed("sft", lambda: sft_stage(profile, world, tokenizer, root, folders[True], per_prompt))
    timed("reward", lambda: reward_stage(profile, root))
    timed("rejection_sampling", lambda: rejection_stage(profile, world, tokenizer, root, per_prompt["sft"]))

    target = (root or artifacts.cache_root() / profile.name) / results_name(profile)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, target)
    log(format_table(results))
    log(f"results written to {target}")
    return results


def results_name(profile) -> str:
    """results.json for the profile's own seed and precision; results-seedN.json for another seed, results-fp32.json
    (or -bf16, -auto) for another precision, results-seedN-fp32.json for both (all can sit in one folder)."""
    default = PROFILES[profile.name]
    parts = [] if profile.world.seed == default.world.seed else [f"seed{profile.world.seed}"]
    parts += [] if profile.precision == default.precision else [profile.precision]
    return "-".join(["results", *parts]) + ".json"


def judged_chat(model, tokenizer, world, profile, prefix: str = "") -> tuple[dict, dict]:
    """Held-out helpfulness and safety by the gold judge: sampled at Meta's settings, and greedy; and the sampled
    answers' per-prompt scores, for the comparisons' intervals."""
    from .evaluation import evaluate_chat, judge_chat

    sampled, per_prompt = judge_chat(model, tokenizer, world, samples=profile.eval_samples, seed=profile.world.seed)
    greedy = evaluate_chat(model, tokenizer, world, temperature=0.0)
    row = {f"{prefix}{k}": v for k, v in sampled.items()}
    row[f"{prefix}helpfulness_greedy"] = greedy["helpfulness"]
    row[f"{prefix}safety_greedy"] = greedy["safety"]
    return row, per_prompt


def compare(row: dict, name: str, a: dict, b: dict, seed: int = 0) -> None:
    """Add model a minus model b (per-prompt scores from judged_chat) to the row, in helpfulness and safety, each
    with its 95% bootstrap interval over prompts: NAME_helpfulness, NAME_helpfulness_low, ..._high."""
    from .stats import paired_difference

    for criterion in ("helpfulness", "safety"):
        d = paired_difference(a[criterion], b[criterion], seed=seed)
        row[f"{name}_{criterion}"], row[f"{name}_{criterion}_low"], row[f"{name}_{criterion}_high"] = (
            d["difference"], d["low"], d["high"])  # fmt: skip


def sft_stage(profile, world, tokenizer, root, base_folder: Path, per_prompt: dict) -> dict:
    """The base and SFT models (and the data-quality ablation) judged; the SFT model's per-prompt scores go to
    per_prompt["sft"], for rejection sampling's comparisons."""
    from .checkpoint import load_checkpoint

    base = load_checkpoint(base_folder / "model").eval()
    row, base_scores = judged_chat(base, tokenizer, world, profile, "base_")
    folder = artifacts.sft_folder(profile, root=root)
    sft_row, sft_scores = judged_chat(load_checkpoint(folder / "model").eval(), tokenizer, world, profile)
    row.update(sft_row)
    compare(row, "sft_minus_base", sft_scores, base_scores, profile.world.seed)
    per_prompt["sft"] = sft_scores
    ablations = {}
    data = json.loads((folder / "data.json").read_text())
    row["demonstrations"] = data["demonstrations"]
    row["final_train_loss"] = _read_metrics(folder)[-1]["loss"]
    for name, variant in (("careful", artifacts.CAREFUL_SMALL_SFT), ("sloppy", artifacts.SLOPPY_SFT)):
        ablation = artifacts.sft_folder(profile, root=root, **variant)
        scores, ablations[name] = judged_chat(load_checkpoint(ablation / "model").eval(), tokenizer, world, profile)
        data = json.loads((ablation / "data.json").read_text())
        row[f"ablation_{name}_demonstrations"] = data["demonstrations"]
        row[f"ablation_{name}_flawed"] = data["flawed"]
        row[f"ablation_{name}_helpfulness"] = scores["helpfulness"]
        row[f"ablation_{name}_safety"] = scores["safety"]
    compare(row, "careful_minus_sloppy", ablations["careful"], ablations["sloppy"], profile.world.seed)
    return row


def reward_stage(profile, root) -> dict:
    from .world import STRENGTHS

    data = json.loads((artifacts.preferences_folder(profile, root) / "data.json").read_text())
    row = {k: data[k] for k in ("pairs", "helpfulness_train", "safety_train", "helpfulness_test", "safety_test")}
    for b, share in data["safety_bins"].items():
        row[f"safety_bin_{b.replace(' ', '_').replace(',', '')}"] = share

    def report(kind, **variant):
        return json.loads((artifacts.reward_folder(profile, kind, root=root, **variant) / "report.json").read_text())

    for kind in ("helpfulness", "safety"):  # Table 7 (both RMs on both test sets) and Table 8 (by strength)
        rm = report(kind)
        for test in ("helpfulness", "safety"):
            row[f"{kind}_rm_on_{test}_test"] = rm[f"test_{test}"]["accuracy"]
        own = rm[f"test_{kind}"]
        for s in STRENGTHS:
            row[f"{kind}_rm_accuracy_{s.split()[0]}"] = own[f"accuracy_{s.split()[0]}"]
        row[f"{kind}_rm_judge_agreement"] = own["judge_agreement"]
        for probe in ("right_over_wrong", "over_duplicated", "over_run_on"):  # held-out facts (train/reward.py)
            row[f"{kind}_rm_{probe}"] = rm["probes"][probe]
    gate = report("safety")["safety_gate"]  # the paper: precision 0.89, recall 0.55
    row["safety_gate_precision"], row["safety_gate_recall"] = gate["precision"], gate["recall"]
    head = report("helpfulness", reads_predictions=False)  # the paper's design: the head alone (lesson 09)
    row["head_only_rm_on_helpfulness_test"] = head["test_helpfulness"]["accuracy"]
    for probe in ("right_over_wrong", "over_duplicated", "over_run_on"):
        row[f"head_only_rm_{probe}"] = head["probes"][probe]
    for margins in ("none", "small", "large"):  # Table 28
        rm = report("helpfulness", margins=margins)["test_helpfulness"]
        row[f"margin_{margins}_accuracy"] = rm["accuracy"]
        row[f"margin_{margins}_accuracy_significantly"] = rm["accuracy_significantly"]
    for fraction in profile.reward.data_fractions:  # Fig 6: more data, more accurate
        row[f"data_{fraction:g}_accuracy"] = report("helpfulness", fraction=fraction)["test_helpfulness"]["accuracy"]
    return row


def rejection_stage(profile, world, tokenizer, root, sft_scores: dict) -> dict:
    """Figs 7 and 8 and the choice of K and T (validation prompts), best-of-K on test prompts with its controls, and
    RLHF-V1, its K = 1 control and V2 judged and compared with the SFT model (sft_scores: its per-prompt scores from
    sft_stage) and with each other."""
    from .checkpoint import load_checkpoint

    curves = artifacts.best_of_k_curves(profile, root)
    chosen = curves["chosen"]
    row = {"chosen_k": chosen["k"], "chosen_temperature": chosen["temperature"],
           "chosen_validation_gold": chosen["validation_gold"], "curve_test_prompts": curves["test"]["prompts"],
           "curve_temperature": curves["test"]["temperature"]}  # fmt: skip
    test = curves["test"]
    for k, v in test["reward_vs_k"].items():  # Fig 7, on test prompts at the chosen temperature
        row[f"reward_max_k{k}"], row[f"reward_median_k{k}"] = v["max"], v["median"]
    for k in test["gold_vs_k"]:  # what the pick is worth to the judge; the judge's own pick is the ceiling
        row[f"gold_best_of_k{k}"] = test["gold_vs_k"][k]
        row[f"oracle_best_of_k{k}"] = test["oracle_vs_k"][k]
        if k != "1":
            gain = test["gold_gain_vs_k1"][k]
            row[f"gold_gain_k{k}"], row[f"gold_gain_k{k}_low"], row[f"gold_gain_k{k}_high"] = (
                gain["difference"], gain["low"], gain["high"])  # fmt: skip
    hottest = curves["test_hottest"]
    row["hottest_temperature"] = hottest["temperature"]
    for k in hottest["gold_vs_k"]:  # the grid's highest temperature: over-optimisation
        row[f"hottest_reward_max_k{k}"] = hottest["reward_vs_k"][k]["max"]
        row[f"hottest_gold_best_of_k{k}"] = hottest["gold_vs_k"][k]
    for t, v in curves["validation"].items():  # Fig 8, on validation prompts
        k = str(v["samples"])
        row[f"validation_reward_max_k{k}_t{t}"] = v["reward_vs_k"][k]["max"]
        row[f"validation_gold_best_of_k{k}_t{t}"] = v["gold_vs_k"][k]
    models = {"sft": sft_scores}

    def judge(name, folder):
        model = load_checkpoint(folder / "model").eval()
        scores, models[name] = judged_chat(model, tokenizer, world, profile)
        report = json.loads((folder / "report.json").read_text())
        for key in ("helpfulness", "safety", "helpfulness_greedy", "safety_greedy", "false_refusal_rate"):
            row[f"{name}_{key}"] = scores[key]
        row[f"{name}_kept_gold_mean"] = report["kept_gold_mean"]
        row[f"{name}_sampled_gold_mean"] = report["sampled_gold_mean"]

    judge("control", artifacts.rejection_folder(profile, 1, root, control=True))
    compare(row, "control_minus_sft", models["control"], models["sft"], profile.world.seed)
    for iteration in range(1, profile.rejection.iterations + 1):
        if iteration == 2 and profile.reward.iterative:  # §3.2.1: a new batch on V1's samples, RMs retrained
            start = time.perf_counter()
            row.update(iterative_reward_rows(profile, root))
            row["iterative_seconds"] = round(time.perf_counter() - start, 1)
        judge(f"v{iteration}", artifacts.rejection_folder(profile, iteration, root))
        previous = "sft" if iteration == 1 else f"v{iteration - 1}"
        compare(row, f"v{iteration}_minus_{previous}", models[f"v{iteration}"], models[previous], profile.world.seed)
        if iteration == 1:
            compare(row, "v1_minus_control", models["v1"], models["control"], profile.world.seed)
        else:
            compare(row, f"v{iteration}_minus_sft", models[f"v{iteration}"], models["sft"], profile.world.seed)
    return row


def iterative_reward_rows(profile, root) -> dict:
    """§3.2.1-3.2.2's loop: batch 2 of preference pairs, collected on RLHF-V1's samples, and the accuracy of each
    reward model (batch 1's, and batch 1's trained one more epoch on batch 2, which V2 uses) on each batch's test
    pairs: how far the old model drifts on the new model's answers, and what the new batch recovers. Keys
    iterative_*; each accuracy comes with its pairs' count (..._pairs) for its sampling error."""
    from .tokenizer import Tokenizer
    from .train.reward import accuracy, load_pairs, load_reward_model, pair_rewards, test_pairs

    second = artifacts.preferences_folder(profile, root, batch=2)
    data = json.loads((second / "data.json").read_text())
    row = {f"iterative_batch2_{k}": data[k] for k in ("pairs", "helpfulness_train", "safety_train",
                                                      "helpfulness_test", "safety_test")}  # fmt: skip
    tests = {b: test_pairs(load_pairs(artifacts.preferences_folder(profile, root, b) / "pairs.jsonl")) for b in (1, 2)}
    for batches in (1, 2):
        for kind in ("helpfulness", "safety"):
            folder = artifacts.reward_folder(profile, kind, root=root, batches=batches) / "model"
            model, tokenizer = load_reward_model(folder), Tokenizer(folder / "tokenizer.model")
            for batch, test in tests.items():
                scored = accuracy(test[kind], pair_rewards(model, tokenizer, test[kind]))
                name = f"iterative_rm{batches}_{kind}_on_batch{batch}"
                row[name], row[f"{name}_pairs"] = scored["accuracy"], scored["pairs"]
    return row


def format_table(results: dict) -> str:
    rows = [(stage, metric, value) for stage, metrics in results.items() for metric, value in metrics.items()]
    width = max(len(f"{s}") for s, _, _ in rows), max(len(m) for _, m, _ in rows)
    lines = [f"{'stage':<{width[0]}}  {'metric':<{width[1]}}  value", "-" * (width[0] + width[1] + 12)]
    for stage, metric, value in rows:
        shown = f"{value:,}" if isinstance(value, int) else f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{stage:<{width[0]}}  {metric:<{width[1]}}  {shown}")
    return "\n".join(lines)


# --- the effects the tests assert on trained models -------------------------------------------------------------
# Each is a quantity of results.json and the bound the course says it passes. tests/test_pipeline.py asserts each in
# `ci`; benchmarks/seed_spread.py builds `ci` under several seeds and thread counts and reports how far each margin
# (the quantity's distance past its bound, positive when the assertion holds) moves between runs. Training is
# deterministic on one machine, not across CPUs: an assertion belongs here only where its margin holds in every run
# and its mean margin exceeds that spread.


@dataclass(frozen=True)
class Effect:
    name: str
    quantity: Callable[[dict], float]
    bound: float | Callable[[dict], float]
    direction: str  # ">" (the quantity must exceed the bound) or "<"

    def margin(self, results: dict) -> float:
        """How far the quantity is past its bound: positive when the assertion holds."""
        value = self.quantity(results)
        bound = self.bound(results) if callable(self.bound) else self.bound
        return value - bound if self.direction == ">" else bound - value


def curve_ks(rejection: dict) -> list[int]:
    """The K of the reward-vs-K curve (Fig 7) in the rejection-sampling row of results.json, smallest first."""
    names = [k for k in rejection if k.startswith("reward_max_k") and "_t" not in k]
    return sorted(int(k.removeprefix("reward_max_k")) for k in names)


def _reward(results: dict, which: str, smallest_k: bool = False) -> float:
    """The max or median reward of best-of-K at the curve's largest K (or its smallest)."""
    rs = results["rejection_sampling"]
    ks = curve_ks(rs)
    return rs[f"reward_{which}_k{ks[0] if smallest_k else ks[-1]}"]


EFFECTS = [
    Effect("pretraining's final training loss below 1.0", lambda r: r["pretrain"]["final_train_loss"], 1.0, "<"),
    Effect("base model's validation perplexity below 5", lambda r: r["base"]["validation_perplexity"], 5.0, "<"),
    Effect("base model picks the right fact of 4 above 0.5 (chance 0.25)",
           lambda r: r["base"]["fact_accuracy_choice"], 0.5, ">"),  # fmt: skip
    Effect("uncleaned model recalls phone digits above 0.2 (chance 0.1)",
           lambda r: r["base"]["phone_digits_recalled_uncleaned"], 0.2, ">"),  # fmt: skip
    Effect("SFT above base in held-out helpfulness",
           lambda r: r["sft"]["helpfulness"], lambda r: r["sft"]["base_helpfulness"], ">"),  # fmt: skip
    Effect("helpfulness RM: significantly better pairs above negligibly better (Table 8)",
           lambda r: r["reward"]["helpfulness_rm_accuracy_significantly"],
           lambda r: r["reward"]["helpfulness_rm_accuracy_negligibly"], ">"),  # fmt: skip
    Effect("safety RM above 0.8 on significantly better safety pairs",
           lambda r: r["reward"]["safety_rm_accuracy_significantly"], 0.8, ">"),  # fmt: skip
    Effect("safety RM above helpfulness RM on the safety test set (Table 7)",
           lambda r: r["reward"]["safety_rm_on_safety_test"],
           lambda r: r["reward"]["helpfulness_rm_on_safety_test"], ">"),  # fmt: skip
    Effect("helpfulness RM ranks the right value above a wrong one on test facts, above 0.75",
           lambda r: r["reward"]["helpfulness_rm_right_over_wrong"], 0.75, ">"),  # fmt: skip
    Effect("reading the predictions ranks right over wrong better than the paper's head alone, by 0.2",
           lambda r: r["reward"]["helpfulness_rm_right_over_wrong"],
           lambda r: r["reward"]["head_only_rm_right_over_wrong"] + 0.2, ">"),  # fmt: skip
    Effect("best-of-K reward: largest K above K = 1 by 0.2 (Fig 7)",
           lambda r: _reward(r, "max"), lambda r: _reward(r, "max", smallest_k=True) + 0.2, ">"),  # fmt: skip
    Effect("best-of-K reward above the median sample by 0.2 at the largest K (Fig 7's gap)",
           lambda r: _reward(r, "max"), lambda r: _reward(r, "median") + 0.2, ">"),  # fmt: skip
]
# Measured by benchmarks/seed_spread.py on `ci` (16 countries, 16 people) under seeds 0, 1, 2, and seed 0 with AVX2
# kernels (another CPU's rounding; 1 and 2 threads built identical models): every margin above held in each run and
# its mean exceeds its spread (smallest margin, spread: SFT over base +0.124, 0.078; Table 7 +0.148, 0.138).
# Again after the test split and the reward models that read predictions (2026-12-01, seeds 0, 1, 2 and seed 0 with
# AVX2 kernels, 2 threads): every margin above held in each run, its mean above its spread (smallest, spread: SFT
# over base +0.084, 0.119 (mean +0.143); right over wrong above 0.75 +0.139, 0.067; reading the predictions over the
# head alone +0.244, 0.089; Fig 7's K-gain +0.144, 0.158 (mean +0.215); Fig 7's gap +0.124, 0.170 (mean +0.205)).
# Not asserted in `ci`:
# - The helpfulness RM above chance on its test set: it held in those four runs (+0.034 to +0.120 over 0.5), but its
#   mean margin (+0.080) is below its spread (0.086), so the rule above drops it.
# - Best-of-K's pick above one sample in gold, and RLHF-V1 above its K = 1 control: the issue asks for both, and
#   neither holds beyond noise. `ci` (2026-12-01, seed 0): the pick's gain at K = 4 is +0.008 [-0.025, +0.045], V1
#   minus its control +0.038 [-0.031, +0.113]; `laptop` at its chosen T = 0.4: -0.027 [-0.062, +0.003] and -0.053
#   [-0.107, -0.005] (below). The reward models reject broken answers (at T = 1.6 the pick gains +0.117 [+0.046,
#   +0.196] in `laptop`) but prefer a fluent answer to another question about the same subject over the right one
#   (lesson 10 counts them).
# - RLHF-V1 or V2 above SFT: ties or below in both profiles.
# - Any model's safety: every model, the base model included, scores 1.0 in `ci` (its answers to unsafe requests
#   never hold what the judge counts as a violation), so an assertion on it could not fail.
