"""`llama2-minimal course sync`: every notebook in normal form and exercises/ written from solutions/."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .exercises import learner_edited, make_exercise_notebook
from .notebooks import dumps, normal_form, read_notebook, write_notebook


@dataclass
class SyncReport:
    changed: list[Path] = field(default_factory=list)  # written (or, with check=True, would be)
    protected: list[Path] = field(default_factory=list)  # a learner's edited exercise, left alone
    orphans: list[Path] = field(default_factory=list)  # exercises without a solution notebook

    @property
    def clean(self) -> bool:
        return not (self.changed or self.protected or self.orphans)


def _differs(nb, path: Path) -> bool:
    return not path.is_file() or path.read_text(encoding="utf-8") != dumps(nb)


def sync_course(root: str | Path, check: bool = False, force: bool = False) -> SyncReport:
    """Normal form for lessons/ (outputs kept) and solutions/ (outputs dropped); exercises/ generated.

    check=True writes nothing and reports what would change. An exercise notebook that a learner has edited
    is never overwritten unless force=True: it is reported as protected instead.
    """
    root = Path(root)
    report = SyncReport()

    def put(nb, path: Path) -> None:
        if _differs(nb, path):
            report.changed.append(path)
            if not check:
                write_notebook(nb, path)

    for path in sorted((root / "lessons").glob("*.ipynb")):
        put(normal_form(read_notebook(path), keep_outputs=True), path)
    solutions = sorted((root / "solutions").glob("*.ipynb"))
    for path in solutions:
        solution = normal_form(read_notebook(path), keep_outputs=False)
        put(solution, path)
        target = root / "exercises" / path.name
        exercise = make_exercise_notebook(solution, path)
        if target.is_file() and _differs(exercise, target) and not force and learner_edited(read_notebook(target)):
            report.protected.append(target)
            continue
        put(exercise, target)
    names = {p.name for p in solutions}
    for path in sorted((root / "exercises").glob("*.ipynb")):
        if path.name not in names:
            report.orphans.append(path)
    return report
