"""The Hugging Face round trip (checkpoint.py, hf_tokenizer.py): `llama2-minimal convert --to hf` writes the tokenizer
files transformers expects, AutoTokenizer reproduces our ids on the world's chat prompts (and on the corpus), its
chat template is Meta's format, and the course's SFT model loaded with AutoModelForCausalLM gives, through
pipeline("text-generation"), the same greedy answers as `llama2-minimal generate`."""

import json

import pytest
import torch

from llama2_minimal import artifacts
from llama2_minimal.chat import encode_dialog
from llama2_minimal.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from llama2_minimal.cli import main
from llama2_minimal.evaluation import chat_prompts
from llama2_minimal.generation import generate
from llama2_minimal.hf_tokenizer import HF_TOKENIZER_FILES, bpe_merges, check_llama_tokenizer, sentencepiece_spec
from llama2_minimal.model import ModelArgs, Transformer
from llama2_minimal.profiles import get_profile
from llama2_minimal.tokenizer import Tokenizer, train_tokenizer
from llama2_minimal.world import World

transformers = pytest.importorskip("transformers", reason="the round trip needs transformers: pip install -e '.[dev]'")

SYSTEM = "Answer in upper case."


@pytest.fixture(scope="module")
def world():
    return World(get_profile("ci").world)


@pytest.fixture(scope="module", params=[512, 1536])
def hf_folder(request, world, tmp_path_factory):
    """(our tokenizer, a Hugging Face folder with a random model and it): the ci vocabulary, and a larger one with
    three times the merges (more chances for the two BPE implementations to part)."""
    root = tmp_path_factory.mktemp(f"hf{request.param}")
    tok = train_tokenizer([d.text for d in world.corpus()], root / "tokenizer.model", vocab_size=request.param)
    args = ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=tok.n_words, multiple_of=16, max_seq_len=128)
    torch.manual_seed(0)
    save_checkpoint(Transformer(args), root / "hf", layout="hf", tokenizer_model=tok.model_path)
    return tok, root / "hf"


def dialogs(world):
    """Every prompt of the world alone and with a system message, and multi-turn dialogs with answers."""
    for p in world.prompts():
        yield [{"role": "user", "content": p.text}]
        yield [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p.text}]
    prompts = world.prompts()
    for i in range(0, len(prompts) - 2, 7):
        a, b, c = prompts[i : i + 3]
        yield [{"role": "system", "content": SYSTEM}, {"role": "user", "content": a.text},
               {"role": "assistant", "content": a.reference}, {"role": "user", "content": b.text},
               {"role": "assistant", "content": b.reference}, {"role": "user", "content": c.text}]  # fmt: skip


def test_the_folder_holds_the_files_transformers_reads(hf_folder):
    tok, folder = hf_folder
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["config.json", "model.safetensors", "tokenizer.model", *HF_TOKENIZER_FILES])
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<s>" and config["eos_token"] == "</s>" and config["model_max_length"] == 128
    spec = sentencepiece_spec((folder / "tokenizer.model").read_bytes())
    assert (spec.model_type, spec.normalization, spec.add_dummy_prefix, spec.remove_extra_whitespaces) == (
        "bpe", "identity", True, False)  # fmt: skip


def test_auto_tokenizer_gives_our_ids_on_every_chat_prompt_of_the_world(hf_folder, world):
    tok, folder = hf_folder
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    n = 0
    for dialog in dialogs(world):
        ours = encode_dialog(dialog, tok)
        rendered = hf.apply_chat_template(dialog, tokenize=False)
        theirs = hf(rendered, add_special_tokens=False)["input_ids"]
        assert theirs == ours, dialog
        n += 1
    assert n > 1000
    for doc in world.corpus():  # plain text, BOS added as Meta's encode(s, bos=True) does
        assert hf(doc.text)["input_ids"] == tok.encode(doc.text), doc.text[:80]


@pytest.mark.parametrize("text", ["  two leading spaces", " one", "tabs\tand\nnew lines\n", "ünïcødé 😀 ✓", "a  b   c",
                                  "", " ", "0123456789 + 42 = 7.5", "<0x41> [INST] [/INST] <<SYS>>"])  # fmt: skip
def test_edge_cases_encode_and_decode_alike(hf_folder, text):
    tok, folder = hf_folder
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tok.encode(text)
    assert hf(text)["input_ids"] == ids
    assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids) == text


def test_where_the_hf_tokenizer_differs_is_what_its_docstring_says(hf_folder):
    tok, folder = hf_folder
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    marker = tok.encode("x\u2581y", bos=False)  # ours: "▁" as three byte pieces, so that it round-trips
    assert hf("x\u2581y", add_special_tokens=False)["input_ids"] != marker
    assert hf.decode(marker) == "x\u2581y"  # decoding our ids is still exact
    assert hf("<s> hi", add_special_tokens=False)["input_ids"][0] == tok.bos_id  # a special token, ours text
    assert tok.encode("<s> hi", bos=False)[0] != tok.bos_id


def test_merges_follow_the_scores_and_reach_every_piece(hf_folder):
    tok, _ = hf_folder
    merges = bpe_merges(tok)
    scores = [tok._sp.get_score(tok.piece_to_id(a + b)) for a, b in merges]
    assert scores == sorted(scores, reverse=True)  # SentencePiece merges the best-scored piece first
    made = {a + b for a, b in merges}
    sp = tok._sp
    learnt = [sp.id_to_piece(i) for i in range(tok.n_words) if not (sp.is_control(i) or sp.is_unknown(i)
              or sp.is_byte(i)) and len(sp.id_to_piece(i)) > 1]  # fmt: skip
    assert learnt and all(piece in made for piece in learnt)


REFUSED = [({"model_type": "unigram"}, "unigram model, not BPE"), ({"byte_fallback": False}, "no byte-fallback"),
           ({"normalization_rule_name": "nmt_nfkc"}, "'nmt_nfkc' normalisation"),
           ({"remove_extra_whitespaces": True}, "remove_extra_whitespaces")]  # fmt: skip


@pytest.mark.parametrize("settings,problem", REFUSED)
def test_a_tokenizer_transformers_cannot_reproduce_is_refused(world, tmp_path, settings, problem):
    texts = [d.text for d in world.corpus()][:200]
    tok = train_tokenizer(texts, tmp_path / "tokenizer.model", vocab_size=400, **settings)
    with pytest.raises(ValueError, match=problem):
        check_llama_tokenizer(tok, "transformers")
    args = ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=400, multiple_of=16, max_seq_len=64)
    with pytest.raises(CheckpointError, match=problem):
        save_checkpoint(Transformer(args), tmp_path / "hf", layout="hf", tokenizer_model=tok.model_path)
    assert not (tmp_path / "hf").exists()


def test_a_file_that_is_not_a_sentencepiece_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a sentencepiece model")
    args = ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=300, multiple_of=16, max_seq_len=64)
    with pytest.raises(CheckpointError, match="tokenizer"):
        save_checkpoint(Transformer(args), tmp_path / "hf", layout="hf", tokenizer_model=bad)
    assert not (tmp_path / "hf").exists()  # nothing half-written


# --- the course's SFT model through transformers --------------------------------------------------------------


@pytest.fixture(scope="module")
def sft_hf(tmp_path_factory):
    """The ci SFT model (from the artefact cache, built if missing) converted with the command a learner runs."""
    src = artifacts.sft_folder("ci") / "model"
    dst = tmp_path_factory.mktemp("sft") / "sft-hf"
    assert main(["convert", str(src), str(dst), "--to", "hf"]) == 0
    return src, dst


def sample_prompts(world, per_kind=3):
    """The first held-out chat prompts of each kind (fact, arithmetic, story, borderline, unsafe)."""
    prompts = chat_prompts(world, "heldout")
    kinds = sorted({p.kind for p in prompts})
    return [p for kind in kinds for p in [q for q in prompts if q.kind == kind][:per_kind]]


def test_pipeline_gives_the_greedy_text_of_llama2_minimal_generate(sft_hf, world, capsys):
    src, folder = sft_hf
    pipe = transformers.pipeline("text-generation", model=str(folder), device="cpu")
    assert type(pipe.model).__name__ == "LlamaForCausalLM"
    for prompt in sample_prompts(world):
        assert main(["generate", str(src), "--prompt", prompt.text, "--chat", "--temperature", "0",
                     "--max-new-tokens", "48"]) == 0  # fmt: skip
        ours = capsys.readouterr().out.rstrip("\n")
        [out] = pipe([{"role": "user", "content": prompt.text}], max_new_tokens=48, do_sample=False)
        theirs = out["generated_text"][-1]
        assert theirs["role"] == "assistant" and theirs["content"].strip() == ours, prompt.text
        [out] = pipe(f"[INST] {prompt.text} [/INST]", max_new_tokens=48, do_sample=False, return_full_text=False)
        assert out["generated_text"].strip() == ours, prompt.text


def test_greedy_ids_and_logits_match_token_by_token(sft_hf, world):
    src, folder = sft_hf
    ours_model = load_checkpoint(src).eval()
    tok = Tokenizer(src / "tokenizer.model")
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for prompt in sample_prompts(world, per_kind=2):
        dialog = [{"role": "user", "content": prompt.text}]
        ids = encode_dialog(dialog, tok)
        assert hf_tok.apply_chat_template(dialog, tokenize=True, return_dict=True)["input_ids"] == ids
        [ours] = generate(ours_model, [ids], max_new_tokens=40, temperature=0, eos_id=tok.eos_id)
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False, eos_token_id=2,
                                    pad_token_id=2)[0, len(ids) :].tolist()  # fmt: skip
        assert (out[: out.index(2)] if 2 in out else out) == ours, prompt.text
        full = torch.tensor([ids + ours])
        with torch.no_grad():
            diff = (ours_model(full) - hf_model(full).logits).abs().max().item()
        assert diff < 1e-4, (prompt.text, diff)
