import json

import pytest
import torch
from tiny_models import TINY_CONFIGS, random_model

from llama2_minimal import checkpoint as ckpt
from llama2_minimal.checkpoint import (
    CheckpointError,
    atomic_directory,
    convert_checkpoint,
    detect_layout,
    ffn_rule_for,
    load_checkpoint,
    load_state,
    permute_hf_to_meta,
    permute_meta_to_hf,
    save_checkpoint,
)
from llama2_minimal.model import ModelArgs, ffn_hidden_dim
from llama2_minimal.tokenizer import train_tokenizer

SHARDABLE = ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=96, multiple_of=16, max_seq_len=32)


def same_state(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_meta_round_trip_and_params_json(tmp_path):
    args = TINY_CONFIGS["gqa"]
    model = random_model(args)
    save_checkpoint(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["consolidated.00.pth", "params.json"]
    params = json.loads((tmp_path / "m" / "params.json").read_text())
    assert params["n_kv_heads"] == 2 and params["ffn_dim_multiplier"] == 1.3 and params["multiple_of"] == 16
    loaded = load_checkpoint(tmp_path / "m")
    assert loaded.params == args
    same_state(loaded.state_dict(), model.state_dict())


def shard_by_hand(state, n):
    """Shard a state dict the way fairscale's layers split Meta's model, written out independently here."""
    column = ("wq", "wk", "wv", "w1", "w3")  # ColumnParallelLinear: output rows
    row = ("wo", "w2")  # RowParallelLinear: input columns
    shards = [{} for _ in range(n)]
    for key, t in state.items():
        name = key.split(".")[-2]
        if key == "tok_embeddings.weight":
            parts = t.chunk(n, dim=1)  # ParallelEmbedding splits the embedding width
        elif key == "output.weight" or name in column:
            parts = t.chunk(n, dim=0)
        elif name in row:
            parts = t.chunk(n, dim=1)
        else:
            parts = [t] * n
        for s, p in zip(shards, parts):
            s[key] = p.clone()
    return shards


@pytest.mark.parametrize("n", [2, 4])
def test_model_parallel_shards_are_merged_along_the_right_axis(tmp_path, n):
    args = SHARDABLE
    model = random_model(args)
    folder = tmp_path / "sharded"
    folder.mkdir()
    params = {**args.to_params(), "vocab_size": -1}  # as Meta ships it: the size comes from the tokenizer
    (folder / "params.json").write_text(json.dumps(params))
    for rank, shard in enumerate(shard_by_hand(model.state_dict(), n)):
        shard["rope.freqs"] = torch.randn(4)  # Meta's files carry the rotary table; it must be ignored
        torch.save(shard, folder / f"consolidated.{rank:02d}.pth")
    loaded = load_checkpoint(folder)
    assert loaded.params.vocab_size == 96
    same_state(loaded.state_dict(), model.state_dict())
    # Our own sharded writer produces the same files as the hand-made sharding.
    save_checkpoint(model, tmp_path / "ours", num_shards=n)
    for rank, shard in enumerate(shard_by_hand(model.state_dict(), n)):
        same_state(torch.load(tmp_path / "ours" / f"consolidated.{rank:02d}.pth", weights_only=True), shard)


def test_sharding_refuses_sizes_that_do_not_divide(tmp_path):
    model = random_model(SHARDABLE)  # 4 key/value heads
    with pytest.raises(ValueError, match="n_kv_heads=4 is not divisible"):
        save_checkpoint(model, tmp_path / "x", num_shards=8)
    assert not (tmp_path / "x").exists()


def test_missing_or_gapped_shards_are_refused(tmp_path):
    model = random_model(SHARDABLE)
    save_checkpoint(model, tmp_path / "m", num_shards=2)
    (tmp_path / "m" / "consolidated.01.pth").rename(tmp_path / "m" / "consolidated.02.pth")
    with pytest.raises(CheckpointError, match="consecutive"):
        load_checkpoint(tmp_path / "m")
    for f in (tmp_path / "m").glob("*.pth"):
        f.unlink()
    with pytest.raises(CheckpointError, match="no consolidated.00.pth"):
        load_checkpoint(tmp_path / "m")


def test_rotary_permutation_round_trips_and_maps_interleaved_to_halves():
    w = torch.arange(4 * 8 * 3, dtype=torch.float32).reshape(4 * 8, 3)  # 4 heads of head_dim 8
    torch.testing.assert_close(permute_hf_to_meta(permute_meta_to_hf(w, 4), 4), w)
    hf = permute_meta_to_hf(w, 4)
    # Head 1: Meta's rows (2j, 2j+1) become Hugging Face's rows (j, j + 4).
    for j in range(4):
        torch.testing.assert_close(hf[8 + j], w[8 + 2 * j])
        torch.testing.assert_close(hf[8 + j + 4], w[8 + 2 * j + 1])


@pytest.mark.parametrize(
    "dim,size,rule", [(4096, 11008, (256, None)), (5120, 13824, (256, None)), (8192, 28672, (4096, 1.3))]
)
def test_ffn_rule_of_the_released_models_is_recovered(dim, size, rule):
    assert ffn_rule_for(dim, size) == rule


@pytest.mark.parametrize("dim,size", [(64, 100), (40, 77), (96, 333), (128, 1), (4096, 14336), (48, 100003)])
def test_ffn_rule_reproduces_any_intermediate_size(dim, size):
    multiple_of, multiplier = ffn_rule_for(dim, size)
    assert ffn_hidden_dim(dim, multiple_of, multiplier) == size


@pytest.mark.parametrize("size", [0, -5, 12.5, None])
def test_ffn_rule_fails_clearly(size):
    with pytest.raises(CheckpointError, match="intermediate_size"):
        ffn_rule_for(64, size)


def test_hf_config_that_is_not_llama_2_is_refused(tmp_path):
    model = random_model(TINY_CONFIGS["mha"])
    save_checkpoint(model, tmp_path / "hf", layout="hf")
    config_path = tmp_path / "hf" / "config.json"
    config = json.loads(config_path.read_text())
    for change, fragment in [
        ({"model_type": "mistral"}, "model_type"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE"),
        ({"attention_bias": True}, "biases"),
        ({"intermediate_size": 0}, "intermediate_size"),
    ]:
        config_path.write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=fragment):
            load_checkpoint(tmp_path / "hf")


def test_hf_sharded_safetensors_with_index_and_tied_embeddings(tmp_path):
    from safetensors.torch import save_file

    args = TINY_CONFIGS["mha"]
    model = random_model(args)
    with torch.no_grad():
        model.output.weight.copy_(model.tok_embeddings.weight)
    save_checkpoint(model, tmp_path / "hf", layout="hf")
    folder = tmp_path / "hf"
    state = ckpt._safetensors_load(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    del state["lm_head.weight"]  # tied: transformers does not store it
    keys = sorted(state)
    half = len(keys) // 2
    files = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, part in files.items():
        save_file({k: state[k] for k in part}, str(folder / name))
    index = {"weight_map": {k: name for name, part in files.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    same_state(load_checkpoint(folder).state_dict(), model.state_dict())


def test_detect_layout_and_bad_folders(tmp_path):
    model = random_model(TINY_CONFIGS["mha"])
    save_checkpoint(model, tmp_path / "meta")
    save_checkpoint(model, tmp_path / "hf", layout="hf")
    assert detect_layout(tmp_path / "meta") == "meta" and detect_layout(tmp_path / "hf") == "hf"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a Meta checkpoint"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="not a folder"):
        detect_layout(tmp_path / "meta" / "params.json")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(tmp_path / "bin")


def test_truncated_and_foreign_files_get_clear_errors(tmp_path):
    model = random_model(TINY_CONFIGS["mha"])
    save_checkpoint(model, tmp_path / "meta")
    save_checkpoint(model, tmp_path / "hf", layout="hf")
    pth, st = tmp_path / "meta" / "consolidated.00.pth", tmp_path / "hf" / "model.safetensors"
    pth.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or foreign"):
        load_checkpoint(tmp_path / "meta")
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or foreign"):
        load_checkpoint(tmp_path / "hf")
    st.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(tmp_path / "hf")

    class Payload:  # a pickle that would run code on load
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"tok_embeddings.weight": Payload()}, pth)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(tmp_path / "meta")
    torch.save({"something.else": torch.zeros(2)}, pth)
    with pytest.raises(CheckpointError, match="unexpected tensor"):
        load_checkpoint(tmp_path / "meta")
    (tmp_path / "meta" / "params.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "meta")


def test_weights_that_do_not_match_the_params_are_refused(tmp_path):
    save_checkpoint(random_model(TINY_CONFIGS["mha"]), tmp_path / "m")
    params = json.loads((tmp_path / "m" / "params.json").read_text())
    (tmp_path / "m" / "params.json").write_text(json.dumps({**params, "n_layers": 3}))
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "m")
    (tmp_path / "m" / "params.json").write_text(json.dumps({**params, "multiple_of": 100}))  # FFN 200 instead of 192
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_checkpoint(tmp_path / "m")


def test_an_interrupted_save_leaves_no_checkpoint(tmp_path, monkeypatch):
    model = random_model(SHARDABLE)
    real_save = torch.save
    calls = []

    def failing_save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second shard never gets written
        real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, tmp_path / "m", num_shards=2)
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor a temporary folder is left


def test_overwriting_keeps_the_old_checkpoint_until_the_new_one_is_complete(tmp_path, monkeypatch):
    old, new = random_model(TINY_CONFIGS["mha"], seed=1), random_model(TINY_CONFIGS["mha"], seed=2)
    save_checkpoint(old, tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite"):
        save_checkpoint(new, tmp_path / "m")

    def broken(*a, **k):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(torch, "save", broken)
        with pytest.raises(OSError, match="disk full"):
            save_checkpoint(new, tmp_path / "m", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    same_state(load_checkpoint(tmp_path / "m").state_dict(), old.state_dict())
    save_checkpoint(new, tmp_path / "m", overwrite=True)
    same_state(load_checkpoint(tmp_path / "m").state_dict(), new.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_atomic_directory_accepts_an_empty_existing_folder(tmp_path):
    (tmp_path / "d").mkdir()
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "a.txt").write_text("x")
        assert not (tmp_path / "d" / "a.txt").exists()  # nothing appears before the end
    assert (tmp_path / "d" / "a.txt").read_text() == "x"


def test_convert_copies_the_tokenizer_and_keeps_dtype(tmp_path):
    model = random_model(TINY_CONFIGS["gqa"]).to(torch.bfloat16)
    tok = tmp_path / "tokenizer.model"
    train_tokenizer(["the cat sat on the mat", "a dog ran to 12 red houses"] * 20, tok, vocab_size=280)
    save_checkpoint(model, tmp_path / "meta", tokenizer_model=tok)
    layout, _ = convert_checkpoint(tmp_path / "meta", tmp_path / "hf", to="hf")
    assert layout == "meta"
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == tok.read_bytes()
    assert (tmp_path / "hf" / "tokenizer.json").is_file()  # transformers' format, written beside it
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    args, state = load_state(tmp_path / "hf")
    assert state["layers.0.attention.wq.weight"].dtype == torch.bfloat16
    same_state(state, model.state_dict())
