"""What every exercise checker shares: run the learner's function and the package's reference on the same
cases, compare, and when they differ, say which plausible mistake the learner's output matches.

A checker is made with `make_checker(label, reference, cases, mistakes)`: `cases()` returns (description,
args) pairs built from a fixed seed, `reference` is the package's own implementation, and `mistakes` lists
(mutant, message) pairs: functions that make one plausible mistake each, with the hint to show when the
learner's output equals the mutant's. The tests (tests/test_checks.py) run every checker on its reference
(it must pass) and on every mutant (it must fail and name that mistake).

Every case is run, so that a learner who made two mistakes is told so: different cases expose different
mistakes (a bfloat16 case the dtype slip, a tiny input the eps slip), and when the mistake named on the first
failing case does not explain another failing case, the message names what does, or says that a second mistake
meets the first there.

An experiment (`make_experiment`) is checked the same way on small cases; the learner's function then measures
the notebook's own setting, and the learner's prediction, written before the run, is compared with the outcome.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    # How a function meets a case: by default function(*args). A checker of a class (a KV cache, say) runs the
    # class through the case instead: apply(candidate, args) -> what is compared.
    apply: Callable | None = None

    def __call__(self, candidate: Callable) -> None:
        n = self.verify(candidate)
        print(f"Exercise {self.label}: correct on all {n} cases.")

    def verify(self, candidate: Callable) -> int:
        """Run every case; raise an AssertionError that names the likely mistake(s), or return the number of
        cases."""
        cases = self.cases()
        failures: list[_Failure] = []
        for description, args in cases:
            expected = self._apply(self.reference, copy.deepcopy(args))
            try:
                got = self._run(candidate, args, description)
            except AssertionError:
                if not failures:
                    raise
                break  # an exception after a wrong result: report the wrong result first
            problem = difference(got, expected, self.atol, self.rtol)
            if problem is not None:
                failures.append(_Failure(description, args, got, problem))
        if failures:
            raise AssertionError(self.explain(failures, cases))
        return len(cases)

    def _apply(self, function: Callable, args: tuple):
        return function(*args) if self.apply is None else self.apply(function, args)

    def _run(self, candidate: Callable, args: tuple, description: str):
        inputs = copy.deepcopy(args)
        try:
            got = self._apply(candidate, inputs)
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
        index = self._matching_mistake(got, args)
        return None if index is None else self.mistakes[index][1]

    def _matching_mistake(self, got, args: tuple) -> int | None:
        for index, (mutant, _message) in enumerate(self.mistakes):
            try:
                theirs = self._apply(mutant, copy.deepcopy(args))
            except Exception:
                continue
            if difference(got, theirs, self.atol, self.rtol) is None:
                return index
        return None

    def explain(self, failures: list[_Failure], cases: Sequence[tuple[str, tuple]]) -> str:
        """What went wrong on the first failing case, and, when one mistake does not explain every failing
        case, what else did: two mistakes that meet give an output that no single mistake gives."""
        first = failures[0]
        text = f"Exercise {self.label}: wrong result for {first.description}: {first.problem}."
        index = self._matching_mistake(first.got, first.args)
        others = [(f, self._matching_mistake(f.got, f.args)) for f in failures[1:]]
        if index is not None:
            text += f"\nLikely mistake: {self.mistakes[index][1]}"
            mutant = self.mistakes[index][0]
            unexplained = [(f, i) for f, i in others if not self._same_as(mutant, f)]
            if unexplained:
                second, second_index = next(((f, i) for f, i in unexplained if i not in (None, index)),
                                            unexplained[0])  # fmt: skip
                if second_index not in (None, index):
                    text += (f"\nA second mistake meets it: on {second.description} your result matches this "
                             f"one instead: {self.mistakes[second_index][1]}")  # fmt: skip
                else:
                    text += (f"\nBut that is not all: on {second.description} your result differs from that "
                             f"mistake's too ({second.problem}), so a second mistake meets it there.")  # fmt: skip
            return text
        named = {i: f for f, i in reversed(others) if i is not None}
        if named:
            text += "\nNo single known mistake gives this result, so at least two meet. On other cases your result "
            text += "matches these likely mistakes:"
            for i, f in sorted(named.items(), key=lambda item: failures.index(item[1])):
                text += f"\n- on {f.description}: {self.mistakes[i][1]}"
            return text
        wrong = {f.description for f in failures}
        right = [description for description, _ in cases if description not in wrong]
        if right:
            text += (f"\nNo known mistake gives this result (two may meet). Your function is right on "
                     f"{len(right)} of {len(cases)} cases ({'; '.join(right)}): compare what those cases have and "
                     f"this one lacks, then your code with the formula in the text above.")  # fmt: skip
        else:
            text += "\nNo known mistake gives this result: compare your code with the formula in the text above."
        return text

    def _same_as(self, mutant: Callable, failure: _Failure) -> bool:
        try:
            theirs = self._apply(mutant, copy.deepcopy(failure.args))
        except Exception:
            return False
        return difference(failure.got, theirs, self.atol, self.rtol) is None


@dataclass
class _Failure:
    description: str
    args: tuple
    got: Any
    problem: str


@dataclass
class Experiment(Checker):
    """A checker for an experiment: the learner's measurement function is compared with the reference
    measurement on the checker's small cases; then, on the notebook's own setting, the learner's (now checked)
    function measures, and the prediction the learner wrote before the run is compared with the outcome.

    choices: the predictions one may write, each with what it means. outcome(result) -> (the choice the
    measured result supports, one sentence that says what was measured)."""

    choices: dict[str, str] = field(default_factory=dict)
    outcome: Callable[[Any], tuple[str, str]] | None = None

    def __call__(self, candidate: Callable, prediction: str | None = None, setting: tuple | None = None) -> None:
        if setting is not None and prediction not in self.choices:
            options = "; ".join(f"{key!r} ({meaning})" for key, meaning in self.choices.items())
            raise AssertionError(
                f"Exercise {self.label}: write your prediction before you run the experiment: PREDICTION must be "
                f"one of {options}; you wrote {prediction!r}."
            )
        n = self.verify(candidate)
        line = f"Exercise {self.label}: correct on all {n} cases."
        if setting is not None:
            result = self._run(candidate, tuple(setting), "your setting")
            supported, account = self.outcome(result)
            verdict = "held" if supported == prediction else f"did not hold (the measurement says {supported!r})"
            line += f" On your setting, {account}: your prediction {prediction!r} {verdict}."
        print(line)


def make_checker(
    label: str,
    reference: Callable,
    cases: Callable[[], Sequence[tuple[str, tuple]]],
    mistakes: Sequence[tuple[Callable, str]] = (),
    atol: float = 1e-5,
    rtol: float = 1e-5,
    apply: Callable | None = None,
) -> Checker:
    checker = Checker(label, reference, cases, list(mistakes), atol, rtol, apply)
    CHECKERS[label] = checker
    return checker


def make_experiment(
    label: str,
    reference: Callable,
    cases: Callable[[], Sequence[tuple[str, tuple]]],
    mistakes: Sequence[tuple[Callable, str]],
    choices: dict[str, str],
    outcome: Callable[[Any], tuple[str, str]],
    atol: float = 1e-5,
    rtol: float = 1e-5,
    apply: Callable | None = None,
) -> Experiment:
    """An experiment's checker (see Experiment); registered with the other checkers, and tested like them."""
    checker = Experiment(label, reference, cases, list(mistakes), atol, rtol, apply, dict(choices), outcome)
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
