"""What every exercise checker shares: run the learner's function and the package's reference on the same
cases, compare, and when they differ, say which plausible mistake the learner's output matches.

A checker is made with `make_checker(label, reference, cases, mistakes)`: `cases()` returns (description,
args) pairs built from a fixed seed, `reference` is the package's own implementation, and `mistakes` lists
(mutant, message) pairs: functions that make one plausible mistake each, with the hint to show when the
learner's output equals the mutant's. The tests (tests/test_checks.py) run every checker on its reference
(it must pass) and on every mutant (it must fail and name that mistake).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

CHECKERS: dict[str, Checker] = {}


@dataclass
class Checker:
    label: str  # "2.1 rms_norm": the exercise and the function's name
    reference: Callable
    cases: Callable[[], Sequence[tuple[str, tuple]]]
    mistakes: Sequence[tuple[Callable, str]] = field(default_factory=list)
    atol: float = 1e-5
    rtol: float = 1e-5

    def __call__(self, candidate: Callable) -> None:
        cases = self.cases()
        for description, args in cases:
            expected = self.reference(*copy.deepcopy(args))
            got = self._run(candidate, args, description)
            problem = difference(got, expected, self.atol, self.rtol)
            if problem is None:
                continue
            hint = self.diagnose(got, args)
            raise AssertionError(
                f"Exercise {self.label}: wrong result for {description}: {problem}."
                + (f"\nLikely mistake: {hint}" if hint else "\nCompare your code with the formula in the text above.")
            )
        print(f"Exercise {self.label}: correct on all {len(cases)} cases.")

    def _run(self, candidate: Callable, args: tuple, description: str):
        inputs = copy.deepcopy(args)
        try:
            got = candidate(*inputs)
        except NotImplementedError:
            raise AssertionError(
                f"Exercise {self.label} is not solved yet: replace `raise NotImplementedError(...)` with your code."
            ) from None
        except Exception as err:
            raise AssertionError(
                f"Exercise {self.label}: your function raised {type(err).__name__} on {description}: {err}"
            ) from err
        if difference(inputs, args, 0.0, 0.0) is not None:
            raise AssertionError(
                f"Exercise {self.label}: your function changed its inputs in place on {description}; "
                "compute a new tensor instead (e.g. x * w rather than x.mul_(w))."
            )
        return got

    def diagnose(self, got, args: tuple) -> str | None:
        """The message of the first mistake whose output equals the learner's on these inputs."""
        for mutant, message in self.mistakes:
            try:
                theirs = mutant(*copy.deepcopy(args))
            except Exception:
                continue
            if difference(got, theirs, self.atol, self.rtol) is None:
                return message
        return None


def make_checker(
    label: str,
    reference: Callable,
    cases: Callable[[], Sequence[tuple[str, tuple]]],
    mistakes: Sequence[tuple[Callable, str]] = (),
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> Checker:
    checker = Checker(label, reference, cases, list(mistakes), atol, rtol)
    CHECKERS[label] = checker
    return checker


def difference(got, expected, atol: float, rtol: float) -> str | None:
    """None when got equals expected (tensors within tolerance, same shape and dtype), else what differs."""
    if isinstance(expected, torch.nn.Module):  # a module is compared by its weights
        if not isinstance(got, torch.nn.Module):
            return f"expected a module, got {type(got).__name__}"
        return difference(got.state_dict(), expected.state_dict(), atol, rtol)
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected a tensor, got {type(got).__name__}"
        if got.shape != expected.shape:
            return f"shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        if got.dtype != expected.dtype:
            return f"dtype {got.dtype}, expected {expected.dtype}"
        if expected.is_floating_point() or expected.is_complex():
            if not torch.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=True):
                return f"largest difference {(got - expected).abs().max().item():.3g}"
            return None
        if not torch.equal(got, expected):
            wrong = (got != expected).sum().item()
            return f"{wrong} of {expected.numel()} values differ"
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected a sequence of {len(expected)} items, got {got!r:.80}"
        for i, (a, b) in enumerate(zip(got, expected)):
            problem = difference(a, b, atol, rtol)
            if problem is not None:
                return f"item {i}: {problem}"
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            return f"expected a dict with keys {sorted(expected)}, got {got!r:.80}"
        for key in expected:
            problem = difference(got[key], expected[key], atol, rtol)
            if problem is not None:
                return f"[{key!r}]: {problem}"
        return None
    if isinstance(expected, float):
        if not isinstance(got, (int, float)) or abs(got - expected) > atol + rtol * abs(expected):
            return f"{got!r}, expected {expected!r}"
        return None
    if got != expected or type(got) is not type(expected) and not isinstance(got, type(expected)):
        return f"{got!r:.80}, expected {expected!r:.80}"
    return None
