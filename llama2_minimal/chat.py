"""Llama 2-Chat's dialog format, exactly as Meta's ``llama/generation.py`` (``chat_completion``) builds it.

A dialog is a list of messages: an optional system message, then user and assistant messages alternating,
starting with the user. The system message is folded into the first user message between ``<<SYS>>``
markers (Meta's ``B_SYS``/``E_SYS``), and every user/assistant exchange is its own BOS ... EOS sequence,
so the model learns to close an answer with EOS.

``dialog_turns`` splits a dialog into (prompt text, answer text) per turn; ``encode_dialog_turns`` gives the
same split in token ids, so an SFT stage can zero the loss on prompt tokens and train on answers only
(Llama 2 paper §3.1: "we zero-out the loss on tokens from the user prompt").
"""

from __future__ import annotations

from typing import Literal, Protocol, TypedDict

__all__ = [
    "B_INST",
    "B_SYS",
    "CHAT_TEMPLATE",
    "E_INST",
    "E_SYS",
    "SPECIAL_TAGS",
    "Dialog",
    "Message",
    "dialog_turns",
    "encode_dialog",
    "encode_dialog_turns",
    "render_dialog",
]

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
# Meta refuses a dialog whose content holds these tags: a user could otherwise close the instruction or
# forge a system prompt from inside a message.
SPECIAL_TAGS = [B_INST, E_INST, "<<SYS>>", "<</SYS>>"]

Role = Literal["system", "user", "assistant"]
_ROLES = ("system", "user", "assistant")


class Message(TypedDict):
    role: Role
    content: str


Dialog = list[Message]


class _Encoder(Protocol):
    def encode(self, s: str, bos: bool = True, eos: bool = False) -> list[int]: ...


def _check_messages(dialog: Dialog) -> None:
    if not isinstance(dialog, (list, tuple)):
        raise TypeError(f"a dialog is a list of messages, got {type(dialog).__name__}")
    if not dialog:
        raise ValueError("the dialog is empty: give at least one {'role': 'user', 'content': ...} message")
    for i, msg in enumerate(dialog):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content' keys, got {msg!r}")
        if msg["role"] not in _ROLES:
            raise ValueError(f"message {i} has unknown role {msg['role']!r}; use one of 'system', 'user', 'assistant'")
        if not isinstance(msg["content"], str):
            raise ValueError(f"message {i} content must be a str, got {type(msg['content']).__name__}")
        tags = [tag for tag in SPECIAL_TAGS if tag in msg["content"]]
        if tags:
            raise ValueError(
                f"message {i} ({msg['role']}) contains the special tag(s) {tags}, which are not allowed "
                "in content (they would break the prompt format); remove them from the text"
            )


def dialog_turns(dialog: Dialog, *, allow_assistant_last: bool = False) -> list[tuple[str, str | None]]:
    """Validate ``dialog`` and return one ``(prompt_text, answer_text)`` pair per turn.

    ``prompt_text`` is ``f"{B_INST} {user.strip()} {E_INST}"`` (with the system message folded into the
    first user message as ``B_SYS + system + E_SYS + user``, as Meta does) and ``answer_text`` is
    ``f" {answer.strip()} "``, or ``None`` for the final user turn that awaits an answer. For a completed
    turn ``prompt_text + answer_text`` is the exact text Meta encodes between BOS and EOS.

    A prompt for generation must end with a user message. ``allow_assistant_last=True`` also accepts a
    dialog ending with an assistant message (an SFT example); every turn then has an answer.
    Raises ``ValueError`` naming the fix for an empty dialog, roles out of order, a last message from the
    wrong role, an unknown role, or a special tag inside a content.
    """
    _check_messages(dialog)
    messages = [(m["role"], m["content"]) for m in dialog]
    if messages[0][0] == "system":
        if len(messages) < 2 or messages[1][0] != "user":
            raise ValueError("the system message must be followed by a user message; add one after it")
        # Meta strips the merged text, not the system prompt itself.
        messages = [("user", B_SYS + messages[0][1] + E_SYS + messages[1][1]), *messages[2:]]
    for i, (role, _) in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            where = "only first" if role == "system" else "in user/assistant alternation"
            raise ValueError(
                f"roles must be: optional 'system' first, then 'user' and 'assistant' alternating, "
                f"starting with 'user' (u/a/u/a/u...); a {role!r} message is out of place ({where}). "
                "Reorder or merge the messages"
            )
    if messages[-1][0] != "user" and not allow_assistant_last:
        raise ValueError(
            f"the last message must be from the user, got {messages[-1][0]!r}: the model answers the last "
            "user message; drop the trailing assistant message or add a user message after it "
            "(pass allow_assistant_last=True for a training example)"
        )
    turns: list[tuple[str, str | None]] = []
    for i in range(0, len(messages), 2):
        prompt = f"{B_INST} {messages[i][1].strip()} {E_INST}"
        answer = f" {messages[i + 1][1].strip()} " if i + 1 < len(messages) else None
        turns.append((prompt, answer))
    return turns


def render_dialog(dialog: Dialog) -> str:
    """The dialog as the model sees it, with literal ``<s>``/``</s>`` where BOS/EOS ids go.

    E.g. ``"<s>[INST] u [/INST] a </s><s>[INST] next [/INST]"``. For reading only: encoding this string
    would tokenize "<s>" as text; use ``encode_dialog`` for ids.
    """
    return "".join(
        f"<s>{prompt}{answer}</s>" if answer is not None else f"<s>{prompt}" for prompt, answer in dialog_turns(dialog)
    )


def encode_dialog(dialog: Dialog, tokenizer: _Encoder) -> list[int]:
    """Meta's ``chat_completion`` encoding: each completed turn is encoded with BOS and EOS, the final
    user turn with BOS only, and the results are concatenated."""
    ids: list[int] = []
    for prompt, answer in dialog_turns(dialog):
        if answer is None:
            ids += tokenizer.encode(prompt, bos=True, eos=False)
        else:
            ids += tokenizer.encode(prompt + answer, bos=True, eos=True)
    return ids


def encode_dialog_turns(
    dialog: Dialog, tokenizer: _Encoder, *, allow_assistant_last: bool = False
) -> list[tuple[list[int], list[int]]]:
    """``(prompt_ids, answer_ids)`` per turn; concatenated they equal Meta's encoding of the dialog.

    ``prompt_ids`` starts with BOS; ``answer_ids`` ends with EOS (the model must learn to stop) and is
    empty for a final user turn. An answer-only loss mask is ``[0] * len(prompt_ids) + [1] *
    len(answer_ids)`` per turn. Each turn is encoded whole, as Meta does, and split where the prompt's own
    encoding ends; a ``ValueError`` is raised if the tokenizer merged text across that boundary (Llama's
    cannot: its pieces never hold "▁" after their first character, and every answer starts with a space).
    """
    out: list[tuple[list[int], list[int]]] = []
    for prompt, answer in dialog_turns(dialog, allow_assistant_last=allow_assistant_last):
        prompt_ids = tokenizer.encode(prompt, bos=True, eos=False)
        if answer is None:
            out.append((prompt_ids, []))
            continue
        full = tokenizer.encode(prompt + answer, bos=True, eos=True)
        if full[: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                "this tokenizer merges the end of the prompt with the start of the answer, so prompt and "
                "answer tokens cannot be separated; use a tokenizer trained with split_by_whitespace=True"
            )
        out.append((prompt_ids, full[len(prompt_ids) :]))
    return out


# The same format as a Jinja chat template, for the tools that format dialogs themselves (transformers'
# apply_chat_template, llama.cpp's chat handlers): each user turn "<s>[INST] ... [/INST]", each answer " ... </s>",
# the system message folded into the first user message. Rendered and then tokenized without adding special
# tokens, it gives encode_dialog's ids (tests/test_hf_export.py checks it).
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set system = none -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('roles must be: optional system first, then user and assistant alternating') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.index0 == 0 and system is not none -%}"
    "{%- set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] -%}"
    "{%- else -%}{%- set content = message['content'] -%}{%- endif -%}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{%- else -%}"
    "{{ ' ' + message['content'].strip() + ' ' + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
