import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import TINY_CONFIGS, random_model

from llama2_minimal.chat import encode_dialog
from llama2_minimal.checkpoint import load_checkpoint, save_checkpoint
from llama2_minimal.cli import main
from llama2_minimal.generation import generate
from llama2_minimal.model import ModelArgs
from llama2_minimal.tokenizer import train_tokenizer

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "ran",
    "to",
    "the",
    "red",
    "house",
    "where",
    "12",
    "dogs",
    "ate",
    "345",
    "fish",
    "at",
    "night",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A Meta folder without a tokenizer and a Meta folder with one (and a model of its vocabulary)."""
    root = tmp_path_factory.mktemp("cli")
    save_checkpoint(random_model(TINY_CONFIGS["gqa"], seed=11), root / "ids_only")
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (12,), generator=g)) for _ in range(400)]
    tok = train_tokenizer(lines, root / "tokenizer.model", vocab_size=300)
    args = ModelArgs(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.n_words, multiple_of=16, max_seq_len=128
    )
    save_checkpoint(random_model(args, seed=12), root / "with_tok", tokenizer_model=root / "tokenizer.model")
    return root, tok


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_convert_round_trip_through_both_layouts(folders, tmp_path, capsys):
    root, _ = folders
    code, out, _ = run(capsys, "convert", root / "with_tok", tmp_path / "hf", "--to", "hf")
    assert code == 0 and "meta checkpoint" in out and "hf checkpoint" in out
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / "tokenizer.model").is_file()
    code, out, _ = run(capsys, "convert", tmp_path / "hf", tmp_path / "meta", "--to", "meta")
    assert code == 0 and "hf checkpoint" in out
    a, b = load_checkpoint(root / "with_tok"), load_checkpoint(tmp_path / "meta")
    assert a.params == b.params
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_convert_refuses_an_existing_destination_unless_forced(folders, tmp_path, capsys):
    root, _ = folders
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, "convert", root / "ids_only", tmp_path / "dst", "--to", "hf")
    assert exit_info.value.code == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "dst" / "keep.txt").read_text() == "mine"
    code, _, _ = run(capsys, "convert", root / "ids_only", tmp_path / "dst", "--to", "hf", "--force")
    assert code == 0 and not (tmp_path / "dst" / "keep.txt").exists()


def test_convert_names_what_a_checkpoint_looks_like(tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(SystemExit):
        run(capsys, "convert", tmp_path / "nothing", tmp_path / "out", "--to", "hf")
    err = capsys.readouterr().err
    assert "params.json" in err and "config.json" in err
    assert not (tmp_path / "out").exists()


def test_generate_ids_prints_the_library_s_greedy_ids(folders, capsys):
    root, _ = folders
    code, out, _ = run(
        capsys, "generate", root / "ids_only", "--ids", "1 17 42 5", "--max-new-tokens", "9", "--temperature", "0"
    )
    model = load_checkpoint(root / "ids_only")
    [expected] = generate(model, [[1, 17, 42, 5]], max_new_tokens=9, temperature=0)
    assert code == 0
    assert out.strip() == " ".join(map(str, expected)) and len(expected) > 0


def test_generate_sampling_is_reproducible_with_seed(folders, capsys):
    root, _ = folders
    argv = ["generate", root / "ids_only", "--ids", "1 5", "--temperature", "1.0", "--max-new-tokens", "20"]
    a = run(capsys, *argv, "--seed", "3")[1]
    b = run(capsys, *argv, "--seed", "3")[1]
    c = run(capsys, *argv, "--seed", "4")[1]
    assert a == b and a != c


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--prompt", "hello"], "tokenizer.model"),
        (["--ids", "1 x 3"], "whole numbers"),
        (["--ids", "1 5000"], "outside the model's vocabulary"),
        (["--ids", " "], "empty"),
        (["--ids", "1", "--chat"], "--chat"),
    ],
)
def test_generate_errors_name_the_fix(folders, capsys, argv, fragment):
    root, _ = folders
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, "generate", root / "ids_only", *argv)
    assert exit_info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_generate_text_and_chat(folders, capsys):
    root, tok = folders
    code, out, _ = run(
        capsys, "generate", root / "with_tok", "--prompt", "the cat", "--temperature", "0", "--max-new-tokens", "8"
    )
    model = load_checkpoint(root / "with_tok")
    [ids] = generate(model, [tok.encode("the cat")], max_new_tokens=8, temperature=0, eos_id=tok.eos_id)
    assert code == 0 and out == tok.decode(tok.encode("the cat") + ids) + "\n"
    assert out.startswith("the cat") and len(out) > len("the cat\n")  # the prompt, then the continuation

    code, out, _ = run(
        capsys,
        "generate",
        root / "with_tok",
        "--prompt",
        "a red house?",
        "--chat",
        "--system",
        "be brief",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
    )
    dialog = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a red house?"}]
    [ids] = generate(model, [encode_dialog(dialog, tok)], max_new_tokens=8, temperature=0, eos_id=tok.eos_id)
    assert code == 0 and out == tok.decode(ids).strip() + "\n"


def test_module_and_console_script_entry_points(folders):
    root, _ = folders
    cmd = [
        sys.executable,
        "-m",
        "llama2_minimal",
        "generate",
        str(root / "ids_only"),
        "--ids",
        "1 2",
        "--temperature",
        "0",
        "--max-new-tokens",
        "3",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert len(result.stdout.split()) == 3 and all(t.isdigit() for t in result.stdout.split())
    script = Path(sys.executable).parent / "llama2-minimal"
    assert script.is_file(), "the console script is missing: install the package with pip install -e ."
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "convert" in result.stdout and "generate" in result.stdout


def test_count_prints_the_released_totals(capsys):
    for name, total in [("7B", "6,738,415,616"), ("13B", "13,015,864,320"), ("70B", "68,976,648,192")]:
        code, out, _ = run(capsys, "count", name)
        assert code == 0 and out.strip().splitlines()[-1].split() == ["total", total]


def test_count_reads_params_json_config_json_and_folders(folders, tmp_path, capsys):
    root, _ = folders
    meta_out = run(capsys, "count", root / "ids_only")[1]
    assert meta_out == run(capsys, "count", root / "ids_only" / "params.json")[1]
    run(capsys, "convert", root / "ids_only", tmp_path / "hf", "--to", "hf")
    assert run(capsys, "count", tmp_path / "hf" / "config.json")[1] == meta_out
    assert f"{load_checkpoint(root / 'ids_only').num_parameters():,}" in meta_out
    with pytest.raises(SystemExit):
        run(capsys, "count", "8B")
    assert "neither one of" in capsys.readouterr().err


def test_init_writes_a_loadable_random_model(tmp_path, capsys):
    code, out, _ = run(capsys, "init", tmp_path / "m", "--layout", "hf", "--vocab-size", "64", "--seed", "1")
    assert code == 0 and "(1,599,168 parameters)" in out  # the tiny preset with a 64-token vocabulary
    model = load_checkpoint(tmp_path / "m")
    assert model.params.vocab_size == 64 and model.params.dim == 192
    std = model.layers[0].attention.wq.weight.std().item()
    assert abs(std - 0.02) < 0.002  # the pretraining initialisation, not zeros or ones


@pytest.mark.parametrize("argv, fragment", [(["--threads", "0"], "--threads must be 1 or more"),
                                            (["--seed", "-2"], "seed must be 0 or more")])  # fmt: skip
def test_pipeline_refuses_bad_seeds_and_thread_counts_before_building(tmp_path, capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, "pipeline", "--profile", "ci", "--out", tmp_path, *argv)
    assert exit_info.value.code == 2 and fragment in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was written
