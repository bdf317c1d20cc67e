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
# The code each stage's output depends on: a change here makes the cached output stale.
SOURCES = {
    "tokenizer": ["world", "data.py", "tokenizer.py", "train/pretrain.py"],
    "pretrain": ["world", "data.py", "tokenizer.py", "model.py", "train/loop.py", "train/pretrain.py"],
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
    base = stage.removesuffix("-uncleaned")  # both pretraining runs come from the same code
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


def pretrain_settings(profile: Profile, clean: bool, steps: int | None = None) -> dict:
    settings = {**tokenizer_settings(profile), "model": profile.model, "pretrain": repr(profile.pretrain)}
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


def pretrained_model(profile: Profile | str | None = None, clean: bool = True, root=None, device: str = "cpu"):
    """(model, tokenizer) of the pretrained base model, built if needed."""
    from .checkpoint import load_checkpoint
    from .tokenizer import Tokenizer

    folder = pretrained_folder(profile, clean, root) / "model"
    return load_checkpoint(folder, device=device).eval(), Tokenizer(folder / "tokenizer.model")
