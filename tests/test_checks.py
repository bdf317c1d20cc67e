"""Every exercise checker accepts the package's reference and rejects each plausible mistake in its list,
naming that mistake in its message."""

import importlib
import pkgutil

import pytest

import llama2_minimal.checks as checks_package
from llama2_minimal.checks import CHECKERS

for module in pkgutil.iter_modules(checks_package.__path__):
    importlib.import_module(f"llama2_minimal.checks.{module.name}")

LABELS = sorted(CHECKERS)
MUTANTS = [(label, i) for label in LABELS for i in range(len(CHECKERS[label].mistakes))]


def test_there_are_checkers():
    assert len(LABELS) >= 1


@pytest.mark.parametrize("label", LABELS)
def test_checker_accepts_the_reference(label, capsys):
    checker = CHECKERS[label]
    checker(checker.reference)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith(f"Exercise {label}: correct")


@pytest.mark.parametrize("label", LABELS)
def test_checker_lists_at_least_two_plausible_mistakes(label):
    assert len(CHECKERS[label].mistakes) >= 2


@pytest.mark.parametrize("label,index", MUTANTS, ids=[f"{label}-mistake{i}" for label, i in MUTANTS])
def test_checker_rejects_the_mistake_and_names_it(label, index):
    checker = CHECKERS[label]
    mutant, message = checker.mistakes[index]
    with pytest.raises(AssertionError) as err:
        checker(mutant)
    assert f"Likely mistake: {message}" in str(err.value), str(err.value)


@pytest.mark.parametrize("label", LABELS)
def test_an_unsolved_exercise_is_reported_as_such(label):
    def unsolved(*args):
        raise NotImplementedError(f"Exercise {label}")

    with pytest.raises(AssertionError, match="not solved yet"):
        CHECKERS[label](unsolved)
