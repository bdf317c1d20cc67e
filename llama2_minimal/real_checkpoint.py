"""A real Llama 2 checkpoint, when you have one: the optional section of lesson 05.

Set the environment variable LLAMA2_CHECKPOINT to a folder of Meta's layout (params.json, consolidated.NN.pth,
tokenizer.model: what Meta's download script writes) or of Hugging Face's (config.json, model.safetensors and a
tokenizer.model), then run the lesson's cell: the same `Transformer` and `Tokenizer` that train the toy models load
the real weights and continue a few prompts greedily. Without the variable the cell says how to run it and does
nothing. Nothing is downloaded.

A 7B model takes about 14 GB of memory in bfloat16 (on a CUDA device) and 27 GB in float32 (on a CPU, where
bfloat16 is slow): `memory_needed` says how much before anything is loaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .checkpoint import HF_CONFIG, META_PARAMS, TOKENIZER_FILE, detect_layout, hf_config_to_args, load_checkpoint
from .generation import generate
from .model import ModelArgs, count_parameters
from .tokenizer import Tokenizer

CHECKPOINT_ENV = "LLAMA2_CHECKPOINT"
# The prompts of Meta's example_text_completion.py (repository meta-llama/llama), cut to their first words.
PROMPTS = ("I believe the meaning of life is", "Simply put, the theory of relativity states that")

__all__ = ["CHECKPOINT_ENV", "PROMPTS", "checkpoint_folder", "complete", "load", "memory_needed", "skip_message"]


def checkpoint_folder(environ: Mapping[str, str] | None = None) -> Path | None:
    """The folder named by $LLAMA2_CHECKPOINT, or None when the variable is unset or empty; a clear error when it
    names something that is not a checkpoint folder with a tokenizer."""
    value = (os.environ if environ is None else environ).get(CHECKPOINT_ENV, "").strip()
    if not value:
        return None
    folder = Path(value).expanduser()
    detect_layout(folder)  # raises CheckpointError with the fix when it is not a Meta or HF folder
    if not (folder / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(
            f"${CHECKPOINT_ENV}={value} has no {TOKENIZER_FILE}: copy the tokenizer.model that came with the "
            "weights (Meta ships it beside them) into the folder."
        )
    return folder


def skip_message() -> str:
    return (
        f"Skipped: no real checkpoint. To run this cell on Llama 2, set {CHECKPOINT_ENV} to a checkpoint folder "
        f"before starting Jupyter, e.g. `{CHECKPOINT_ENV}=~/llama-2-7b jupyter lab` (Meta's layout: params.json, "
        "consolidated.00.pth, tokenizer.model; or Hugging Face's with a tokenizer.model). A 7B needs about 27 GB "
        "of memory on a CPU."
    )


def _args(folder: Path) -> ModelArgs:
    if detect_layout(folder) == "meta":
        params = json.loads((folder / META_PARAMS).read_text())
        vocab = Tokenizer(folder / TOKENIZER_FILE).n_words if params.get("vocab_size", -1) == -1 else None
        return ModelArgs.from_params(params, **({"vocab_size": vocab} if vocab else {}))
    return hf_config_to_args(json.loads((folder / HF_CONFIG).read_text()))


def _device_and_dtype(device: str | None) -> tuple[str, torch.dtype]:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, (torch.bfloat16 if device.startswith("cuda") else torch.float32)


def memory_needed(folder: str | os.PathLike, device: str | None = None) -> str:
    """How many parameters the checkpoint holds and the memory its weights take on `device`, from its
    configuration alone."""
    args = _args(Path(folder))
    device, dtype = _device_and_dtype(device)
    n = count_parameters(args)
    gigabytes = n * torch.tensor([], dtype=dtype).element_size() / 1e9
    return f"{n:,} parameters: about {gigabytes:.1f} GB in {str(dtype).removeprefix('torch.')} on {device}"


def load(folder: str | os.PathLike, device: str | None = None):
    """(model, tokenizer) from the folder: bfloat16 on a CUDA device, float32 on a CPU."""
    device, dtype = _device_and_dtype(device)
    model = load_checkpoint(folder, device=device, dtype=dtype).eval()
    return model, Tokenizer(Path(folder) / TOKENIZER_FILE)


def complete(model, tokenizer, prompts: Sequence[str] = PROMPTS, max_new_tokens: int = 24) -> list[str]:
    """Greedy continuations of the prompts, each prompt with its continuation (decoded together, so the space that
    starts the continuation is kept)."""
    ids = [tokenizer.encode(p, bos=True) for p in prompts]
    outs = generate(model, ids, max_new_tokens=max_new_tokens, temperature=0, eos_id=tokenizer.eos_id)
    return [tokenizer.decode(i + o) for i, o in zip(ids, outs)]
