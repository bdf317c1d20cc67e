"""`llama2-minimal chat MODEL`: talk to a chat model in the terminal, in Meta's dialog format.

    llama2-minimal chat sft --system "Answer in upper case."
    you> Name the capital city of Nivas.
    model> THE CAPITAL OF NIVAS IS ...
    you> /reset

Every turn is encoded as Meta's chat_completion does (chat.encode_dialog: the whole dialog so far, each finished
exchange between BOS and EOS), and the answer is printed token by token as it is decoded (generation.stream_generate
with the KV cache). /reset starts a new dialog (the system message stays), /quit or Ctrl-D leaves, Ctrl-C stops an
answer. A dialog longer than the model's context (max_seq_len) is not cut silently: the message that does not fit
is refused with a message that says so, and an answer that reaches the end of the context says where it stopped.

`ChatSession` holds the dialog and needs no terminal; `run_chat` is the loop the command runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from .chat import encode_dialog
from .generation import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, stream_generate
from .model import Transformer

COMMANDS = {"/reset": "start a new dialog (the system message stays)", "/quit": "leave (Ctrl-D too)",
            "/help": "show these commands"}  # fmt: skip
_REPLACEMENT = "\ufffd"  # what a UTF-8 character cut in the middle of its byte pieces decodes to


class ContextFull(ValueError):
    """The dialog with the new message does not fit in the model's context."""


@dataclass
class Reply:
    text: str  # the answer as complete_chat gives it (decoded, stripped)
    ids: list[int]
    stop: str  # "eos" (the model ended its answer), "length" (max_new_tokens) or "context" (max_seq_len reached)
    prompt_tokens: int  # the dialog's length in tokens before the answer


class AnswerPrinter:
    """Turns ids into text as they come: decodes the answer so far and writes what is new. Text is held back while
    it ends in the middle of a character (byte pieces) or in spaces (the answer's final space is not shown), so that
    what is written adds up to the stripped answer."""

    def __init__(self, tokenizer, write: Callable[[str], object]):
        self.tokenizer, self.write = tokenizer, write
        self.ids: list[int] = []
        self.shown = ""

    def add(self, token_id: int) -> None:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids).strip()
        if not text.endswith(_REPLACEMENT) and text.startswith(self.shown) and len(text) > len(self.shown):
            self.write(text[len(self.shown) :])
            self.shown = text

    def finish(self) -> str:
        """Write what was held back (an unfinished character) and return the whole answer."""
        text = self.tokenizer.decode(self.ids).strip()
        if text.startswith(self.shown) and len(text) > len(self.shown):
            self.write(text[len(self.shown) :])
            self.shown = text
        return text


@dataclass
class ChatSession:
    """A dialog with a chat model: the system message, the messages so far, and the sampling settings."""

    model: Transformer
    tokenizer: object
    system: str | None = None
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_new_tokens: int = 256
    seed: int | None = None  # answer n is sampled with seed + n: a whole transcript is reproducible
    messages: list[dict] = field(default_factory=list)

    @property
    def context(self) -> int:
        return self.model.params.max_seq_len

    def reset(self) -> None:
        self.messages = []

    def dialog(self, message: str) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.messages, {"role": "user", "content": message}]

    def prompt(self, message: str) -> list[int]:
        """The ids the model reads for this message: the dialog so far and the message in Meta's format. Raises
        ContextFull when they leave no room for an answer, ValueError for a message the format refuses."""
        ids = encode_dialog(self.dialog(message), self.tokenizer)
        if len(ids) >= self.context:
            what = "the dialog with your message" if self.messages else "your message"
            raise ContextFull(
                f"{what} is {len(ids)} tokens, and the model's context holds {self.context} (max_seq_len): "
                + ("type /reset to start a new dialog, then ask again." if self.messages else
                   "write a shorter message" + (" or a shorter --system message." if self.system else "."))
            )  # fmt: skip
        return ids

    def ask(self, message: str, on_token: Callable[[int], object] | None = None) -> Reply:
        """Answer the message (streaming each id to on_token) and add the exchange to the dialog."""
        ids = self.prompt(message)
        seed = None if self.seed is None else self.seed + len(self.messages) // 2
        new: list[int] = []
        for token in stream_generate(self.model, ids, self.max_new_tokens, self.temperature, self.top_p,
                                     eos_id=self.tokenizer.eos_id, seed=seed):  # fmt: skip
            new.append(token)
            if on_token is not None:
                on_token(token)
        if len(ids) + len(new) >= self.context:
            stop = "context"
        elif len(new) >= self.max_new_tokens:
            stop = "length"
        else:
            stop = "eos"
        text = self.tokenizer.decode(new).strip()
        self.messages += [{"role": "user", "content": message}, {"role": "assistant", "content": text}]
        return Reply(text, new, stop, len(ids))


def run_chat(session: ChatSession, name: str = "the model", read: Callable[[str], str] = input,
             out=None) -> int:  # fmt: skip
    """The interactive loop: read a line, answer it token by token, until /quit or end of input."""
    out = out or sys.stdout

    def say(text: str = "", end: str = "\n") -> None:
        out.write(text + end)
        out.flush()

    params = session.model.params
    say(f"Chatting with {name} ({session.model.num_parameters():,} parameters, a context of {params.max_seq_len} "
        f"tokens) in Meta's chat format; temperature {session.temperature:g}, top-p {session.top_p:g}.")  # fmt: skip
    if session.system:
        say(f"system: {session.system}")
    say("Commands: " + ", ".join(COMMANDS) + ".")
    while True:
        try:
            line = read("you> ")
        except EOFError:
            say()
            break
        except KeyboardInterrupt:
            say()
            continue
        message = line.strip()
        if not message:
            continue
        if message.startswith("/"):
            command = message.split()[0].lower()
            if command in ("/quit", "/exit"):
                break
            if command == "/reset":
                session.reset()
                say("(a new dialog" + (", with the same system message)" if session.system else ")"))
            elif command == "/help":
                for cmd, what in COMMANDS.items():
                    say(f"  {cmd:<8}{what}")
            else:
                say(f"unknown command {command}: the commands are " + ", ".join(COMMANDS) + ".")
            continue
        try:
            session.prompt(message)  # refuse what does not fit before printing "model>"
        except ValueError as err:  # ContextFull, or a chat tag inside the message
            say(f"({err})")
            continue
        say("model> ", end="")
        printer = AnswerPrinter(session.tokenizer, lambda text: say(text, end=""))
        try:
            reply = session.ask(message, printer.add)
        except KeyboardInterrupt:
            printer.finish()
            say("\n(interrupted: this answer is left out of the dialog)")
            continue
        printer.finish()
        say()
        if reply.stop == "context":
            say(f"(the answer reached the end of the model's context of {session.context} tokens and was cut "
                "there; type /reset to start a new dialog)")  # fmt: skip
        elif reply.stop == "length":
            say(f"(the answer was cut at --max-new-tokens {session.max_new_tokens})")
    say("bye")
    return 0
