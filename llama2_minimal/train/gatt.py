"""Ghost Attention (§3.3): a chat model taught to keep an instruction given once, in the first turn, for the whole
dialog.

A model fine-tuned on single-turn demonstrations forgets an instruction a few turns after it was given (the paper's
Fig 9: "Always answer with emojis" holds for a turn or two). GAtt makes training data where the instruction holds
in every turn, then hides it in every turn but the first:

1. **Sample** (`sample_dialogs`): for a dialog's user messages u1 .. un and an instruction `inst`, the latest RLHF
   model answers turn after turn with `inst` written before *every* user message, so that it sees the instruction
   right where it answers, and keeps it as well as it keeps any instruction in a single turn.
2. **Build** (`gatt_examples`): the same dialog with `inst` kept only in the first user message, one training
   example per turn k: the dialog up to the k-th answer, the loss on that answer and its EOS alone. Every earlier
   token, the earlier answers included, is context with zero loss (the paper: "we simply set the loss to 0 for all
   the tokens from the previous turns, including assistant messages"), so the model learns to produce the k-th
   answer that follows the instruction from a dialog where only the first turn states it.
3. **Fine-tune** on those examples as SFT fine-tunes on its own (ids, answer mask) pairs (not written yet: train/sft.py
   `finetune` builds its examples from dialogs and learns every answer).

The world's instructions (world/instructions.py) each have a full and a short form; the short form stands for the
paper's terse "Figure: Napoleon.".
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..world import Instruction
from ..world.prompts import DialogSeed


@dataclass(frozen=True)
class GattDialog:
    """A dialog sampled for GAtt: its user messages (without the instruction), the instruction as it was written,
    and the answers, each given with the instruction before every user message."""

    id: str
    split: str
    instruction: str  # the words written before the user messages (an Instruction's full or short form)
    name: str  # the Instruction's name (what adherence is checked against)
    users: tuple[str, ...]
    answers: tuple[str, ...]


def with_instruction(instruction: str, user: str) -> str:
    """The user message as GAtt's sampling writes it: the instruction, then the message."""
    return f"{instruction} {user}"


def _messages(instruction: str, users: Sequence[str], answers: Sequence[str], every_turn: bool) -> list[dict]:
    """The user messages and answers interleaved, the instruction before every user message (every_turn) or before
    the first only."""
    dialog = []
    for i, user in enumerate(users):
        shown = with_instruction(instruction, user) if every_turn or i == 0 else user
        dialog.append({"role": "user", "content": shown})
        if i < len(answers):
            dialog.append({"role": "assistant", "content": answers[i]})
    return dialog


def sampling_dialog(instruction: str, users: Sequence[str], answers: Sequence[str],
                    every_turn: bool = True) -> list[dict]:  # fmt: skip
    """The dialog the model answers next: the instruction before every user message (step 1; every_turn=False: the
    first only, as a learner's dialog gives it), the answers so far, ending with the next user message
    (len(answers) == len(users) - 1)."""
    if len(answers) != len(users) - 1:
        raise ValueError(f"{len(users)} user messages need {len(users) - 1} answers before the next, "
                         f"got {len(answers)}")  # fmt: skip
    return _messages(instruction, users, answers, every_turn)


def training_dialog(dialog: GattDialog, turns: int | None = None) -> list[dict]:
    """The dialog as GAtt trains on it (step 2): the instruction only in the first user message, up to the answer
    of turn `turns` (all of them by default)."""
    turns = len(dialog.users) if turns is None else turns
    if not 1 <= turns <= len(dialog.users):
        raise ValueError(f"turns must be between 1 and {len(dialog.users)}, got {turns}")
    return _messages(dialog.instruction, dialog.users[:turns], dialog.answers[:turns], every_turn=False)


def draw_instructions(n: int, instructions: Sequence[Instruction], seed: int = 0,
                      short_share: float = 0.5) -> list[tuple[Instruction, str]]:  # fmt: skip
    """n instructions drawn with replacement, each as written: its short form with probability short_share."""
    if not instructions:
        raise ValueError("no instructions to draw from")
    rng = random.Random(seed)
    drawn = []
    for _ in range(n):
        instruction = rng.choice(list(instructions))
        drawn.append((instruction, instruction.short if rng.random() < short_share else instruction.text))
    return drawn


def sample_dialogs(answer: Callable[[list[list[dict]]], list[str]], seeds: Sequence[DialogSeed],
                   instructions: Sequence[Instruction], seed: int = 0,
                   short_share: float = 0.5) -> list[GattDialog]:  # fmt: skip
    """Step 1 for every dialog seed: an instruction drawn for it (its short form with probability short_share), then
    the answers turn by turn, all dialogs of a turn in one batch: answer(dialogs) returns the next answer of each
    (for a model: `lambda d: evaluation.chat_answers(model, tokenizer, d, ...)`)."""
    drawn = draw_instructions(len(seeds), instructions, seed, short_share)
    users = [[p.text for p in s.turns] for s in seeds]
    answers, _ = converse(answer, [text for _, text in drawn], users, every_turn=True)
    return [GattDialog(s.id, s.split, text, instruction.name, tuple(u), tuple(a))
            for s, (instruction, text), u, a in zip(seeds, drawn, users, answers)]  # fmt: skip


def converse(answer: Callable[[list[list[dict]]], list[str]], instructions: Sequence[str],
             users: Sequence[Sequence[str]], every_turn: bool) -> tuple[list[list[str]], list[tuple]]:  # fmt: skip
    """Dialog i (instruction instructions[i], user messages users[i]) answered turn after turn, all dialogs of a turn
    in one batch. Returns each dialog's answers and every (turn from 1, dialog index, the dialog answered, reply)."""
    answers: list[list[str]] = [[] for _ in users]
    seen = []
    for turn in range(max((len(u) for u in users), default=0)):
        active = [i for i, u in enumerate(users) if turn < len(u)]
        dialogs = [sampling_dialog(instructions[i], users[i][: turn + 1], answers[i], every_turn) for i in active]
        replies = answer(dialogs)
        if len(replies) != len(active):
            raise ValueError(f"answer() returned {len(replies)} answers for {len(active)} dialogs")
        for i, dialog, reply in zip(active, dialogs, replies):
            answers[i].append(reply)
            seen.append((turn + 1, i, dialog, reply))
    return answers, seen


def gatt_examples(dialog: GattDialog, tokenizer, max_len: int) -> list[tuple[list[int], list[int]]]:
    """Step 2: one (ids, loss mask) per turn k, the training dialog up to the k-th answer, the mask 1 on exactly the
    k-th answer's tokens and its EOS. A dialog longer than max_len tokens is an error naming the fix."""
    from ..chat import encode_dialog_turns

    examples = []
    for k in range(1, len(dialog.users) + 1):
        turns = encode_dialog_turns(training_dialog(dialog, k), tokenizer, allow_assistant_last=True)
        ids, mask = [], []
        for i, (prompt, answer) in enumerate(turns):
            ids += prompt + answer
            mask += [0] * len(prompt) + [int(i == k - 1)] * len(answer)
        if len(ids) > max_len:
            raise ValueError(f"dialog {dialog.id} up to turn {k} takes {len(ids)} tokens, more than the model's "
                             f"{max_len} (max_seq_len): use fewer turns or shorter answers, or train the model "
                             "with a longer context (the paper doubled Llama 2-Chat's to 4k for multi-turn "
                             "use)")  # fmt: skip
        examples.append((ids, mask))
    return examples


def adherence_by_turn(answer: Callable[[list[list[dict]]], list[str]], seeds: Sequence[DialogSeed],
                      instructions: Sequence[Instruction], judge, seed: int = 0,
                      every_turn: bool = False) -> dict[int, list[float]]:  # fmt: skip
    """Table 30's measurement: each dialog gets an instruction (drawn as in sample_dialogs) in its first user message
    only (every_turn: in every one, as GAtt samples), the model answers turn after turn, and the judge checks each
    answer against the instruction. Returns {turn (from 1): [adherence of each dialog's answer at that turn]}."""
    drawn = [text for _, text in draw_instructions(len(seeds), instructions, seed)]
    _, seen = converse(answer, drawn, [[p.text for p in s.turns] for s in seeds], every_turn)
    out: dict[int, list[float]] = {}
    for turn, _, dialog, reply in seen:
        out.setdefault(turn, []).append(judge.adherence(dialog, reply))
    return out


__all__ = ["GattDialog", "adherence_by_turn", "converse", "draw_instructions", "gatt_examples", "sample_dialogs",
           "sampling_dialog", "training_dialog", "with_instruction"]  # fmt: skip
