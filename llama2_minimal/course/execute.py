"""`llama2-minimal course execute`: run the lessons in order and store their outputs, so that they read well
on a web page. The outputs are recorded with a hash of the code that made them (see tests/test_course.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..profiles import PROFILE_ENV
from .notebooks import META_KEY, code_hash, normal_form, read_notebook, write_notebook


def execute_notebook(path: Path, profile: str, timeout: int = 1800) -> float:
    """Execute one notebook in a fresh kernel (in its own folder) and write it back; returns the seconds."""
    from nbclient import NotebookClient

    nb = read_notebook(path)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(path.parent)}})  # fmt: skip
    previous = os.environ.get(PROFILE_ENV)
    os.environ[PROFILE_ENV] = profile  # the kernel inherits it: lessons read their sizes from it
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        if previous is None:
            os.environ.pop(PROFILE_ENV, None)
        else:
            os.environ[PROFILE_ENV] = previous
    seconds = time.perf_counter() - start
    nb.metadata[META_KEY] = {"code_hash": code_hash(nb), "profile": profile}
    write_notebook(normal_form(nb, keep_outputs=True), path)
    return seconds


def execute_lessons(root: Path, names: list[str] | None = None, profile: str = "laptop", log=print) -> dict:
    """Execute lessons/*.ipynb in order (or those whose names start with one of `names`)."""
    paths = sorted((Path(root) / "lessons").glob("*.ipynb"))
    if names:
        paths = [p for p in paths if any(p.name.startswith(n) for n in names)]
        if not paths:
            raise ValueError(f"no lesson matches {names}: give numbers or names such as 02 or 02_building_blocks.")
    times = {}
    for path in paths:
        log(f"executing {path.name} ({profile} profile) ...")
        times[path.name] = execute_notebook(path, profile)
        log(f"  {times[path.name]:.1f} s")
    return times
