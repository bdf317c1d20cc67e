"""Lesson 05's optional cell on a real checkpoint, run on a random model saved in Meta's and Hugging Face's layouts
with a tokenizer, as Meta ships them."""

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from llama2_minimal import real_checkpoint
from llama2_minimal.checkpoint import CheckpointError, save_checkpoint
from llama2_minimal.course.notebooks import read_notebook
from llama2_minimal.model import ModelArgs, Transformer
from llama2_minimal.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["the", "meaning", "of", "life", "is", "simply", "put", "theory", "relativity", "states", "that", "light",
         "time", "space", "a", "an", "and", "to"]  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (10,), generator=g)) for _ in range(300)]
    tok = train_tokenizer(lines, root / "tokenizer.model", vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.n_words,
                                  multiple_of=16, max_seq_len=96))  # fmt: skip
    meta = save_checkpoint(model, root / "llama-2-tiny", layout="meta", num_shards=2,
                           tokenizer_model=root / "tokenizer.model")  # fmt: skip
    params = json.loads((meta / "params.json").read_text())
    (meta / "params.json").write_text(json.dumps({**params, "vocab_size": -1}))  # as in Meta's files
    hf = save_checkpoint(model, root / "Llama-2-tiny-hf", layout="hf", tokenizer_model=root / "tokenizer.model")
    no_tokenizer = save_checkpoint(model, root / "no-tokenizer", layout="meta")
    return {"meta": meta, "hf": hf, "no_tokenizer": no_tokenizer, "empty": root}


def lesson_cell() -> str:
    nb = read_notebook(ROOT / "lessons" / "05_the_llama_model.ipynb")
    [cell] = [c for c in nb.cells if c.cell_type == "code" and "real_checkpoint.checkpoint_folder()" in c.source]
    return cell.source


def run_cell(monkeypatch, folder) -> str:
    if folder is None:
        monkeypatch.delenv(real_checkpoint.CHECKPOINT_ENV, raising=False)
    else:
        monkeypatch.setenv(real_checkpoint.CHECKPOINT_ENV, str(folder))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(lesson_cell(), {"real_checkpoint": real_checkpoint})
    return out.getvalue()


def test_without_a_checkpoint_the_cell_says_how_and_does_nothing(monkeypatch):
    printed = run_cell(monkeypatch, None)
    assert printed.startswith("Skipped") and real_checkpoint.CHECKPOINT_ENV in printed
    monkeypatch.setenv(real_checkpoint.CHECKPOINT_ENV, "  ")
    assert real_checkpoint.checkpoint_folder() is None


@pytest.mark.parametrize("layout", ["meta", "hf"])
def test_the_cell_loads_a_checkpoint_and_continues_meta_s_prompts(monkeypatch, folders, layout):
    printed = run_cell(monkeypatch, folders[layout]).splitlines()
    assert "parameters: about" in printed[0] and (" float32 on cpu" in printed[0] or " bfloat16 on cuda" in printed[0])
    assert len(printed) == 1 + len(real_checkpoint.PROMPTS)
    for line, prompt in zip(printed[1:], real_checkpoint.PROMPTS):
        assert line.startswith(repr(prompt)[:-1])  # the prompt, then its continuation


def test_the_continuations_are_the_greedy_ones_of_the_model(folders):
    model, tokenizer = real_checkpoint.load(folders["meta"])
    [text] = real_checkpoint.complete(model, tokenizer, ["the meaning of"], max_new_tokens=5)
    hf_model, _ = real_checkpoint.load(folders["hf"])
    assert real_checkpoint.complete(hf_model, tokenizer, ["the meaning of"], max_new_tokens=5) == [text]


def test_a_folder_that_is_not_a_checkpoint_gets_a_clear_error(monkeypatch, folders):
    monkeypatch.setenv(real_checkpoint.CHECKPOINT_ENV, str(folders["empty"]))
    with pytest.raises(CheckpointError, match="neither a Meta checkpoint"):
        real_checkpoint.checkpoint_folder()
    monkeypatch.setenv(real_checkpoint.CHECKPOINT_ENV, str(folders["no_tokenizer"]))
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        real_checkpoint.checkpoint_folder()
