"""`llama2-minimal export MODEL out.gguf` (gguf_export.py): the file holds the hyperparameters, the SentencePiece
vocabulary with scores and types, and the weights under llama.cpp's names (read back with gguf's own reader); bad
input is a clear error and never a half-written file; and llama.cpp itself (llama-cpp-python) tokenizes the world's
chat prompts as we do, decodes the same greedy tokens, and gives logits close to ours."""

import os
import time

import numpy as np
import pytest
import torch
from tiny_models import random_model

from llama2_minimal import artifacts
from llama2_minimal import gguf_export as export
from llama2_minimal.chat import CHAT_TEMPLATE, encode_dialog
from llama2_minimal.checkpoint import load_checkpoint, save_checkpoint
from llama2_minimal.cli import main
from llama2_minimal.evaluation import chat_prompts
from llama2_minimal.generation import generate
from llama2_minimal.model import ModelArgs
from llama2_minimal.profiles import get_profile
from llama2_minimal.tokenizer import Tokenizer, train_tokenizer
from llama2_minimal.world import World

gguf = pytest.importorskip("gguf", reason="the GGUF export needs llama.cpp's gguf package: pip install -e '.[export]'")

LLAMA_CPP_HINT = ("llama.cpp is absent: pip install -e '.[llamacpp]' (llama-cpp-python compiles llama.cpp from "
                  "source: about 17 CPU-minutes; .ci/run does it with LLAMA2_MINIMAL_CI_LLAMACPP=1)")  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random grouped-query model with a tokenizer trained on the world's corpus, as a Meta folder."""
    root = tmp_path_factory.mktemp("gguf")
    world = World(get_profile("ci").world)
    tok = train_tokenizer([d.text for d in world.corpus()], root / "tokenizer.model", vocab_size=512)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.n_words, multiple_of=16,
                     max_seq_len=128, ffn_dim_multiplier=1.3)  # fmt: skip
    save_checkpoint(random_model(args, seed=4), root / "model", tokenizer_model=tok.model_path)
    return root / "model"


def fields(reader):
    """{key: value} of a GGUF file's metadata (strings decoded, arrays as lists)."""
    out = {}
    for key, field in reader.fields.items():
        value = field.contents()
        out[key] = value
    return out


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_the_file_holds_hyperparameters_vocabulary_and_weights(folder, tmp_path, outtype):
    path = export.export_gguf(folder, tmp_path / "m.gguf", outtype=outtype)
    model, tok = load_checkpoint(folder), Tokenizer(folder / "tokenizer.model")
    args = model.params
    reader = gguf.GGUFReader(path)
    meta = fields(reader)
    assert meta["general.architecture"] == "llama"
    expected = {"llama.context_length": args.max_seq_len, "llama.embedding_length": args.dim,
                "llama.block_count": args.n_layers, "llama.feed_forward_length": args.hidden_dim,
                "llama.attention.head_count": args.n_heads, "llama.attention.head_count_kv": args.kv_heads,
                "llama.rope.dimension_count": args.head_dim, "tokenizer.ggml.model": "llama",
                "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": True,
                "tokenizer.ggml.add_eos_token": False, "tokenizer.chat_template": CHAT_TEMPLATE}  # fmt: skip
    assert {k: meta[k] for k in expected} == expected
    assert meta["llama.rope.freq_base"] == pytest.approx(args.rope_theta)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(args.norm_eps)
    sp = tok._sp
    assert meta["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(tok.n_words)]
    assert np.allclose(meta["tokenizer.ggml.scores"], [sp.get_score(i) for i in range(tok.n_words)])
    types = meta["tokenizer.ggml.token_type"]
    assert types[:3] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    assert set(types[3:259]) == {gguf.TokenType.BYTE} and set(types[259:]) == {gguf.TokenType.NORMAL}

    tensors = {t.name: t for t in reader.tensors}
    state = model.state_dict()
    assert len(tensors) == len(state)
    for key, value in state.items():
        t = tensors[export.gguf_tensor_name(key)]
        stored = np.asarray(t.data).reshape(tuple(value.shape))
        if outtype == "f16" and value.ndim == 2:
            assert stored.dtype == np.float16
            assert np.allclose(stored, value.half().numpy())
        else:  # the norms stay float32 in both file types
            assert stored.dtype == np.float32 and np.array_equal(stored, value.numpy()), key


def test_the_names_are_llama_cpp_s():
    assert export.gguf_tensor_name("layers.3.attention.wq.weight") == "blk.3.attn_q.weight"
    assert export.gguf_tensor_name("layers.0.feed_forward.w2.weight") == "blk.0.ffn_down.weight"
    assert export.gguf_tensor_name("tok_embeddings.weight") == "token_embd.weight"
    assert export.gguf_tensor_name("output.weight") == "output.weight"
    with pytest.raises(ValueError, match="unexpected tensor"):
        export.gguf_tensor_name("layers.0.attention.bias")


def test_the_command_writes_the_file(folder, tmp_path, capsys):
    assert main(["export", str(folder), str(tmp_path / "out.gguf")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "out.gguf").stat().st_size > 0


def test_bad_input_is_a_clear_error_and_never_a_half_written_file(folder, tmp_path, monkeypatch, capsys):
    existing = tmp_path / "old.gguf"
    existing.write_bytes(b"keep me")
    with pytest.raises(SystemExit):
        main(["export", str(folder), str(existing)])
    assert "--force" in capsys.readouterr().err and existing.read_bytes() == b"keep me"
    with pytest.raises(ValueError, match="is a folder"):
        export.export_gguf(folder, tmp_path)
    no_tokenizer = tmp_path / "bare"
    save_checkpoint(load_checkpoint(folder), no_tokenizer)
    with pytest.raises(ValueError, match="tokenizer.model"):
        export.export_gguf(no_tokenizer, tmp_path / "bare.gguf")

    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)  # interrupted half way through
    with pytest.raises(OSError, match="disk full"):
        export.export_gguf(folder, existing, overwrite=True)
    assert existing.read_bytes() == b"keep me"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare", "old.gguf"]  # no partial file left


def test_a_tokenizer_larger_than_the_model_is_refused(folder, tmp_path):
    model = load_checkpoint(folder)
    small = ModelArgs(**{**model.params.__dict__, "vocab_size": 300})
    save_checkpoint(random_model(small), tmp_path / "small", tokenizer_model=folder / "tokenizer.model")
    with pytest.raises(ValueError, match="do not belong together"):
        export.export_gguf(tmp_path / "small", tmp_path / "small.gguf")
    assert not (tmp_path / "small.gguf").exists()


# --- llama.cpp reads the file -----------------------------------------------------------------------------------


def llama_cpp_model(path, n_ctx):
    llama_cpp = pytest.importorskip("llama_cpp", reason=LLAMA_CPP_HINT)
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=1, logits_all=True,
                           verbose=False, seed=0, type_k=0, type_v=0)  # fmt: skip  (0 = float32 KV cache)


def llama_cpp_greedy(llm, ids, max_new_tokens, eos_id=2):
    """Greedy decoding in llama.cpp: feed the prompt, then argmax of the last logits until EOS."""
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(max_new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if token == eos_id:
            break
        out.append(token)
        llm.eval([token])
    return out


def llama_cpp_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[: len(ids)]))


def compare(model, tok, llm, dialogs, max_new_tokens=40):
    """(prompt, our ids, llama.cpp's ids, max |logit difference|) for each dialog, tokenized by both sides."""
    rows = []
    for dialog in dialogs:
        ids = encode_dialog(dialog, tok)
        text = f"[INST] {dialog[-1]['content'].strip()} [/INST]"
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == ids, text  # llama.cpp's tokenizer
        [ours] = generate(model, [ids], max_new_tokens=max_new_tokens, temperature=0, eos_id=tok.eos_id)
        theirs = llama_cpp_greedy(llm, ids, max_new_tokens)
        full = ids + ours
        with torch.no_grad():
            diff = (model(torch.tensor([full]))[0] - llama_cpp_logits(llm, full)).abs().max().item()
        rows.append((text, ours, theirs, diff))
    return rows


def test_llama_cpp_runs_a_random_model_as_we_do(folder, tmp_path):
    path = export.export_gguf(folder, tmp_path / "tiny.gguf")
    llm = llama_cpp_model(path, 128)
    model, tok = load_checkpoint(folder), Tokenizer(folder / "tokenizer.model")
    world = World(get_profile("ci").world)
    dialogs = [[{"role": "user", "content": p.text}] for p in chat_prompts(world, "heldout")[:6]]
    for text, ours, theirs, diff in compare(model, tok, llm, dialogs, max_new_tokens=20):
        assert theirs == ours, text
        assert diff < 1e-3, (text, diff)


def test_llama_cpp_answers_the_world_s_chat_prompts_as_our_sft_model(tmp_path):
    pytest.importorskip("llama_cpp", reason=LLAMA_CPP_HINT)
    src = artifacts.sft_folder("ci") / "model"
    start = time.perf_counter()
    assert main(["export", str(src), str(tmp_path / "sft.gguf")]) == 0
    model, tok = load_checkpoint(src).eval(), Tokenizer(src / "tokenizer.model")
    llm = llama_cpp_model(tmp_path / "sft.gguf", model.params.max_seq_len)
    prompts = chat_prompts(World(get_profile("ci").world), "heldout")
    firsts = [p for kind in sorted({p.kind for p in prompts}) for p in [q for q in prompts if q.kind == kind][:2]]
    dialogs = [[{"role": "user", "content": p.text}] for p in firsts]
    rows = compare(model, tok, llm, dialogs)
    for text, ours, theirs, diff in rows:
        print(f"{text}\n  ours      {ours}\n  llama.cpp {theirs}\n  max |logit diff| {diff:.2e}")
        assert theirs == ours, text
        assert diff < 1e-3, (text, diff)
    size = os.path.getsize(tmp_path / "sft.gguf")
    print(f"export and comparison: {time.perf_counter() - start:.1f} s; the file: {size:,} bytes")
