"""Tests for llama2_minimal.chat: Meta's Llama 2-Chat dialog format (llama/generation.py chat_completion)."""

from __future__ import annotations

import random

import pytest

from llama2_minimal.chat import (
    B_INST,
    B_SYS,
    E_INST,
    E_SYS,
    SPECIAL_TAGS,
    dialog_turns,
    encode_dialog,
    encode_dialog_turns,
    render_dialog,
)
from llama2_minimal.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="session")
def tok(tmp_path_factory) -> Tokenizer:
    rng = random.Random(1)
    words = ["what", "is", "the", "capital", "of", "france", "paris", "answer", "briefly", "you", "are", "a"]
    words += ["helpful", "assistant", "thanks"]
    lines = [" ".join(rng.choice(words) for _ in range(12)) + f" {rng.randint(0, 999)}?" for _ in range(300)]
    lines += ["[INST] <<SYS>> <</SYS>> [/INST]"] * 20
    return train_tokenizer(lines, tmp_path_factory.mktemp("chat") / "tokenizer.model", 320)


def u(content):
    return {"role": "user", "content": content}


def a(content):
    return {"role": "assistant", "content": content}


def s(content):
    return {"role": "system", "content": content}


def test_constants_match_meta():
    assert (B_INST, E_INST) == ("[INST]", "[/INST]")
    assert (B_SYS, E_SYS) == ("<<SYS>>\n", "\n<</SYS>>\n\n")
    assert SPECIAL_TAGS == ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]


# --- golden strings -------------------------------------------------------------------------------------


def test_render_single_turn():
    assert render_dialog([u("hi")]) == "<s>[INST] hi [/INST]"


def test_render_strips_user_and_assistant_content():
    assert render_dialog([u("  hi \n"), a("\n hello  "), u(" bye ")]) == (
        "<s>[INST] hi [/INST] hello </s><s>[INST] bye [/INST]"
    )


def test_render_system_and_user():
    assert render_dialog([s("Be brief."), u("What is the capital of France?")]) == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is the capital of France? [/INST]"
    )


def test_render_system_is_merged_before_stripping_like_meta():
    # Meta strips B_SYS + system + E_SYS + user as a whole: the system text keeps its own whitespace and
    # the user text keeps its leading whitespace.
    assert render_dialog([s("  sys  "), u("  hi  ")]) == ("<s>[INST] <<SYS>>\n  sys  \n<</SYS>>\n\n  hi [/INST]")


def test_render_multi_turn():
    dialog = [u("u1"), a("a1"), u("u2")]
    assert render_dialog(dialog) == "<s>[INST] u1 [/INST] a1 </s><s>[INST] u2 [/INST]"


def test_render_system_and_multi_turn():
    dialog = [s("sys"), u("u1"), a("a1"), u("u2"), a("a2"), u("u3")]
    assert render_dialog(dialog) == (
        "<s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nu1 [/INST] a1 </s><s>[INST] u2 [/INST] a2 </s><s>[INST] u3 [/INST]"
    )


def test_dialog_turns():
    assert dialog_turns([u("hi")]) == [("[INST] hi [/INST]", None)]
    assert dialog_turns([s("sys"), u(" u1 "), a(" a1 "), u("u2")]) == [
        ("[INST] <<SYS>>\nsys\n<</SYS>>\n\n u1 [/INST]", " a1 "),  # Meta keeps this space
        ("[INST] u2 [/INST]", None),
    ]
    # A training example ends with the answer; every turn is then complete.
    assert dialog_turns([u("u1"), a("a1")], allow_assistant_last=True) == [("[INST] u1 [/INST]", " a1 ")]


def test_dialog_turns_accepts_tuple_and_does_not_mutate():
    dialog = [s("sys"), u("hi")]
    before = [dict(m) for m in dialog]
    assert dialog_turns(tuple(dialog)) == dialog_turns(dialog)
    assert dialog == before


# --- token ids ------------------------------------------------------------------------------------------

DIALOGS = {
    "single": [u("What is the capital of France?")],
    "system": [s("You are a helpful assistant."), u("capital of france?")],
    "multi": [u("what is the capital of france"), a("Paris."), u("thanks, answer briefly")],
    "system_multi": [s("answer briefly"), u(" what is 2+2 "), a(" 4 "), u("and 3+3?"), a("6"), u("thanks")],
}


def meta_encode(dialog, tok):
    """Meta's chat_completion encoding, written out independently of chat.py."""
    if dialog[0]["role"] == "system":
        first = B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]
        dialog = [{"role": "user", "content": first}, *dialog[2:]]
    ids = []
    for prompt, answer in zip(dialog[::2], dialog[1::2], strict=False):
        text = f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} "
        ids += tok.encode(text, bos=True, eos=True)
    return ids + tok.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}", bos=True, eos=False)


@pytest.mark.parametrize("name", DIALOGS)
def test_encode_dialog_matches_meta(tok, name):
    dialog = DIALOGS[name]
    ids = encode_dialog(dialog, tok)
    assert ids == meta_encode(dialog, tok)
    n_turns = sum(m["role"] == "user" for m in dialog)
    assert ids.count(tok.bos_id) == n_turns
    assert ids.count(tok.eos_id) == n_turns - 1
    assert ids[0] == tok.bos_id and ids[-1] != tok.eos_id
    # Decoding each BOS..EOS segment gives back the rendered text between the markers.
    segments = render_dialog(dialog).replace("</s>", "").split("<s>")[1:]
    bos_at = [i for i, t in enumerate(ids) if t == tok.bos_id] + [len(ids)]
    decoded = [tok.decode(ids[b:e]) for b, e in zip(bos_at, bos_at[1:], strict=False)]
    assert decoded == segments


@pytest.mark.parametrize("name", DIALOGS)
def test_encode_dialog_turns_gives_prompt_answer_split(tok, name):
    dialog = DIALOGS[name]
    turns = encode_dialog_turns(dialog, tok)
    texts = dialog_turns(dialog)
    assert [i for p, ans in turns for i in p + ans] == encode_dialog(dialog, tok)
    for (prompt_ids, answer_ids), (prompt, answer) in zip(turns, texts, strict=True):
        assert prompt_ids == tok.encode(prompt, bos=True, eos=False)
        if answer is None:
            assert answer_ids == []
        else:
            assert answer_ids[-1] == tok.eos_id and tok.eos_id not in answer_ids[:-1]
            assert tok.decode(prompt_ids + answer_ids) == prompt + answer
    # An answer-only loss mask covers exactly the answer tokens.
    mask = [m for p, ans in turns for m in [0] * len(p) + [1] * len(ans)]
    assert sum(mask) == sum(len(ans) for _, ans in turns)


def test_encode_dialog_turns_training_example(tok):
    dialog = [u("what is the capital of france"), a("Paris.")]
    turns = encode_dialog_turns(dialog, tok, allow_assistant_last=True)
    full = tok.encode("[INST] what is the capital of france [/INST] Paris. ", bos=True, eos=True)
    assert len(turns) == 1 and turns[0][0] + turns[0][1] == full
    assert tok.decode(turns[0][1]) == "Paris. "
    with pytest.raises(ValueError, match="last message must be from the user"):
        encode_dialog_turns(dialog, tok)


class _MergingTokenizer:
    """A tokenizer whose last prompt id changes when text follows: the split cannot be made."""

    def encode(self, s, bos=True, eos=False):
        return [1] * bos + [len(s)] + [2] * eos


def test_encode_dialog_turns_rejects_tokenizer_that_merges_across_boundary():
    with pytest.raises(ValueError, match="merges the end of the prompt"):
        encode_dialog_turns([u("hi"), a("hello"), u("bye")], _MergingTokenizer())


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialog", "match"),
    [
        ([], "dialog is empty"),
        ([a("hello")], "out of place"),
        ([u("a"), u("b")], "out of place"),
        ([u("a"), a("b"), a("c"), u("d")], "out of place"),
        ([u("a"), s("sys"), u("b")], "'system' message is out of place"),
        ([s("sys"), s("sys2"), u("b")], "must be followed by a user message"),
        ([s("sys")], "must be followed by a user message"),
        ([s("sys"), a("b"), u("c")], "must be followed by a user message"),
        ([u("a"), a("b")], "last message must be from the user"),
        ([s("sys"), u("a"), a("b")], "last message must be from the user"),
        ([{"role": "bot", "content": "x"}], "unknown role 'bot'"),
        ([u("a"), {"role": "tool", "content": "x"}, u("b")], "unknown role 'tool'"),
        ([{"content": "x"}], "'role' and 'content'"),
        ([{"role": "user"}], "'role' and 'content'"),
        (["just a string"], "'role' and 'content'"),
        ([u(None)], "content must be a str"),
    ],
)
def test_invalid_dialogs(tok, dialog, match):
    with pytest.raises(ValueError, match=match):
        dialog_turns(dialog)
    with pytest.raises(ValueError, match=match):
        render_dialog(dialog)
    with pytest.raises(ValueError, match=match):
        encode_dialog(dialog, tok)


@pytest.mark.parametrize("tag", SPECIAL_TAGS)
@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_special_tags_in_content_are_rejected(tok, tag, position):
    dialog = [s("sys"), u("u1"), a("a1"), u("u2")]
    dialog[position] = {**dialog[position], "content": f"before {tag} after"}
    for call in (dialog_turns, render_dialog, lambda d: encode_dialog(d, tok)):
        with pytest.raises(ValueError, match="special tag") as info:
            call(dialog)
        assert tag in str(info.value)


def test_not_a_list():
    with pytest.raises(TypeError, match="list of messages"):
        dialog_turns(u("hi"))
