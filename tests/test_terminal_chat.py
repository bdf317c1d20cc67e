"""`llama2-minimal chat MODEL` (terminal_chat.py, generation.stream_generate): the answers are those of the package's
generate in Meta's format, streamed token by token; /reset, /quit and Ctrl-D work; a dialog that outgrows the
context is refused with a message. The command is driven through a pseudo-terminal, as a person would type."""

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest
import torch
from tiny_models import TINY_CONFIGS, random_model

from llama2_minimal import artifacts
from llama2_minimal.chat import encode_dialog
from llama2_minimal.checkpoint import save_checkpoint
from llama2_minimal.cli import _model_folder
from llama2_minimal.evaluation import chat_prompts
from llama2_minimal.generation import complete_chat, generate, stream_generate
from llama2_minimal.model import ModelArgs
from llama2_minimal.profiles import get_profile
from llama2_minimal.terminal_chat import AnswerPrinter, ChatSession, ContextFull
from llama2_minimal.tokenizer import train_tokenizer
from llama2_minimal.world import World

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "ran", "to", "red", "house", "where", "12", "dogs", "ate", "345",
         "fish", "at", "night"]  # fmt: skip
CONTEXT = 160


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random chat model (context 160) with a tokenizer, saved as a checkpoint folder."""
    root = tmp_path_factory.mktemp("chat")
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (12,), generator=g)) for _ in range(400)]
    lines.append("ünïcødé ✓ 😀 café")
    tok = train_tokenizer(lines, root / "tokenizer.model", vocab_size=300)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.n_words, multiple_of=16,
                     max_seq_len=CONTEXT)  # fmt: skip
    model = random_model(args, seed=12)
    with torch.no_grad():
        model.output.weight.mul_(8)  # peakier than random: greedy answers are not one token repeated
        model.output.weight[3:259] = 0  # and made of words, not of byte pieces (random bytes are no UTF-8)
    save_checkpoint(model, root / "model", tokenizer_model=root / "tokenizer.model")
    return root / "model", model, tok


# --- streaming ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("temperature,seed", [(0.0, None), (1.0, 3), (0.6, 7)])
def test_stream_generate_yields_the_ids_of_generate(config, temperature, seed):
    model = random_model(TINY_CONFIGS[config], seed=5)
    with torch.no_grad():
        model.output.weight.mul_(5)
    prompt = [1, 4, 7, 9, 3]
    [expected] = generate(model, [prompt], 80, temperature, 0.9, eos_id=2, seed=seed)
    assert list(stream_generate(model, prompt, 80, temperature, 0.9, eos_id=2, seed=seed)) == expected


def test_stream_generate_stops_at_the_end_of_the_context(folder):
    _, model, _ = folder
    prompt = [1] + [5] * (CONTEXT - 4)
    assert len(list(stream_generate(model, prompt, 50, 0.0, eos_id=None))) == 3
    with pytest.raises(ValueError, match="context"):
        next(stream_generate(model, [1] * CONTEXT, 5))


def test_the_answer_is_written_piece_by_piece_and_adds_up_to_the_answer(folder):
    _, _, tok = folder
    text = "the cat ünïcødé ✓ 😀 sat  "  # byte pieces for characters outside the vocabulary, trailing spaces
    ids = tok.encode(text, bos=False)
    writes = []
    printer = AnswerPrinter(tok, writes.append)
    for i in ids:
        printer.add(i)
    assert printer.finish() == text.strip() == "".join(writes)
    assert len(writes) > 5  # streamed, not written at the end
    assert not any("\ufffd" in w for w in writes)  # never half a character
    assert not writes[-1].endswith(" ")


# --- the dialog -------------------------------------------------------------------------------------------------


def test_each_turn_answers_the_whole_dialog_in_meta_s_format(folder):
    _, model, tok = folder
    session = ChatSession(model, tok, system="be brief", temperature=0, max_new_tokens=8)
    first = session.ask("the cat")
    dialog = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"}]
    assert [first.text] == complete_chat(model, tok, [dialog], 8, temperature=0)
    second = session.ask("a red house")
    dialog += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "a red house"}]
    assert second.prompt_tokens == len(encode_dialog(dialog, tok))
    assert [second.text] == complete_chat(model, tok, [dialog], 8, temperature=0)
    session.reset()
    assert session.messages == [] and session.ask("the cat").text == first.text  # the system message stays


def test_a_seed_makes_a_sampled_dialog_reproducible(folder):
    _, model, tok = folder

    def transcript(seed):
        session = ChatSession(model, tok, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=seed)
        return [session.ask(m).text for m in ("the cat", "a dog", "the fish")]

    assert transcript(3) == transcript(3) != transcript(4)


def test_a_dialog_that_outgrows_the_context_is_refused_with_the_fix(folder):
    _, model, tok = folder
    session = ChatSession(model, tok, temperature=0, max_new_tokens=30)
    reply = session.ask("the cat sat on the mat")
    assert reply.stop in ("eos", "length", "context")
    with pytest.raises(ContextFull, match="/reset"):
        session.ask("the red house where the dogs ate fish at night " * 8)
    assert len(session.messages) == 2  # the refused message is not part of the dialog
    with pytest.raises(ContextFull, match="shorter message"):
        ChatSession(model, tok).ask("the cat " * 100)


def test_stage_names_and_bad_names(folder, monkeypatch, tmp_path):
    path, _, _ = folder
    assert _model_folder(str(path), None) == path
    monkeypatch.setattr(artifacts, "rejection_folder", lambda profile, n: tmp_path / f"v{n}-{profile.name}")
    assert _model_folder("rlhf-v3", "ci") == tmp_path / "v3-ci" / "model"
    with pytest.raises(ValueError, match="stage name"):
        _model_folder("no-such-model", None)


# --- the command, through a pseudo-terminal ---------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")


class Terminal:
    """A command in a pseudo-terminal: type into it, wait for what it prints."""

    def __init__(self, argv):
        self.fd, child = pty.openpty()
        env = {**os.environ, "TERM": "dumb", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env, start_new_session=True)
        os.close(child)
        self.seen = ""  # everything printed so far, without terminal escapes
        self.pos = 0  # what expect has consumed

    def expect(self, pattern, timeout=120):
        deadline = time.monotonic() + timeout
        while True:
            match = re.compile(pattern).search(self.seen, self.pos)
            if match:
                self.pos = match.end()
                return match
            left = deadline - time.monotonic()
            ready = select.select([self.fd], [], [], max(0.0, left))[0] if left > 0 else []
            data = b""
            if ready:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:  # the command ended and closed its side
                    data = b""
            if not data and (left <= 0 or self.proc.poll() is not None):
                raise AssertionError(f"{pattern!r} never came; the terminal shows:\n{self.seen[self.pos :]}")
            self.seen += _ANSI.sub("", data.decode("utf-8", "replace"))

    def type(self, text):
        os.write(self.fd, text.encode())

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        os.close(self.fd)


@pytest.fixture
def terminal():
    opened = []
    yield lambda *args: opened.append(Terminal([sys.executable, "-m", "llama2_minimal", "chat", *map(str, args)])) or \
        opened[-1]  # fmt: skip
    for t in opened:
        t.close()


def answer_after(term, typed):
    """Type a line; return the model's answer (the text between "model> " and the next prompt)."""
    term.type(typed + "\n")
    return term.expect(r"model> (.*?)\n(?:\(.*\)\n)?you> ").group(1)


def test_a_chat_in_a_terminal(folder, terminal):
    path, model, tok = folder
    term = terminal(path, "--temperature", "0", "--max-new-tokens", "10", "--system", "be brief")
    term.expect(r"Chatting with .* context of 160 tokens.*\nsystem: be brief\n.*/reset.*/quit.*\nyou> ")
    dialog = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"}]
    first = answer_after(term, "the cat")
    assert first == complete_chat(model, tok, [dialog], 10, temperature=0)[0]
    dialog += [{"role": "assistant", "content": first}, {"role": "user", "content": "a red house"}]
    assert answer_after(term, "a red house") == complete_chat(model, tok, [dialog], 10, temperature=0)[0]
    term.type("the red house where the dogs ate fish at night " * 8 + "\n")
    term.expect(r"\(the dialog with your message is \d+ tokens, and the model's context holds 160 .*/reset.*\)\nyou> ")
    term.type("/reset\n")
    term.expect(r"\(a new dialog, with the same system message\)\nyou> ")
    assert answer_after(term, "the cat") == first  # the dialog starts afresh
    term.type("/nonsense\n")
    term.expect(r"unknown command /nonsense.*\nyou> ")
    term.type("/quit\n")
    term.expect(r"bye")
    assert term.proc.wait(30) == 0


def test_ctrl_d_leaves_and_a_bad_model_is_a_clear_error(folder, terminal, tmp_path):
    path, _, _ = folder
    term = terminal(path, "--temperature", "0")
    term.expect(r"you> ")
    term.type("\x04")  # Ctrl-D: end of input
    term.expect(r"bye")
    assert term.proc.wait(30) == 0
    term = terminal(tmp_path / "missing")
    term.expect(r"error: .*neither a checkpoint folder nor one of the course's models")
    assert term.proc.wait(30) == 2


def test_a_chat_with_the_course_s_sft_model_by_its_stage_name(terminal):
    """The ci SFT model (from the artefact cache, built if missing), named as a learner would name it."""
    folder = artifacts.sft_folder("ci") / "model"
    term = terminal("sft", "--profile", "ci", "--temperature", "0", "--max-new-tokens", "40")
    term.expect(rf"sft: the ci profile's model, {re.escape(str(folder))}")
    term.expect(r"you> ")
    model, tok = artifacts.sft_model("ci")
    heldout = chat_prompts(World(get_profile("ci").world), "heldout")
    for question in [next(p.text for p in heldout if p.kind == kind) for kind in ("fact", "arithmetic")]:
        answer = answer_after(term, question)
        assert answer == complete_chat(model, tok, [[{"role": "user", "content": question}]], 40, temperature=0)[0]
        term.type("/reset\n")
        term.expect(r"\(a new dialog\)\nyou> ")
    term.type("/quit\n")
    assert term.proc.wait(30) == 0
