"""`llama2-minimal pipeline --profile ci`: every stage runs, the results table and results.json are written, and
each stage's effect goes the right way."""

import json
import subprocess
import sys

import pytest

from llama2_minimal.pipeline import format_table


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    result = subprocess.run([sys.executable, "-m", "llama2_minimal", "pipeline", "--profile", "ci", "--out", str(out)],
                            capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout, json.loads((out / "results.json").read_text())


def test_the_pipeline_prints_one_table_and_writes_results_beside_the_checkpoints(run):
    out, stdout, results = run
    assert list(results) == ["world", "tokenizer", "pretrain", "pretrain_uncleaned", "base"]
    assert format_table(results) in stdout
    runs = sorted(p.name.split("-")[0] for p in (out / "ci").iterdir() if p.is_dir())
    assert runs == ["pretrain", "pretrain", "tokenizer"]
    assert all((p / "artifact.json").is_file() for p in (out / "ci").iterdir() if p.is_dir())


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
    assert json.loads((out / "results.json").read_text())["pretrain"]["seconds"] < 5.0  # nothing trained again
