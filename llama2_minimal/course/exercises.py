"""Exercise notebooks generated from their solutions (nbgrader's markers, our own small generator).

In solutions/NN_name.ipynb an exercise is a code cell that starts with a header line

    # Exercise N.M: what to do

(N the lesson's number, M counting from 1 in the notebook), and whose solution stands between
`### BEGIN SOLUTION` and `### END SOLUTION`, right after a one-line `# Hint: ...` comment. The next code cell
checks it with a checker from llama2_minimal.checks. In exercises/NN_name.ipynb each solution region becomes

    raise NotImplementedError("Exercise N.M: what to do")

with the indentation of the markers, so the notebook runs up to the first unsolved exercise and fails there.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from .notebooks import META_KEY, content_hash, normal_form

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
HEADER = re.compile(r"^# Exercise (\d+)\.(\d+): (.+)$", re.M)
HINT = re.compile(r"^\s*# Hint: \S")


class ExerciseError(ValueError):
    """A solutions notebook that does not follow the exercise conventions."""


def lesson_number(path: str | Path) -> int:
    match = re.match(r"(\d+)_", Path(path).name)
    if not match:
        raise ExerciseError(f"{path}: a course notebook is named NN_name.ipynb (e.g. 02_building_blocks.ipynb).")
    return int(match.group(1))


def strip_solution(source: str, label: str, what: str, where: str) -> str:
    """Replace every solution region of a cell's source by a NotImplementedError naming the exercise."""
    lines, out, inside = source.split("\n"), [], False
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ExerciseError(f"{where}, line {number}: {BEGIN} inside another solution region.")
            if not out or not HINT.match(out[-1]):
                raise ExerciseError(f"{where}, line {number}: put a one-line '# Hint: ...' right before {BEGIN}.")
            indent = line[: len(line) - len(line.lstrip())]
            message = f"Exercise {label}: {what}".replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'{indent}raise NotImplementedError("{message}")')
            inside = True
        elif stripped == END:
            if not inside:
                raise ExerciseError(f"{where}, line {number}: {END} without {BEGIN}.")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ExerciseError(f"{where}: {BEGIN} is never closed by {END}.")
    return "\n".join(out)


def exercises_of(nb: nbformat.NotebookNode, path: str | Path) -> list[tuple[int, str, str]]:
    """(cell index, 'N.M', what to do) of every exercise cell, after checking the conventions."""
    n = lesson_number(path)
    found = []
    for index, cell in enumerate(nb.cells):
        source = cell.source if cell.cell_type == "code" else ""
        has_marker = BEGIN in source or END in source
        header = HEADER.search(source)
        where = f"{Path(path).name}, cell {index}"
        if has_marker != bool(header):
            raise ExerciseError(f"{where}: an exercise cell needs both a '# Exercise N.M: ...' header and "
                                f"{BEGIN} / {END} markers.")  # fmt: skip
        if not header:
            continue
        label = f"{n}.{len(found) + 1}"
        if f"{header.group(1)}.{header.group(2)}" != label:
            raise ExerciseError(f"{where}: the header says Exercise {header.group(1)}.{header.group(2)}, but this "
                                f"is exercise {label} of lesson {n}: renumber it.")  # fmt: skip
        following = [c for c in nb.cells[index + 1 :] if c.cell_type == "code"]
        if not following or "check_" not in following[0].source:
            raise ExerciseError(f"{where}: exercise {label} must be followed by a code cell that calls a checker "
                                "(llama2_minimal.checks.check_...).")  # fmt: skip
        found.append((index, label, header.group(3).strip()))
    return found


def make_exercise_notebook(solution: nbformat.NotebookNode, path: str | Path) -> nbformat.NotebookNode:
    """The exercise notebook for the solutions notebook at `path` (solutions/NN_name.ipynb), in normal form."""
    solution = normal_form(solution, keep_outputs=False)
    exercise = nbformat.from_dict(solution)  # a deep copy
    exercise.metadata.pop(META_KEY, None)
    for index, label, what in exercises_of(solution, path):
        cell = exercise.cells[index]
        cell.source = strip_solution(cell.source, label, what, f"{Path(path).name}, cell {index}")
    exercise = normal_form(exercise, keep_outputs=False)
    exercise.metadata[META_KEY] = {
        "generated_from": f"solutions/{Path(path).name}",
        "solution_hash": content_hash(solution),
        "exercise_hash": content_hash(exercise),
    }
    return exercise


def learner_edited(exercise: nbformat.NotebookNode) -> bool:
    """Whether an exercise notebook differs from what the generator wrote into it (a learner's work)."""
    recorded = exercise.metadata.get(META_KEY, {}).get("exercise_hash")
    return recorded is not None and recorded != content_hash(exercise)
