"""Supervised fine-tuning data (§3.1): the answer-only mask and packing several dialogs into one row."""

import pytest
import torch
import torch.nn.functional as F

from llama2_minimal.data import IGNORE, pack_sft, sft_example
from llama2_minimal.tokenizer import train_tokenizer

LINES = [f"the {a} of {b} is {c} and {d}" for a in ("cat", "dog", "owl") for b in ("red", "blue") for c in "xyz"
         for d in ("one", "two", "three")] * 4  # fmt: skip


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(LINES, tmp_path_factory.mktemp("sft") / "tokenizer.model", vocab_size=300)


def dialog(*texts):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


def test_the_mask_covers_exactly_the_answers_and_their_eos(tok):
    ids, mask = sft_example(dialog("the cat of red", "is x", "the dog of blue", "is y and two"), tok)
    answer_ids = [i for i, m in zip(ids, mask) if m]
    # Both answers with Meta's format (" answer " then EOS), nothing of the prompts.
    assert tok.decode(answer_ids) == "is x  is y and two "
    assert [i for i, m in zip(ids, mask) if m and i == tok.eos_id] == [tok.eos_id, tok.eos_id]  # each answer's EOS
    assert ids.count(tok.bos_id) == 2 and mask[ids.index(tok.bos_id)] == 0
    assert tok.decode([i for i, m in zip(ids, mask) if not m]).count("[INST]") == 2


def test_packing_keeps_dialogs_whole_and_masks_prompts_and_padding(tok):
    examples = [sft_example(dialog(f"the {a} of red", f"is {c}"), tok) for a in ("cat", "dog", "owl") for c in "xy"]
    width = len(examples[0][0])
    batch = pack_sft(examples, seq_len=2 * width + 2)
    inputs, targets = batch["inputs"], batch["targets"]
    assert inputs.shape == targets.shape and inputs.shape[1] == 2 * width + 2
    assert inputs.shape[0] == 3  # two dialogs per row
    learned = targets[targets != IGNORE]
    expected = [i for ids, mask in examples for i, m in zip(ids, mask) if m]
    assert learned.tolist() == expected  # every answer token and EOS, in order, nothing else
    assert (targets[:, -1] == IGNORE).all()  # padding at the end of the rows is not learned
    with pytest.raises(ValueError, match="does not fit"):
        pack_sft(examples, seq_len=width - 5)


def test_the_loss_does_not_depend_on_the_logits_at_prompt_positions(tok):
    examples = [sft_example(dialog("the cat of red", "is x"), tok), sft_example(dialog("the owl of blue", "is z"), tok)]
    batch = pack_sft(examples, seq_len=64)
    targets = batch["targets"]
    logits = torch.randn(*targets.shape, tok.n_words, requires_grad=True)
    loss = F.cross_entropy(logits.reshape(-1, tok.n_words), targets.reshape(-1), ignore_index=IGNORE)
    loss.backward()
    prompt_positions = targets == IGNORE
    assert (logits.grad[prompt_positions] == 0).all() and (logits.grad[~prompt_positions] != 0).any()
    perturbed = logits.detach().clone()
    perturbed[prompt_positions] += 100 * torch.randn_like(perturbed[prompt_positions])
    again = F.cross_entropy(perturbed.reshape(-1, tok.n_words), targets.reshape(-1), ignore_index=IGNORE)
    assert torch.equal(again, loss.detach())
