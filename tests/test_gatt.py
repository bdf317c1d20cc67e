"""Ghost Attention's data (§3.3, train/gatt.py): sampled with the instruction in every user turn, trained with it
in the first turn only and the loss on the last answer alone."""

import pytest

from llama2_minimal.tokenizer import train_tokenizer
from llama2_minimal.train.gatt import (
    GattDialog,
    adherence_by_turn,
    gatt_examples,
    sample_dialogs,
    sampling_dialog,
    training_dialog,
)
from llama2_minimal.world import INSTRUCTIONS

LINES = [f"what is {a} plus {b} it is {a + b} and the capital of {c} is {d}" for a in range(6) for b in range(6)
         for c, d in (("avalon", "lumen"), ("brisk", "tor"))] + [i.text for i in INSTRUCTIONS] * 5  # fmt: skip


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(LINES, tmp_path_factory.mktemp("gatt") / "tokenizer.model", vocab_size=400)


def test_sampling_writes_the_instruction_before_every_user_message(world):
    seeds = world.dialog_seeds(split="train", n_turns=4)[:10]
    seen = []

    def answer(dialogs):
        seen.append(dialogs)
        return [f"answer {len(d) // 2}" for d in dialogs]

    dialogs = sample_dialogs(answer, seeds, INSTRUCTIONS, seed=0)
    assert len(seen) == 4 and all(len(batch) == 10 for batch in seen)  # one batch per turn, every dialog in it
    for batch in seen:
        for d in batch:
            users = [m["content"] for m in d if m["role"] == "user"]
            instruction = next(g.instruction for g in dialogs if d[0]["content"].startswith(g.instruction))
            assert all(u.startswith(instruction + " ") for u in users)  # in every turn, the last one included
            assert d[-1]["role"] == "user"
    assert all(g.answers == ("answer 0", "answer 1", "answer 2", "answer 3") for g in dialogs)
    assert all(g.users == tuple(p.text for p in s.turns) for g, s in zip(dialogs, seeds))
    forms = {g.instruction for g in sample_dialogs(answer, world.dialog_seeds(n_turns=1), INSTRUCTIONS, seed=1)}
    assert forms & {i.short for i in INSTRUCTIONS} and forms & {i.text for i in INSTRUCTIONS}  # both forms drawn
    with pytest.raises(ValueError, match="returned 1 answers for 10"):
        sample_dialogs(lambda d: ["one"], seeds, INSTRUCTIONS)


def test_a_training_example_keeps_the_instruction_in_the_first_turn_and_learns_only_the_last_answer(tok):
    dialog = GattDialog("d", "train", "Always answer in upper case.", "upper",
                        ("what is 1 plus 2", "what is 3 plus 4", "what is the capital of avalon"),
                        ("IT IS 3", "IT IS 7", "LUMEN"))  # fmt: skip
    examples = gatt_examples(dialog, tok, max_len=512)
    assert len(examples) == 3
    for k, (ids, mask) in enumerate(examples, start=1):
        text = tok.decode(ids)
        assert text.count("Always answer in upper case.") == 1 and text.index("upper case") < text.index("1 plus 2")
        learned = [i for i, m in zip(ids, mask) if m]
        assert tok.decode(learned).strip() == dialog.answers[k - 1]  # the k-th answer ...
        assert learned[-1] == tok.eos_id and learned.count(tok.eos_id) == 1  # ... and its EOS, nothing else
        assert mask[: len(mask) - len(learned)] == [0] * (len(mask) - len(learned))  # everything before: context
        assert ids.count(tok.bos_id) == k  # the whole dialog up to turn k
    assert training_dialog(dialog)[2]["content"] == "what is 3 plus 4"  # later user turns carry no instruction
    with pytest.raises(ValueError, match="longer context"):
        gatt_examples(dialog, tok, max_len=40)


def test_the_sampling_dialog_needs_one_answer_less_than_user_messages():
    assert sampling_dialog("Pirate.", ["a", "b"], ["x"])[-1] == {"role": "user", "content": "Pirate. b"}
    with pytest.raises(ValueError, match="need 1 answers"):
        sampling_dialog("Pirate.", ["a", "b"], [])


def test_adherence_by_turn_gives_the_instruction_once_and_checks_every_answer(world):
    seeds = world.dialog_seeds(split="heldout", n_turns=3)[:12]

    def follows_what_it_sees(dialogs):  # keeps an instruction only while the last user message shows it
        replies = []
        for d in dialogs:
            last = d[-1]["content"]
            seen = [i for i in INSTRUCTIONS if last.startswith((i.text, i.short))]
            replies.append(seen[0].apply("it is seven.") if seen else "it is seven.")
        return replies

    once = adherence_by_turn(follows_what_it_sees, seeds, INSTRUCTIONS, world.judge)
    assert sorted(once) == [1, 2, 3] and all(len(v) == 12 for v in once.values())
    assert once[1] == [1.0] * 12 and once[2] == once[3] == [0.0] * 12  # forgotten once it is out of sight
    every = adherence_by_turn(follows_what_it_sees, seeds, INSTRUCTIONS, world.judge, every_turn=True)
    assert all(v == [1.0] * 12 for v in every.values())
