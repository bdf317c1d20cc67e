"""The simulated annotator: two responses to one prompt in, a preference and its strength out (§3.2.1).

It reads the gold judge's scores through noise: the perceived difference is the true one plus Gaussian noise,
so the preference is reliable when the scores are far apart and close to a coin flip when they are close, and
the strength it reports grows with the perceived difference. That is what makes reward-model accuracy rise with
the strength of the preference, as in Table 8 of the paper.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .judge import Judge

STRENGTHS = ("significantly better", "better", "slightly better", "negligibly better / unsure")
THRESHOLDS = (0.5, 0.25, 0.1)  # perceived score differences that separate the strengths


@dataclass(frozen=True)
class Label:
    chosen: int  # 0 or 1: the index of the preferred response
    strength: str  # one of STRENGTHS
    scores: tuple[float, float]  # the judge's scores (kept for analysis; reward models never see them)


class SimulatedAnnotator:
    def __init__(self, judge: Judge, seed: int = 0, noise: float = 0.15):
        self.judge = judge
        self.noise = noise
        self.rng = random.Random(seed)

    def compare(self, dialog: list[dict], a: str, b: str, criterion: str = "helpfulness") -> Label:
        scores = (self.judge.score(criterion, dialog, a), self.judge.score(criterion, dialog, b))
        perceived = scores[0] - scores[1] + self.rng.gauss(0.0, self.noise)
        chosen = 0 if perceived > 0 else 1
        gap = abs(perceived)
        strength = next((s for s, t in zip(STRENGTHS, THRESHOLDS) if gap > t), STRENGTHS[-1])
        return Label(chosen, strength, scores)
