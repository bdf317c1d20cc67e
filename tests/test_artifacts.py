"""Stage outputs from the cache: built once (also when two processes ask at once), keyed by settings and code,
resumable, and never half-written."""

import multiprocessing as mp
import time

import pytest

from llama2_minimal import artifacts
from llama2_minimal.profiles import PROFILES, get_profile


def slow_build(work, log):
    with open(log, "a") as f:
        f.write("built\n")
    time.sleep(0.5)
    (work / "out.txt").write_text("done")


def ask(root, log):
    folder = artifacts.build_artifact("demo", get_profile("ci"), {"a": 1}, lambda w: slow_build(w, log), root)
    return (folder / "out.txt").read_text()


def test_two_processes_asking_at_once_build_once(tmp_path):
    log = tmp_path / "log.txt"
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(ask, [(tmp_path / "cache", log), (tmp_path / "cache", log)])
    assert results == ["done", "done"]
    assert log.read_text() == "built\n"


def test_settings_and_profile_change_the_folder(tmp_path):
    ci, laptop = get_profile("ci"), get_profile("laptop")
    a = artifacts.stage_folder("tokenizer", ci, artifacts.tokenizer_settings(ci), tmp_path)
    assert a == artifacts.stage_folder("tokenizer", ci, artifacts.tokenizer_settings(ci), tmp_path)
    assert a != artifacts.stage_folder("tokenizer", laptop, artifacts.tokenizer_settings(laptop), tmp_path)
    clean = artifacts.stage_folder("pretrain", ci, artifacts.pretrain_settings(ci, True), tmp_path)
    assert clean != artifacts.stage_folder("pretrain", ci, artifacts.pretrain_settings(ci, True, steps=5), tmp_path)
    assert a.parent.name == "ci"


def test_a_failed_build_leaves_no_artifact_and_resumes_in_its_work_folder(tmp_path):
    calls = []

    def failing(work):
        calls.append(sorted(p.name for p in work.iterdir()))
        (work / "partial.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        artifacts.build_artifact("demo", get_profile("ci"), {}, failing, tmp_path)
    folder = artifacts.stage_folder("demo", get_profile("ci"), {}, tmp_path)
    assert not folder.exists()
    folder = artifacts.build_artifact("demo", get_profile("ci"), {}, lambda w: calls.append(sorted(
        p.name for p in w.iterdir())), tmp_path)  # fmt: skip
    assert calls == [[], ["partial.txt"]]  # the second build found the first one's work to resume from
    assert (folder / artifacts.DONE).is_file()


def test_profiles_are_chosen_by_name_or_environment(monkeypatch):
    monkeypatch.setenv("LLAMA2_MINIMAL_PROFILE", "gpu")
    assert get_profile() is PROFILES["gpu"] and get_profile("ci") is PROFILES["ci"]
    monkeypatch.delenv("LLAMA2_MINIMAL_PROFILE")
    assert get_profile().name == "laptop"
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("huge")


def test_another_seed_builds_another_world_cached_apart(monkeypatch, tmp_path):
    from llama2_minimal.pipeline import results_name

    monkeypatch.delenv("LLAMA2_MINIMAL_SEED", raising=False)
    ci, other = get_profile("ci"), get_profile("ci", seed=3)
    assert other.world.seed == 3 and other.model == ci.model and other.pretrain == ci.pretrain
    folder = artifacts.stage_folder("tokenizer", ci, artifacts.tokenizer_settings(ci), tmp_path)
    assert folder != artifacts.stage_folder("tokenizer", other, artifacts.tokenizer_settings(other), tmp_path)
    assert (results_name(ci), results_name(other)) == ("results.json", "results-seed3.json")
    monkeypatch.setenv("LLAMA2_MINIMAL_SEED", "3")
    assert get_profile("ci") == other and get_profile("ci", seed=0) == ci  # the argument wins over the variable
    monkeypatch.setenv("LLAMA2_MINIMAL_SEED", "three")
    with pytest.raises(ValueError, match="LLAMA2_MINIMAL_SEED must be a whole number"):
        get_profile("ci")
    with pytest.raises(ValueError, match="seed must be 0 or more"):
        get_profile("ci", seed=-1)


def test_the_profile_chooses_the_precision_and_the_resolved_one_keys_the_cache(monkeypatch, tmp_path):
    import llama2_minimal.train.loop as loop
    from llama2_minimal.pipeline import results_name

    monkeypatch.delenv("LLAMA2_MINIMAL_PRECISION", raising=False)
    assert get_profile("ci").precision == "fp32" and get_profile("laptop").precision == "auto"
    laptop, fp32 = get_profile("laptop"), get_profile("laptop", precision="fp32")
    monkeypatch.setattr(loop, "cpu_supports_bf16", lambda: True)
    key = lambda p: artifacts.stage_folder("pretrain", p, artifacts.pretrain_settings(p, True), tmp_path)  # noqa: E731
    assert key(laptop) == key(get_profile("laptop", precision="bf16")) != key(fp32)  # auto is bf16 on this CPU
    monkeypatch.setattr(loop, "cpu_supports_bf16", lambda: False)
    assert key(laptop) == key(fp32)  # ... and fp32 on one without bf16: the same model, the same folder
    assert (results_name(laptop), results_name(fp32)) == ("results.json", "results-fp32.json")
    assert results_name(get_profile("laptop", seed=2, precision="bf16")) == "results-seed2-bf16.json"
    monkeypatch.setenv("LLAMA2_MINIMAL_PRECISION", "fp32")
    assert get_profile("laptop") == fp32 and get_profile("laptop", precision="auto") == laptop
    monkeypatch.setenv("LLAMA2_MINIMAL_PRECISION", "half")
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32, got 'half'"):
        get_profile("laptop")


def test_the_second_preference_batch_and_the_reward_models_on_both_are_named_before_anything_is_built(tmp_path):
    """§3.2.1's loop has two batches here: asking for a third (or a reward model on three) is refused at once,
    naming the choices, and nothing is built in the cache."""
    with pytest.raises(ValueError, match="two preference batches"):
        artifacts.preferences_folder("ci", tmp_path, batch=3)
    with pytest.raises(ValueError, match="batch 1, or on batches 1 and 2"):
        artifacts.reward_folder("ci", root=tmp_path, batches=3)
    assert not any(tmp_path.iterdir())


def test_a_later_preference_batch_samples_the_latest_model_and_says_what_is_missing(tmp_path):
    from llama2_minimal.profiles import get_profile
    from llama2_minimal.train.reward import build_preferences

    with pytest.raises(ValueError, match="batch 2 samples from latest: pass their folders"):
        build_preferences(get_profile("ci"), tmp_path, {"sft": tmp_path}, batch=2)
    with pytest.raises(ValueError, match="batches count from 1"):
        build_preferences(get_profile("ci"), tmp_path, {}, batch=0)
