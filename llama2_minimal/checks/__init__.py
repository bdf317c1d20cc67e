"""Exercise checkers, one module per lesson: each `check_*` compares the learner's function with the
package's reference on several inputs and prints one line when they agree; otherwise it raises an
AssertionError that names the most likely mistake. See core.py for how they are made and tested."""

from .core import CHECKERS, Checker, Experiment, make_checker, make_experiment

__all__ = ["CHECKERS", "Checker", "Experiment", "make_checker", "make_experiment"]
