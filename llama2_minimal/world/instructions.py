"""System instructions for Ghost Attention (§3.3): each one's adherence can be checked by a program in every
turn, and each has a short form, as the paper's "Act as Napoleon" has "Figure: Napoleon."."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Instruction:
    name: str
    text: str  # the full instruction
    short: str  # the short form
    check: Callable[[str], bool]  # does a response keep it?

    def apply(self, answer: str) -> str:
        """A response that keeps the instruction (for demonstrations)."""
        return APPLY[self.name](answer)


def _letters(text: str) -> str:
    return "".join(ch for ch in text if ch.isalpha())


APPLY = {
    "upper": lambda a: a.upper(),
    "pirate": lambda a: f"Arr! {a}",
    "fishing": lambda a: f"{a} I would rather be fishing.",
    "smiley": lambda a: f"{a} :)",
}
INSTRUCTIONS = (
    Instruction("upper", "Always answer in upper case.", "Upper case.",
                lambda r: bool(_letters(r)) and _letters(r).isupper()),
    Instruction("pirate", "Act as a pirate: start every answer with Arr!", "Pirate.",
                lambda r: r.lstrip().startswith("Arr!")),
    Instruction("fishing", "You love fishing: mention fishing in every answer.", "Hobby: fishing.",
                lambda r: re.search(r"\bfishing\b", r, re.I) is not None),
    Instruction("smiley", "End every answer with a smiley :)", "Smiley.", lambda r: r.rstrip().endswith(":)")),
)  # fmt: skip
BY_NAME = {i.name: i for i in INSTRUCTIONS}
