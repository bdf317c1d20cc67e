"""Each stage's output, from a cache folder or built on demand: any lesson can be opened first.

    from llama2_minimal import artifacts
    model, tokenizer = artifacts.pretrained_model("laptop")

A stage's folder is keyed by the profile, the settings that matter and a hash of the package code that builds
it, so a change to either builds anew; building is deterministic, shows a progress bar, happens in a work
folder that is renamed into place when complete (an interrupted build resumes from its last checkpoint), and
holds a file lock, so two processes asking at once build it once.

The cache is $LLAMA2_MINIMAL_CACHE, or ~/.cache/llama2-minimal; `llama2-minimal pipeline --out DIR` uses DIR.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from .profiles import Profile, get_profile

CACHE_ENV = "LLAMA2_MINIMAL_CACHE"
DONE = "artifact.json"
PACKAGE = Path(__file__).resolve().parent
# The code each stage's output depends on: a change here makes the cached output stale. Only the files a stage
# runs are listed (the judge and the annotator are not), so that work on later stages keeps the pretrained models.
_WORLD = ["world/entities.py", "world/corpus.py", "world/prompts.py"]
SOURCES = {
    "tokenizer": [*_WORLD, "data.py", "tokenizer.py", "train/pretrain.py"],
    "pretrain": [*_WORLD, "data.py", "tokenizer.py", "model.py", "train/loop.py", "train/pretrain.py"],
}


def cache_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llama2-minimal")


def code_version(stage: str) -> str:
    digest = hashlib.sha256()
    for name in SOURCES[stage]:
        path = PACKAGE / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(PACKAGE).as_posix().encode() + file.read_bytes())
    return digest.hexdigest()[:8]


def key(*settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=repr).encode()).hexdigest()[:10]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (POSIX flock; on other systems no lock is taken)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stage_folder(stage: str, profile: Profile, settings: dict, root=None) -> Path:
    base = stage.split("-")[0]  # pretrain-uncleaned, sft-sloppy, reward-safety ... share their stage's code
    code = code_version(base) if base in SOURCES else ""
    return cache_root(root) / profile.name / f"{stage}-{key(settings, code)}"


def build_artifact(stage: str, profile: Profile, settings: dict, build: Callable[[Path], None], root=None) -> Path:
    """The stage's folder, built by build(work_folder) if it is not in the cache yet."""
    folder = stage_folder(stage, profile, settings, root)
    if (folder / DONE).is_file():
        return folder
    with file_lock(folder.parent / f".{folder.name}.lock"):
        if (folder / DONE).is_file():  # another process built it while we waited
            return folder
        work = work_folder(folder)
        build(work)
        finish(work, folder, settings)
    return folder


def work_folder(folder: Path) -> Path:
    work = folder.parent / f".{folder.name}.partial"
    work.mkdir(parents=True, exist_ok=True)
    return work


def finish(work: Path, folder: Path, settings: dict) -> None:
    (work / DONE).write_text(json.dumps({"settings": settings}, indent=1, default=repr) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(work, folder)


# --- the stages -------------------------------------------------------------------------------------------


def _profile(profile: Profile | str | None) -> Profile:
    return profile if isinstance(profile, Profile) else get_profile(profile)


def tokenizer_settings(profile: Profile) -> dict:
    return {"world": repr(profile.world), "mix": profile.corpus_mix, "vocab_size": profile.vocab_size}


def training_precision(profile: Profile) -> str:
    """The precision the profile's stages train in on this machine (bf16 or fp32): part of every stage's key, through
    the pretrained model's, since a model trained in bf16 is another model."""
    import torch

    from .train.loop import resolve_precision

    return resolve_precision(profile.precision, "cuda" if torch.cuda.is_available() else "cpu")


def pretrain_settings(profile: Profile, clean: bool, steps: int | None = None) -> dict:
    settings = {**tokenizer_settings(profile), "model": profile.model, "pretrain": repr(profile.pretrain),
                "precision": training_precision(profile)}  # fmt: skip
    return {**settings, "clean": clean, **({"steps": steps} if steps else {})}


def tokenizer_file(profile: Profile | str | None = None, root=None) -> Path:
    """The course tokenizer of the profile (SentencePiece BPE trained on the cleaned corpus)."""
    from .train.pretrain import build_tokenizer

    profile = _profile(profile)
    folder = build_artifact("tokenizer", profile, tokenizer_settings(profile),
                            lambda work: build_tokenizer(profile, work / "tokenizer.model"), root)  # fmt: skip
    return folder / "tokenizer.model"


def pretrained_folder(profile: Profile | str | None = None, clean: bool = True, root=None) -> Path:
    """The folder of a pretraining run: model/ (a Meta checkpoint), metrics.jsonl, data.json."""
    from .train.pretrain import pretrain

    profile = _profile(profile)
    tokenizer = tokenizer_file(profile, root)
    stage = "pretrain" if clean else "pretrain-uncleaned"
    return build_artifact(stage, profile, pretrain_settings(profile, clean),
                          lambda work: pretrain(profile, work, tokenizer, clean=clean), root)  # fmt: skip


def _model_and_tokenizer(folder: Path, device: str):
    """A stage's model/ folder -> (model in eval mode, the tokenizer saved beside it)."""
    from .checkpoint import load_checkpoint
    from .tokenizer import Tokenizer

    return load_checkpoint(folder, device=device).eval(), Tokenizer(folder / "tokenizer.model")


def pretrained_model(profile: Profile | str | None = None, clean: bool = True, root=None, device: str = "cpu"):
    """(model, tokenizer) of the pretrained base model, built if needed."""
    return _model_and_tokenizer(pretrained_folder(profile, clean, root) / "model", device)


# --- supervised fine-tuning, preference data, reward models, rejection sampling -------------------------------

_CHAT = [*SOURCES["pretrain"], "chat.py", "world/demonstrations.py", "train/sft.py"]
_JUDGED = [*_CHAT, "generation.py", "world", "train/reward.py"]
SOURCES.update({
    "sft": _CHAT,
    "preferences": _JUDGED,
    "reward": _JUDGED,
    "rejection": [*_JUDGED, "evaluation.py", "train/rejection.py"],
    "curves": [*_JUDGED, "evaluation.py", "train/rejection.py"],
})  # fmt: skip


def sft_folder(profile: Profile | str | None = None, annotator: str = "careful", fraction: float | None = None,
               copies: int = 1, root=None) -> Path:  # fmt: skip
    """The folder of a supervised fine-tuning run of the base model: model/, metrics.jsonl, data.json. The
    course's SFT model is the careful annotator's on every training prompt; the others are the data-quality
    ablation (careful on a share of the prompts, sloppy on more)."""
    from .train.sft import sft

    profile = _profile(profile)
    fraction = profile.sft.fraction if fraction is None else fraction
    base = pretrained_folder(profile, True, root)
    settings = {"base": base.name, "sft": repr(profile.sft), "annotator": annotator, "fraction": fraction,
                "copies": copies}  # fmt: skip
    stage = "sft" if (annotator, fraction, copies) == ("careful", profile.sft.fraction, 1) else f"sft-{annotator}"
    build = lambda work: sft(profile, work, base / "model", annotator, fraction, copies)  # noqa: E731
    return build_artifact(stage, profile, settings, build, root)


def sft_model(profile: Profile | str | None = None, root=None, device: str = "cpu", **ablation):
    """(model, tokenizer) of the SFT model (or of an ablation's: annotator=, fraction=, copies=), built if needed."""
    return _model_and_tokenizer(sft_folder(profile, root=root, **ablation) / "model", device)


# The data-quality ablation of §3.1: the course SFT's prompts answered twice by a sloppy annotator (half the answers
# flawed), against a careful annotator on half as many prompts: four times fewer demonstrations, all good.
SLOPPY_SFT = {"annotator": "sloppy", "fraction": 0.5, "copies": 2}
CAREFUL_SMALL_SFT = {"annotator": "careful", "fraction": 0.25, "copies": 1}


def preferences_folder(profile: Profile | str | None = None, root=None, batch: int = 1) -> Path:
    """The preference data: pairs.jsonl (train and held-out prompts, helpfulness and safety labels). Batch 1 is
    sampled from the base, SFT and sloppy SFT models; batch 2 (§3.2.1's next batch) from RLHF-V1."""
    from .train.reward import build_preferences

    profile = _profile(profile)
    if batch == 1:
        folders = {"base": pretrained_folder(profile, True, root), "sft": sft_folder(profile, root=root),
                   "sft_sloppy": sft_folder(profile, root=root, **SLOPPY_SFT)}  # fmt: skip
    elif batch == 2:
        folders = {"latest": rejection_folder(profile, 1, root)}
    else:
        raise ValueError(f"batch={batch}: the course collects two preference batches (1: before RLHF, 2: on V1)")
    settings = {name: f.name for name, f in folders.items()} | {"reward": repr(profile.reward), "batch": batch}
    return build_artifact("preferences" if batch == 1 else f"preferences-{batch}", profile, settings,
                          lambda work: build_preferences(profile, work, {k: f / "model" for k, f in folders.items()},
                                                         batch), root)  # fmt: skip


def reward_folder(profile: Profile | str | None = None, kind: str = "helpfulness", margins: str = "small",
                  fraction: float = 1.0, root=None, reads_predictions: bool | None = None,
                  batches: int = 1) -> Path:  # fmt: skip
    """A reward model (helpfulness or safety) initialised from the SFT model and trained on the preference data's
    mix for it, with the margins (none, small, large) and a share of the training prompts (the data lever).
    reads_predictions (default: the profile's) False builds the paper's design, the head alone (lesson 09
    compares the two). batches=2 trains batch 1's reward model one more epoch on the second preference batch,
    collected on RLHF-V1's samples (§3.2.1: the reward model that RLHF-V2 uses; it has seen both batches)."""
    from .train.reward import build_reward_model

    profile = _profile(profile)
    if batches not in (1, 2):
        raise ValueError(f"batches={batches}: a reward model is trained on batch 1, or on batches 1 and 2")
    reads = profile.reward.reads_predictions if reads_predictions is None else reads_predictions
    sft = sft_folder(profile, root=root)
    pairs = [preferences_folder(profile, root, batch) for batch in range(1, batches + 1)]
    settings = {"sft": sft.name, "pairs": pairs[0].name, "kind": kind, "margins": margins, "fraction": fraction,
                "reward": repr(profile.reward), "reads_predictions": reads}  # fmt: skip
    start = None
    if batches > 1:  # batch 1's reward model, trained one more epoch on batch 2: it has seen both
        start = reward_folder(profile, kind, margins, fraction, root, reads_predictions, batches - 1)
        settings["later_pairs"], settings["continues"] = pairs[-1].name, start.name
    stage = f"reward-{kind}" + ("" if (margins, fraction) == ("small", 1.0) else f"-{margins}-{fraction:g}")
    stage += "" if reads == profile.reward.reads_predictions else ("-reads" if reads else "-head")
    stage += "" if batches == 1 else f"-batches{batches}"
    start_model = start / "model" if start else None
    return build_artifact(stage, profile, settings,
                          lambda work: build_reward_model(profile, work, sft / "model", pairs[-1] / "pairs.jsonl", kind,
                                                          margins, fraction, reads, start_model), root)  # fmt: skip


def reward_model(profile: Profile | str | None = None, kind: str = "helpfulness", root=None, device: str = "cpu",
                 **variant):  # fmt: skip
    """(reward model, tokenizer), built if needed."""
    from .tokenizer import Tokenizer
    from .train.reward import load_reward_model

    folder = reward_folder(profile, kind, root=root, **variant) / "model"
    return load_reward_model(folder, device), Tokenizer(folder / "tokenizer.model")


def rejection_folder(profile: Profile | str | None = None, iteration: int = 1, root=None,
                     control: bool = False) -> Path:  # fmt: skip
    """Rejection-sampling iteration `iteration` (RLHF-V1, V2 ...): model/, kept.jsonl (the best answers of all
    iterations so far), metrics.jsonl, report.json. Iteration n starts from iteration n - 1's model. control=True
    is RLHF-V1's control: SFT fine-tuned on one sample per prompt at V1's temperature, whatever its reward."""
    from .train.rejection import rejection_iteration

    profile = _profile(profile)
    if iteration < 1:
        raise ValueError(f"iteration={iteration}: rejection sampling counts from 1")
    if control and iteration != 1:
        raise ValueError(f"the control is RLHF-V1's (iteration 1), got iteration={iteration}")
    previous = sft_folder(profile, root=root) if iteration == 1 else rejection_folder(profile, iteration - 1, root)
    batches = 2 if iteration >= 2 and profile.reward.iterative else 1  # V2 on RMs that saw V1's samples (§3.2.1)
    rms = {k: reward_folder(profile, k, root=root, batches=batches) for k in ("helpfulness", "safety")}
    curves = curves_folder(profile, root)
    chosen = json.loads((curves / "curves.json").read_text())["chosen"]
    k = 1 if control else chosen["k"]
    settings = {"previous": previous.name, **{name: f.name for name, f in rms.items()}, "iteration": iteration,
                "rejection": repr(profile.rejection), "curves": curves.name, "control": control}  # fmt: skip
    models = {name: f / "model" for name, f in rms.items()}
    return build_artifact("rejection-control" if control else f"rejection-v{iteration}", profile, settings,
                          lambda work: rejection_iteration(profile, work, previous, models, iteration, k,
                                                           chosen["temperature"], control), root)  # fmt: skip


def rlhf_model(profile: Profile | str | None = None, iteration: int = 2, root=None, device: str = "cpu",
               control: bool = False):  # fmt: skip
    """(model, tokenizer) of RLHF-V{iteration} (rejection sampling), or of V1's control, built if needed."""
    return _model_and_tokenizer(rejection_folder(profile, iteration, root, control) / "model", device)


def best_of_k_curves(profile: Profile | str | None = None, root=None) -> dict:
    """Figs 7 and 8 for the SFT model, the choice of K and T on validation prompts and best-of-K on test prompts
    (train/rejection.py build_curves), built if needed."""
    return json.loads((curves_folder(profile, root) / "curves.json").read_text())


def curves_folder(profile: Profile | str | None = None, root=None) -> Path:
    from .train.rejection import build_curves

    profile = _profile(profile)
    sft = sft_folder(profile, root=root)
    rms = {k: reward_folder(profile, k, root=root) for k in ("helpfulness", "safety")}
    settings = {"sft": sft.name, **{k: f.name for k, f in rms.items()}, "rejection": repr(profile.rejection)}
    build = lambda work: build_curves(profile, work, sft / "model", {k: f / "model" for k, f in rms.items()})  # noqa: E731
    return build_artifact("curves", profile, settings, build, root)
