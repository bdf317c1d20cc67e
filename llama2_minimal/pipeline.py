"""`llama2-minimal pipeline`: every stage of the recipe that exists, on the built-in toy world, ending with one
results table (stage, metric, value) and DIR/results.json ({stage: {metric: value}}) beside the checkpoints.

Stages so far: world, tokenizer, pretraining (on the cleaned corpus, and on the uncleaned one for the
memorisation probe), and the evaluation of the base model.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import artifacts
from .profiles import get_profile


def _read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def run_pipeline(profile_name: str | None = None, out: str | os.PathLike | None = None, log=print) -> dict:
    from .checkpoint import load_checkpoint
    from .evaluation import evaluate_base, memorisation
    from .tokenizer import Tokenizer
    from .train.pretrain import corpus_texts, pretraining_rows
    from .world import World

    profile = get_profile(profile_name)
    root = Path(out) if out is not None else None
    results: dict[str, dict] = {}
    log(f"llama2-minimal pipeline, profile {profile.name}, output in {artifacts.cache_root(root) / profile.name}")

    def timed(stage: str, fn):
        start = time.perf_counter()
        results[stage] = fn()
        results[stage]["seconds"] = round(time.perf_counter() - start, 1)

    world = World(profile.world)
    texts, report = corpus_texts(profile, clean=True)

    def world_stage():
        return {"documents": report["documents_in"], "characters": sum(len(t) for t in texts),
                "prompts_train": len(world.prompts(split="train")),
                "prompts_heldout": len(world.prompts(split="heldout"))}  # fmt: skip

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

    target = (root or artifacts.cache_root() / profile.name) / "results.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, target)
    log(format_table(results))
    log(f"results written to {target}")
    return results


def format_table(results: dict) -> str:
    rows = [(stage, metric, value) for stage, metrics in results.items() for metric, value in metrics.items()]
    width = max(len(f"{s}") for s, _, _ in rows), max(len(m) for _, m, _ in rows)
    lines = [f"{'stage':<{width[0]}}  {'metric':<{width[1]}}  value", "-" * (width[0] + width[1] + 12)]
    for stage, metric, value in rows:
        shown = f"{value:,}" if isinstance(value, int) else f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{stage:<{width[0]}}  {metric:<{width[1]}}  {shown}")
    return "\n".join(lines)
