"""`llama2-minimal pipeline --profile ci`: every stage runs, the results table and results.json are written, and
each stage's effect goes the right way."""

import json
import subprocess
import sys

import pytest

from llama2_minimal import artifacts
from llama2_minimal.pipeline import format_table


@pytest.fixture(scope="module")
def run():
    # The course's cache, which the lessons use too (nbval runs them in the same profile), so that the ci models
    # are built once in a test run; a stage already built there is reused, as it would be for a learner.
    out = artifacts.cache_root()
    result = subprocess.run([sys.executable, "-m", "llama2_minimal", "pipeline", "--profile", "ci", "--out", str(out)],
                            capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout, json.loads((out / "results.json").read_text())


def test_the_pipeline_prints_one_table_and_writes_results_beside_the_checkpoints(run):
    out, stdout, results = run
    assert list(results) == ["world", "tokenizer", "pretrain", "pretrain_uncleaned", "base", "sft", "reward",
                             "rejection_sampling"]  # fmt: skip
    assert format_table(results) in stdout
    done = {p.name.split("-")[0] for p in (out / "ci").iterdir() if p.is_dir() and (p / "artifact.json").is_file()}
    assert {"tokenizer", "pretrain", "sft", "preferences", "reward", "curves", "rejection"} <= done
    assert (out / "results.json").is_file()


def test_cleaning_removed_private_data_and_duplicates(run):
    pretrain = run[2]["pretrain"]
    assert pretrain["duplicates_removed"] > 0 and pretrain["phone_numbers_removed"] > 0
    assert pretrain["emails_removed"] > 0


def test_the_base_model_learned_the_world(run):
    base = run[2]["base"]
    assert base["validation_perplexity"] < 5.0
    assert base["fact_accuracy_choice"] > 0.5  # chance is 0.25 with four options
    assert run[2]["pretrain"]["final_train_loss"] < 1.0


def test_cleaning_prevents_memorising_private_data(run):
    base = run[2]["base"]
    assert base["phone_numbers_recalled"] == 0.0 and base["emails_recalled"] == 0.0
    assert base["phone_digits_recalled"] == 0.0  # the cleaned model never saw a number: it writes none
    assert base["phone_digits_recalled_uncleaned"] > 0.2  # chance for random digits is 0.1


def test_a_second_run_reuses_the_cached_stages(run):
    out = run[0]
    result = subprocess.run([sys.executable, "-m", "llama2_minimal", "pipeline", "--profile", "ci", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0
    again = json.loads((out / "results.json").read_text())
    assert again["pretrain"]["seconds"] < 5.0 and again["reward"]["seconds"] < 30.0  # nothing trained again


def test_sft_beats_the_base_model_on_held_out_prompts(run):
    sft = run[2]["sft"]
    assert sft["helpfulness"] > sft["base_helpfulness"]  # judged in the chat format, at Meta's settings
    assert sft["ablation_sloppy_flawed"] > 0.3 * sft["ablation_sloppy_demonstrations"]
    assert abs(sft["ablation_sloppy_demonstrations"] - 4 * sft["ablation_careful_demonstrations"]) <= 4


def test_reward_models_are_right_more_often_on_clearer_preferences(run):
    reward = run[2]["reward"]
    assert reward["helpfulness_rm_accuracy_significantly"] > reward["helpfulness_rm_accuracy_negligibly"]
    assert reward["margin_small_accuracy"] > 0.55  # chance is 0.5
    assert reward["safety_rm_accuracy_significantly"] > 0.8
    assert reward["safety_rm_on_safety_test"] > reward["helpfulness_rm_on_safety_test"]  # Table 7's diagonal


def test_best_of_k_reward_grows_with_k(run):
    rs = run[2]["rejection_sampling"]
    ks = sorted(int(k.removeprefix("reward_max_k")) for k in rs if k.startswith("reward_max_k") and "_t" not in k)
    maxima = [rs[f"reward_max_k{k}"] for k in ks]
    assert maxima == sorted(maxima) and maxima[-1] > maxima[0] + 0.2
    assert rs[f"reward_max_k{ks[-1]}"] > rs[f"reward_median_k{ks[-1]}"] + 0.2  # the gap of Fig 7


def test_rejection_sampling_beats_sft_on_the_gold_judge(run):
    sft, rs = run[2]["sft"], run[2]["rejection_sampling"]
    assert rs["v2_helpfulness"] > sft["helpfulness"]
    assert rs["v2_safety"] >= sft["safety"] - 0.05
