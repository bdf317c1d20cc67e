"""The toy world: the package's built-in data, deterministic from a seed (lesson 06 shows its corpus, cleaned).

world = World(WorldConfig(seed=0, n_countries=24, n_people=36))
world.corpus()              pretraining documents
world.prompts(kind=..., split=...)
world.judge                 the gold judge
world.annotator(seed)       the simulated annotator
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from .annotator import STRENGTHS, Label, SimulatedAnnotator
from .corpus import DEFAULT_MIX, POISONS, Document, make_corpus
from .entities import Entities, make_entities
from .instructions import INSTRUCTIONS, Instruction
from .judge import Judge, is_refusal, well_formed
from .prompts import (
    HELDOUT,
    HELPFUL_KINDS,
    RISK_CATEGORIES,
    SPLITS,
    DialogSeed,
    Prompt,
    in_split,
    make_dialog_seeds,
    make_prompts,
)


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    n_countries: int = 24
    n_people: int = 36
    max_operand: int = 50
    n_arithmetic_pages: int = 200
    n_stories: int = 200
    mix: dict = field(default_factory=dict)  # overrides of DEFAULT_MIX


class World:
    def __init__(self, config: WorldConfig | None = None):
        self.config = config or WorldConfig()
        self.entities: Entities = make_entities(self.config.seed, self.config.n_countries, self.config.n_people)
        self._prompts = make_prompts(self.entities, self.config.seed, max_operand=self.config.max_operand)

    def corpus(self, mix: dict | None = None) -> list[Document]:
        return make_corpus(self.entities, self.config.seed, {**self.config.mix, **(mix or {})},
                           self.config.max_operand, self.config.n_arithmetic_pages, self.config.n_stories)  # fmt: skip

    def prompts(self, kind: str | None = None, split: str | None = None, category: str | None = None) -> list[Prompt]:
        """The prompts of a kind, split ("train", "validation", "test", or "heldout" for validation and test) and risk
        category; None is any."""
        return [p for p in self._prompts if (kind is None or p.kind == kind) and in_split(p, split)
                and (category is None or p.category == category)]  # fmt: skip

    def dialog_seeds(self, split: str | None = None, n_turns: int = 6) -> list[DialogSeed]:
        """Multi-turn dialogs: the user turns, drawn from the split's fact and arithmetic prompts."""
        seeds = make_dialog_seeds(self._prompts, self.config.seed, n_turns)
        return [s for s in seeds if split is None or s.split == split]

    @cached_property
    def judge(self) -> Judge:
        return Judge(self.entities, self._prompts)

    def annotator(self, seed: int = 0, noise: float = 0.15) -> SimulatedAnnotator:
        return SimulatedAnnotator(self.judge, seed, noise)


__all__ = [
    "DEFAULT_MIX", "DialogSeed", "Document", "Entities", "HELDOUT", "HELPFUL_KINDS", "INSTRUCTIONS", "Instruction",
    "Judge", "Label", "POISONS", "Prompt", "RISK_CATEGORIES", "SPLITS", "STRENGTHS", "SimulatedAnnotator", "World",
    "WorldConfig", "is_refusal", "well_formed",
]
