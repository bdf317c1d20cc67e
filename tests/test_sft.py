"""Supervised fine-tuning (§3.1): demonstrations by careful and sloppy annotators, the flaws, and fine-tuning."""

import random

import pytest
import torch

from llama2_minimal.data import IGNORE, pack_sft, sft_example
from llama2_minimal.model import ModelArgs, Transformer
from llama2_minimal.tokenizer import train_tokenizer
from llama2_minimal.train.sft import PackedRows, demonstrations, finetune, sft_prompts
from llama2_minimal.world import RISK_CATEGORIES
from llama2_minimal.world.demonstrations import FLAWS, flawed, sloppy


def judged(world, prompt, answer, criterion="helpfulness"):
    return world.judge.score(criterion, [{"role": "user", "content": prompt.text}], answer)


def test_careful_demonstrations_are_the_references_and_score_full_marks(world):
    demos = demonstrations(world, "careful")
    assert len(demos) == len(sft_prompts(world)) and all(d.answer == d.prompt.reference for d in demos)
    for d in demos:
        if d.prompt.kind in ("fact", "arithmetic", "borderline"):
            assert judged(world, d.prompt, d.answer) == 1.0, d
        if d.prompt.kind == "unsafe":  # safety SFT: a refusal that names the risk category
            assert judged(world, d.prompt, d.answer, "safety") == 1.0
            assert RISK_CATEGORIES[d.prompt.category] in d.answer and d.answer.startswith("I can't")


def test_a_smaller_share_of_prompts_is_part_of_a_larger_one(world):
    small = {d.prompt.id for d in demonstrations(world, fraction=0.25)}
    large = {d.prompt.id for d in demonstrations(world, fraction=0.5)}
    assert small < large and len(large) == round(0.5 * len(sft_prompts(world)))
    with pytest.raises(ValueError, match="share"):
        demonstrations(world, fraction=0.0)
    with pytest.raises(ValueError, match="careful"):
        demonstrations(world, "lazy")


def test_the_sloppy_annotator_writes_flawed_answers_at_its_error_rate(world):
    demos = demonstrations(world, "sloppy", copies=2, error_rate=0.5)
    assert len(demos) == 2 * len(sft_prompts(world))
    flawed_share = sum(d.answer != d.prompt.reference for d in demos) / len(demos)
    assert 0.4 < flawed_share < 0.6
    helpful = [d for d in demos if d.prompt.kind in ("fact", "arithmetic")]
    assert sum(judged(world, d.prompt, d.answer) for d in helpful) / len(helpful) < 0.8
    rng = random.Random(0)
    assert all(sloppy(p, world.entities, rng, error_rate=0.0) == p.reference for p in sft_prompts(world))


@pytest.mark.parametrize("kind", sorted(FLAWS))
def test_every_flaw_is_worse_than_the_reference_by_the_judge(world, kind):
    rng = random.Random(1)
    prompts = [p for p in world.prompts(kind=kind)][:6]
    for prompt in prompts:
        for flaw in FLAWS[kind]:
            text = flawed(prompt, world.entities, rng, flaw)
            assert text != prompt.reference
            if kind == "unsafe":
                if flaw == "comply":  # does what was asked: helpful and unsafe
                    assert judged(world, prompt, text, "safety") == 0.0 and judged(world, prompt, text) == 1.0
                elif flaw == "comply_wrong":  # tries and fails: unsafe and unhelpful
                    assert judged(world, prompt, text, "safety") == 0.0 and judged(world, prompt, text) < 0.2
                else:  # vague: safe, and neither helps nor refuses
                    assert judged(world, prompt, text, "safety") == 1.0 and judged(world, prompt, text) < 0.2
            else:
                assert judged(world, prompt, text) < judged(world, prompt, prompt.reference), (flaw, text)
    with pytest.raises(ValueError, match="does not apply"):
        flawed(prompts[0], world.entities, rng, "no such flaw")


def test_packed_rows_visit_every_row_once_per_epoch():
    packed = {"inputs": torch.arange(10).view(10, 1), "targets": torch.arange(10).view(10, 1)}
    rows = PackedRows(packed, batch_size=3, seed=0)
    assert rows.steps_per_epoch() == 4
    epoch = torch.cat([rows(step, 0)["inputs"] for step in range(4)]).flatten().tolist()
    assert sorted(epoch) == list(range(10))
    second = torch.cat([rows(step, 0)["inputs"] for step in range(4, 8)]).flatten().tolist()
    assert sorted(second) == list(range(10)) and second != epoch  # a fresh order each epoch
    halves = [rows(0, 0, rank, 2)["inputs"].flatten().tolist() for rank in (0, 1)]
    assert sorted(halves[0] + halves[1]) == sorted(rows(0, 0)["inputs"].flatten().tolist())


def test_finetuning_learns_the_answers_and_not_the_prompts(tmp_path):
    questions = [f"what is the colour of the {a} {b}" for a in ("cat", "dog", "owl", "fox") for b in ("one", "two")]
    answers = {q: f"the {q.split()[-2]} is {c}" for q, c in zip(questions, ["red", "blue"] * 4)}
    tok = train_tokenizer(questions + list(answers.values()) * 5, tmp_path / "t.model", vocab_size=300)
    dialogs = [[{"role": "user", "content": q}, {"role": "assistant", "content": answers[q]}] for q in questions]
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=tok.n_words, max_seq_len=128))
    batch = pack_sft([sft_example(d, tok) for d in dialogs], seq_len=127, pad_id=tok.eos_id)

    def losses():
        with torch.no_grad():
            logits = model(batch["inputs"])
        per = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["inputs"].roll(-1, 1), reduction="none")
        answer = batch["targets"] != IGNORE
        return per[answer].mean().item(), per[~answer].mean().item()

    answer_before, prompt_before = losses()
    finetune(model, tok, dialogs, epochs=40, batch_size=1, lr=1e-2, seq_len=127, progress=False)
    answer_after, prompt_after = losses()
    assert answer_after < 0.3 * answer_before
    assert prompt_after > 0.6 * prompt_before  # nothing pushed the prompts' tokens to be likely
