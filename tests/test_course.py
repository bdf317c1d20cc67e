"""The course machinery (normal form, exercise generation, sync) and the course's own notebooks."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from llama2_minimal.course import sync_course
from llama2_minimal.course.curriculum import LESSONS
from llama2_minimal.course.exercises import ExerciseError, learner_edited, make_exercise_notebook, strip_solution
from llama2_minimal.course.notebooks import META_KEY, code_hash, dumps, normal_form, read_notebook, write_notebook

ROOT = Path(__file__).resolve().parents[1]
new_code, new_md = nbformat.v4.new_code_cell, nbformat.v4.new_markdown_cell

EXERCISE = """# Exercise 3.1: scale x by s
def scale(x, s):
    y = x
    # Hint: multiply
    ### BEGIN SOLUTION
    y = x * s
    ### END SOLUTION
    for _ in range(1):
        # Hint: add nothing
        ### BEGIN SOLUTION
        y = y + 0
        ### END SOLUTION
    return y"""


def solution_notebook():
    return nbformat.v4.new_notebook(cells=[new_md("# Exercises"), new_code(EXERCISE), new_code("check_scale(scale)")])


# --- normal form ------------------------------------------------------------------------------------------


def noisy_notebook():
    nb = solution_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3"}, "widgets": {"state": {}},
                   "toc": {"x": 1}}  # fmt: skip
    cell = nb.cells[2]
    cell.execution_count = 7
    cell.metadata = {"scrolled": True, "execution": {"iopub.status.busy": "2026"}, "tags": ["b", "a"]}
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="ok\n")]
    return nb


def test_normal_form_strips_noise_and_is_idempotent():
    nb = normal_form(noisy_notebook(), keep_outputs=False)
    assert set(nb.metadata) == {"kernelspec", "language_info"}
    cell = nb.cells[2]
    assert cell.outputs == [] and cell.execution_count is None and cell.metadata == {"tags": ["a", "b"]}
    assert dumps(normal_form(nb, keep_outputs=False)) == dumps(nb)
    nbformat.validate(nb)


def test_normal_form_keeps_lesson_outputs_numbered_in_order():
    nb = normal_form(noisy_notebook(), keep_outputs=True)
    assert nb.cells[2].outputs[0]["text"] == "ok\n" and nb.cells[2].execution_count == 1


def test_cell_ids_come_from_content_and_survive_moving_other_cells():
    nb = normal_form(solution_notebook(), keep_outputs=False)
    ids = [c.id for c in nb.cells]
    assert len(set(ids)) == 3
    moved = solution_notebook()
    moved.cells.insert(0, new_md("a new first cell"))
    assert [c.id for c in normal_form(moved, keep_outputs=False).cells][1:] == ids
    twins = nbformat.v4.new_notebook(cells=[new_md("same"), new_md("same")])
    assert len({c.id for c in normal_form(twins, keep_outputs=False).cells}) == 2


def test_write_notebook_is_atomic_and_reports_changes(tmp_path, monkeypatch):
    nb = normal_form(solution_notebook(), keep_outputs=False)
    path = tmp_path / "n.ipynb"
    assert write_notebook(nb, path) is True
    assert write_notebook(nb, path) is False
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    nb.cells.append(new_md("more"))
    with pytest.raises(KeyboardInterrupt):
        write_notebook(nb, path)
    assert [p.name for p in tmp_path.iterdir()] == ["n.ipynb"]
    assert len(read_notebook(path).cells) == 3


# --- exercise generation ----------------------------------------------------------------------------------


def test_each_solution_region_becomes_a_raise_with_its_indentation():
    nb = make_exercise_notebook(solution_notebook(), "solutions/03_demo.ipynb")
    source = nb.cells[1].source
    assert "### BEGIN" not in source and "x * s" not in source and "y + 0" not in source
    assert '    raise NotImplementedError("Exercise 3.1: scale x by s")' in source.split("\n")
    assert '        raise NotImplementedError("Exercise 3.1: scale x by s")' in source.split("\n")
    assert "    # Hint: multiply" in source and "    y = x" in source and "    return y" in source
    assert nb.metadata[META_KEY]["generated_from"] == "solutions/03_demo.ipynb"
    compile(source, "exercise", "exec")  # still valid Python


@pytest.mark.parametrize(
    "source,fragment",
    [
        ("# Exercise 3.1: x\nx = 1\n### BEGIN SOLUTION\nx = 2\n### END SOLUTION", "Hint"),
        ("# Exercise 3.1: x\n# Hint: h\n### BEGIN SOLUTION\nx = 2", "never closed"),
        ("# Exercise 3.1: x\nx = 2\n### END SOLUTION", "without"),
        ("# Exercise 3.1: x\n# Hint: h\n### BEGIN SOLUTION\n# Hint: h\n### BEGIN SOLUTION\n", "inside another"),
        ("# Exercise 3.2: x\n# Hint: h\n### BEGIN SOLUTION\nx = 2\n### END SOLUTION", "renumber"),
        ("# Exercise 3.1: x\nx = 2", "both"),
        ("# Hint: h\n### BEGIN SOLUTION\nx = 2\n### END SOLUTION", "both"),
    ],
)
def test_malformed_exercises_are_refused(source, fragment):
    nb = nbformat.v4.new_notebook(cells=[new_code(source), new_code("check_x(x)")])
    with pytest.raises(ExerciseError, match=fragment):
        make_exercise_notebook(nb, "solutions/03_demo.ipynb")


def test_an_exercise_needs_a_check_cell_and_a_numbered_file():
    nb = solution_notebook()
    nb.cells[2] = new_code("print('no checker')")
    with pytest.raises(ExerciseError, match="checker"):
        make_exercise_notebook(nb, "solutions/03_demo.ipynb")
    with pytest.raises(ExerciseError, match="NN_name"):
        make_exercise_notebook(solution_notebook(), "solutions/demo.ipynb")


def test_strip_solution_escapes_quotes():
    out = strip_solution("# Hint: h\n### BEGIN SOLUTION\nx\n### END SOLUTION", "1.1", 'say "hi"', "here")
    assert out.endswith('raise NotImplementedError("Exercise 1.1: say \\"hi\\"")')


# --- sync -------------------------------------------------------------------------------------------------


def make_course(tmp_path):
    (tmp_path / "solutions").mkdir()
    (tmp_path / "lessons").mkdir()
    nbformat.write(noisy_notebook(), str(tmp_path / "solutions" / "03_demo.ipynb"))
    nbformat.write(noisy_notebook(), str(tmp_path / "lessons" / "03_demo.ipynb"))
    return tmp_path


def test_sync_writes_exercises_and_check_sees_nothing_left(tmp_path):
    root = make_course(tmp_path)
    assert not sync_course(root, check=True).clean
    assert not (root / "exercises").exists()  # check writes nothing
    report = sync_course(root)
    assert {p.relative_to(root).as_posix() for p in report.changed} == {
        "lessons/03_demo.ipynb", "solutions/03_demo.ipynb", "exercises/03_demo.ipynb"}  # fmt: skip
    assert sync_course(root, check=True).clean
    assert read_notebook(root / "lessons" / "03_demo.ipynb").cells[2].outputs  # lessons keep outputs
    assert not read_notebook(root / "solutions" / "03_demo.ipynb").cells[2].outputs


def test_sync_never_overwrites_a_learner_s_exercise_unless_forced(tmp_path):
    root = make_course(tmp_path)
    sync_course(root)
    path = root / "exercises" / "03_demo.ipynb"
    nb = read_notebook(path)
    nb.cells[1].source = nb.cells[1].source.replace('raise NotImplementedError("Exercise 3.1: scale x by s")',
                                                    "y = x * s", 1)  # fmt: skip
    nbformat.write(nb, str(path))
    assert learner_edited(read_notebook(path))
    # The solution changes: the exercise would change too, but it holds the learner's work.
    solution = read_notebook(root / "solutions" / "03_demo.ipynb")
    solution.cells.insert(1, new_md("A new explanation."))
    nbformat.write(solution, str(root / "solutions" / "03_demo.ipynb"))
    report = sync_course(root)
    assert report.protected == [path]
    assert "y = x * s" in read_notebook(path).cells[1].source
    report = sync_course(root, check=True)
    assert not report.clean
    sync_course(root, force=True)
    assert "y = x * s" not in read_notebook(path).cells[2].source
    assert sync_course(root, check=True).clean


def test_sync_reports_exercises_without_a_solution(tmp_path):
    root = make_course(tmp_path)
    sync_course(root)
    (root / "exercises" / "09_stray.ipynb").write_text((root / "exercises" / "03_demo.ipynb").read_text())
    assert [p.name for p in sync_course(root, check=True).orphans] == ["09_stray.ipynb"]


# --- the course's own notebooks ---------------------------------------------------------------------------


def locally_modified() -> set[Path]:
    """Notebooks that differ from the committed version: a learner's (or an author's) work in progress, which
    the freshness tests leave alone. In a fresh clone, as in CI, there are none and everything is checked."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "lessons", "solutions", "exercises"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return set()
    return {ROOT / line[3:].strip().strip('"') for line in out.splitlines() if line[:2].strip() != "??"}


def test_every_notebook_is_what_course_sync_writes():
    report = sync_course(ROOT, check=True)
    stale = sorted(set(report.changed + report.protected) - locally_modified())
    assert not stale, f"run `llama2-minimal course sync` and commit: {[str(p.relative_to(ROOT)) for p in stale]}"
    assert not report.orphans


LESSON_FILES = sorted((ROOT / "lessons").glob("*.ipynb"))


@pytest.mark.parametrize("path", LESSON_FILES, ids=[p.name for p in LESSON_FILES])
def test_lesson_outputs_come_from_its_current_code(path):
    if path in locally_modified():
        pytest.skip(f"{path.name} is modified locally: its outputs are checked once committed")
    nb = read_notebook(path)
    recorded = nb.metadata.get(META_KEY, {})
    assert recorded.get("code_hash") == code_hash(nb), (
        f"{path.name}'s stored outputs come from other code: run `llama2-minimal course execute "
        f"{path.name[:2]}` and commit the result"
    )
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code_cells), f"{path.name} was not executed in full"


def test_lessons_follow_the_curriculum():
    names = [p.stem for p in LESSON_FILES]
    assert names == [lesson.name for lesson in LESSONS[: len(names)]]
    assert len(names) >= 6


SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_each_lesson_from_01_has_at_least_two_exercises(path):
    from llama2_minimal.course.exercises import exercises_of

    assert len(exercises_of(read_notebook(path), path)) >= 2
    assert (ROOT / "lessons" / path.name).is_file(), f"{path.name} has no lesson"


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.name for p in SOLUTIONS])
def test_an_unsolved_exercise_notebook_fails_under_nbval(path, tmp_path):
    """What a learner runs, `pytest --nbval-lax exercises/NN.ipynb`, fails at the notebook's first exercise."""
    exercise = tmp_path / path.name  # the generated notebook, fresh: a learner's copy may be solved already
    exercise.write_text(dumps(make_exercise_notebook(read_notebook(path), path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-p", "no:cacheprovider", "-x", "-q",
         "--rootdir", str(tmp_path), "-o", "addopts=", str(exercise)],
        capture_output=True, text=True, cwd=ROOT / "exercises", env=env, timeout=600,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-2000:]
    number = int(path.name[:2])
    assert re.search(rf"Exercise {number}\.1\b[^\n]*not solved yet|Exercise {number}\.1:", output), output[-2000:]


def test_exercise_notebooks_record_their_solution():
    for path in sorted((ROOT / "exercises").glob("*.ipynb")):
        meta = json.loads(path.read_text())["metadata"][META_KEY]
        assert meta["generated_from"] == f"solutions/{path.name}"


@pytest.mark.parametrize("path", [p for p in SOLUTIONS if 1 <= int(p.name[:2]) <= 7], ids=lambda p: p.name)
def test_lessons_01_to_07_have_three_exercises_and_an_experiment(path):
    """Each of them asks for code its lesson has not shown and runs one experiment, whose check cell compares the
    prediction the learner wrote before the run with the outcome (the course's rule for experiments)."""
    from llama2_minimal.course.exercises import exercises_of

    nb = read_notebook(path)
    found = exercises_of(nb, path)
    assert len(found) >= 3
    experiments = [i for i, _, _ in found if "PREDICTION = " in nb.cells[i].source]
    assert experiments, f"{path.name} has no experiment"
    for index in experiments:
        check = next(c for c in nb.cells[index + 1 :] if c.cell_type == "code")
        assert "prediction=PREDICTION" in check.source and "setting=" in check.source
