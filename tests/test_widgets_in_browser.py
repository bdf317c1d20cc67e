"""The lessons' widgets in a real browser: JupyterLab on a free local port, driven by Chromium through Playwright.

For every lesson whose stored outputs hold an interactive widget (found in lessons/*.ipynb, so a new one cannot be
forgotten), the test opens a copy of the lesson in JupyterLab, runs all its cells (in the ci profile; the models
come from the artefact cache, built there on demand), waits until each widget renders, shows its output (clicking
its button), changes a control as a learner would (types into a text box, moves a slider, picks from a dropdown),
shows it again, and asserts that the displayed output changed as REGISTRY says. A screenshot of each widget is
saved before and after the change. A widget that does not render (a front-end/kernel version mismatch shows its
text form instead) fails the test.

Needs Playwright's Python package and a Chromium from the system (nothing is downloaded):
    pip install -e ".[browser]"        and, on Debian/Ubuntu:   apt install chromium
Elsewhere the test is skipped, except where LLAMA2_MINIMAL_REQUIRE_BROWSER=1 (.ci/run), where it fails instead.
Screenshots go to $LLAMA2_MINIMAL_SCREENSHOTS (default: pytest's temporary folder, printed at the end).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


# --- the registry: what to do with each lesson's widgets ------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One control to change, found by its kind and (optionally) its label inside the widget.

    kind: "text" (a text box: type `value`), "slider" (type `value` into its readout, as a learner can), "dropdown"
    (`value` is an option's index, or "next": the option after the selected one)."""

    kind: str
    label: str | None = None  # None: the first control of that kind
    value: str | int = "next"


@dataclass(frozen=True)
class WidgetCheck:
    """What to do with one widget: the changes to make, the button that shows the output (None: the widget's only
    button, or none if it has none and updates by itself), and what the output must show after the changes: regular
    expressions (searched in the output's text). The output must also differ from what it showed before."""

    changes: tuple[Change, ...]
    expect: tuple[str, ...] = ()
    button: str | None = None


# lesson (file name without .ipynb) -> one WidgetCheck per widget of the lesson, in the order of its cells.
# A lesson with a widget that is missing here fails test_every_widget_of_the_lessons_is_registered.
REGISTRY: dict[str, tuple[WidgetCheck, ...]] = {
    # The sampling explorer: a new prompt at temperature 0 (greedy); the continuation starts with the prompt.
    "07_inference": (
        WidgetCheck(
            changes=(Change("text", "prompt", "The capital of"), Change("slider", "temperature", "0")),
            expect=(r"^The capital of", r"\btemperature 0\b"),
        ),
    ),
    # The chat comparison: another of the world's prompts from the dropdown; the answers change.
    "10_rejection_sampling": (WidgetCheck(changes=(Change("dropdown"),)),),
}

# Models of ipywidgets that a learner acts on; a widget made only of others (a progress bar) needs no check.
CONTROLS = ("ButtonModel", "SliderModel", "TextModel", "TextareaModel", "DropdownModel", "CheckboxModel",
            "ToggleButtonModel", "ToggleButtonsModel", "RadioButtonsModel", "SelectModel", "SelectMultipleModel",
            "ComboboxModel", "PlayModel", "DatePickerModel", "ColorPickerModel")  # fmt: skip


def interactive(state: dict, model_id: str) -> bool:
    """Whether the widget (from the notebook's stored widget state) holds a control; unknown widgets count."""
    if model_id not in state:
        return True
    seen, todo = set(), [model_id]
    while todo:
        mid = todo.pop()
        if mid in seen or mid not in state:
            continue
        seen.add(mid)
        model = state[mid]
        if model.get("model_name", "").endswith(CONTROLS):
            return True
        children = model.get("state", {}).get("children", [])
        todo += [c.removeprefix("IPY_MODEL_") for c in children if isinstance(c, str)]
    return False


def widget_cells(path: Path) -> list[int]:
    """The indices of the cells of a stored notebook whose outputs show an interactive widget."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    state = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    cells = []
    for i, cell in enumerate(nb["cells"]):
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view and interactive(state, view.get("model_id", "")):
                cells.append(i)
                break
    return cells


def lessons_with_widgets() -> dict[str, list[int]]:
    found = {p.stem: widget_cells(p) for p in sorted((ROOT / "lessons").glob("*.ipynb"))}
    return {name: cells for name, cells in found.items() if cells}


def test_every_widget_of_the_lessons_is_registered():
    found = lessons_with_widgets()
    assert {"07_inference", "10_rejection_sampling"} <= set(found)
    for lesson, cells in found.items():
        assert lesson in REGISTRY, (
            f"lessons/{lesson}.ipynb shows {len(cells)} widget(s) (cells {cells}) that no test drives in a browser: "
            f"add an entry for {lesson!r} to REGISTRY in {Path(__file__).name} (which control to change, what the "
            "output must show afterwards)."
        )
        assert len(REGISTRY[lesson]) == len(cells), (
            f"lessons/{lesson}.ipynb shows {len(cells)} widget(s) (cells {cells}) but REGISTRY has "
            f"{len(REGISTRY[lesson])} check(s) for it: give one WidgetCheck per widget, in the order of the cells."
        )
    stale = set(REGISTRY) - set(found)
    assert not stale, f"REGISTRY names lessons that show no widget (any more): {sorted(stale)}; remove them."


def test_a_progress_bar_is_not_a_widget_to_register():
    state = {"bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_a", "IPY_MODEL_b"]}},
             "a": {"model_name": "HTMLModel", "state": {}}, "b": {"model_name": "FloatProgressModel", "state": {}},
             "ui": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_bar", "IPY_MODEL_c"]}},
             "c": {"model_name": "FloatSliderModel", "state": {}}}  # fmt: skip
    assert not interactive(state, "bar")
    assert interactive(state, "ui") and interactive(state, "not-stored")


# --- the tools: Chromium, Playwright, JupyterLab ---------------------------------------------------------------------

REQUIRED = os.environ.get("LLAMA2_MINIMAL_REQUIRE_BROWSER") == "1"
INSTALL = 'pip install -e ".[browser]" and a system Chromium (Debian/Ubuntu: apt install chromium)'
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-breakpad", "--disable-crash-reporter"]  # fmt: skip  (no crash handler left behind)
VIEWPORT = {"width": 1280, "height": 1000}
LESSON_TIMEOUT = 2400  # s: the first run of a lesson builds its models into the artefact cache


def missing(what: str):
    message = f"{what}: the browser test needs {INSTALL}"
    if REQUIRED:
        pytest.fail(message + " (LLAMA2_MINIMAL_REQUIRE_BROWSER=1: it must run here)")
    pytest.skip(message)


def chromium() -> str:
    candidates = [os.environ.get("LLAMA2_MINIMAL_CHROMIUM"), "/usr/lib/chromium/chromium", shutil.which("chromium"),
                  shutil.which("chromium-browser"), shutil.which("google-chrome")]  # fmt: skip
    for path in candidates:
        if path and os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    missing("no Chromium found (set LLAMA2_MINIMAL_CHROMIUM to its path)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    process: subprocess.Popen
    log: Path
    lessons: dict[str, list[int]] = field(default_factory=dict)

    def page_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}&reset"

    def stop(self) -> None:
        """Shut down the kernels and the server; kill what is left."""
        if self.process.poll() is None:
            try:
                request = urllib.request.Request(f"{self.url}/api/shutdown?token={self.token}", method="POST")
                urllib.request.urlopen(request, timeout=10).close()
                self.process.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving copies of the lessons with widgets (the lessons themselves are never modified), with its
    own settings (no windowed notebooks, no news) and no user configuration; stopped at the end, also on failure."""
    if shutil.which("jupyter", path=str(Path(sys.executable).parent)) is None and shutil.which("jupyter") is None:
        missing("no jupyter command")
    base = tmp_path_factory.mktemp("lab")
    root, home = base / "notebooks", base / "jupyter"
    root.mkdir()
    lessons = lessons_with_widgets()
    for name in lessons:
        shutil.copy(ROOT / "lessons" / f"{name}.ipynb", root / f"{name}.ipynb")
    settings = home / "settings" / "@jupyterlab"
    (settings / "notebook-extension").mkdir(parents=True)
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        '{"windowingMode": "none", "autoStartDefaultKernel": true}'  # every cell in the page; no kernel dialog
    )
    (settings / "apputils-extension").mkdir()
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "LLAMA2_MINIMAL_PROFILE": "ci",
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    port, token = free_port(), os.urandom(16).hex()
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]  # fmt: skip
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log = base / "jupyterlab.log"
    with open(log, "w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,
                                   start_new_session=True)  # fmt: skip
    server = Lab(f"http://127.0.0.1:{port}", token, root, process, log, lessons)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{server.url}/api/status?token={token}", timeout=5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start; its log:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(lab):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright's Python package is not installed")
    executable = chromium()
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_FLAGS, viewport=VIEWPORT
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    folder = Path(os.environ.get("LLAMA2_MINIMAL_SCREENSHOTS") or tmp_path_factory.mktemp("widget-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    print(f"\nwidget screenshots: {folder}")


# --- driving a notebook ----------------------------------------------------------------------------------------------


class Notebook:
    """A notebook open in JupyterLab: run it, find its cells, read and drive its widgets."""

    def __init__(self, page, name: str):
        self.page, self.name = page, name
        self.cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")

    def wait_for_kernel(self, timeout: float = 180) -> None:
        """Wait until the notebook's kernel is idle. A busy server can be slow to start it, and JupyterLab then asks
        which kernel to start: the notebook's own (the dialog's default) is accepted."""
        idle = self.page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")
        accept = self.page.locator(".jp-Dialog:has-text('Select Kernel') .jp-mod-accept")
        deadline, calm_since = time.monotonic() + timeout, None
        while True:  # idle, and no dialog for two seconds (the dialog can come after the status says idle)
            if accept.count() and accept.first.is_visible():
                accept.first.click()
                calm_since = None
            elif idle.count():
                calm_since = calm_since or time.monotonic()
                if time.monotonic() - calm_since > 2:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: the kernel did not start within {timeout:.0f} s")
            time.sleep(0.25)

    def run_all(self, timeout: float = LESSON_TIMEOUT) -> None:
        """Clear the stored outputs, Run All Cells, and wait until every code cell has run; a cell that fails
        fails the test with its error."""
        self.wait_for_kernel()
        for menu, item in (("Edit", "Clear Outputs of All Cells"), ("Run", "Run All Cells")):
            self.page.click(f"div.lm-MenuBar-itemLabel:text-is('{menu}')")
            self.page.click(f"li.lm-Menu-item:has-text('{item}')")
        prompts = self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt")
        done = re.compile(r"\[\d+\]:")
        # Clearing the outputs keeps the execution counts, so "finished" is only trusted once the run has begun:
        # Run All marks every queued cell [*] at once.
        started = time.monotonic() + 60
        while not any("*" in t for t in prompts.all_inner_texts()):
            if time.monotonic() > started:
                raise AssertionError(f"{self.name}: Run All Cells did not start any cell")
            time.sleep(0.1)
        deadline = time.monotonic() + timeout
        while True:
            texts = [t.strip() for t in prompts.all_inner_texts()]
            running = any("*" in t for t in texts)
            if not running and any(done.fullmatch(t) for t in texts):
                break  # all done, or Run All stopped at an error
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: the cells did not finish within {timeout:.0f} s")
            time.sleep(1)
        unrun = [i for i, t in enumerate(texts) if not done.fullmatch(t)]
        if unrun:
            failed = self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell").nth(max(unrun[0] - 1, 0))
            raise AssertionError(f"{self.name}: Run All stopped before code cell {unrun[0]}; the cell before shows:\n"
                                 f"{failed.locator('.jp-Cell-outputArea').inner_text()[-3000:]}")  # fmt: skip

    def widget(self, index: int, timeout: float = 60):
        """The rendered widget of cell `index`; fails when JupyterLab shows something else in its place."""
        cell = self.cells.nth(index)
        view = cell.locator(".jp-Cell-outputArea .jp-OutputArea-output > .jupyter-widgets").first  # the widget's root
        try:
            view.wait_for(timeout=timeout * 1000)
            view.locator("button, textarea, select, .widget-slider").first.wait_for(state="attached", timeout=30_000)
        except Exception:
            shown = cell.locator(".jp-Cell-outputArea").inner_text()[-2000:]
            raise AssertionError(
                f"{self.name}: the widget of cell {index} did not render; JupyterLab shows instead:\n{shown}\n"
                "(its text form or 'Error displaying widget' means the widgets' front end (jupyterlab_widgets) "
                "does not match the kernel's ipywidgets)"
            ) from None
        error = view.locator(".jupyter-widgets-error-widget, .widget-error")
        assert error.count() == 0, f"{self.name}: the widget of cell {index} shows an error: {error.first.inner_text()}"
        return view


def control(widget, change: Change):
    selectors = {"text": ".widget-textarea, .widget-text", "slider": ".widget-slider",
                 "dropdown": ".widget-dropdown"}  # fmt: skip
    if change.kind not in selectors:
        raise ValueError(f"Change kind {change.kind!r}: use one of {sorted(selectors)}")
    found = widget.locator(selectors[change.kind])
    if change.label is not None:
        found = found.filter(has=widget.page.locator(f"label:text-is('{change.label}')"))
    if found.count() == 0:
        raise AssertionError(f"no {change.kind} control labelled {change.label!r} in the widget: update REGISTRY")
    return found.first


def apply(page, widget, change: Change) -> None:
    box = control(widget, change)
    if change.kind == "text":
        box.locator("textarea, input").first.fill(str(change.value))
    elif change.kind == "slider":  # type into the readout, as a learner can, then Enter
        readout = box.locator(".widget-readout")
        readout.click()
        page.keyboard.press("Control+A")
        page.keyboard.type(str(change.value))
        page.keyboard.press("Enter")
        expected = float(change.value)
        deadline = time.monotonic() + 10
        while abs(float(readout.inner_text()) - expected) > 1e-9:
            assert time.monotonic() < deadline, f"the slider shows {readout.inner_text()}, not {change.value}"
            time.sleep(0.2)
    else:
        select = box.locator("select")
        options = select.locator("option")
        if change.value == "next":
            current = select.evaluate("s => s.selectedIndex")
            index = (current + 1) % options.count()
        else:
            index = int(change.value)
        select.select_option(index=index)


def output_text(widget) -> str:
    outputs = widget.locator(".widget-output, .widget-html")
    return "\n".join(t.strip() for t in outputs.all_inner_texts() if t.strip())


def show(page, widget, check: WidgetCheck, before: str | None = None, timeout: float = 300) -> str:
    """Click the widget's button (if it has one) and wait for its output to settle on something new."""
    buttons = widget.locator("button.jupyter-button")
    if check.button is not None:
        buttons = buttons.filter(has_text=check.button)
    if buttons.count() > 1 and check.button is None:
        raise AssertionError("the widget has several buttons: name the one to click in REGISTRY (button=...)")
    if buttons.count():
        buttons.first.click()
    deadline = time.monotonic() + timeout
    last, stable_since = None, time.monotonic()
    while True:
        text = output_text(widget)
        if text != last:
            last, stable_since = text, time.monotonic()
        elif text and text != before and time.monotonic() - stable_since > 1.0:
            return text
        if time.monotonic() > deadline:
            return text
        time.sleep(0.25)


def lesson_params():
    return [pytest.param(name, id=name) for name in lessons_with_widgets()]


@pytest.mark.parametrize("lesson", lesson_params())
def test_the_lesson_s_widgets_render_and_respond_in_chromium(lab, browser, screenshots, lesson):
    if lesson not in REGISTRY:
        pytest.fail(f"{lesson} has widgets but no REGISTRY entry (see test_every_widget_of_the_lessons_is_registered)")
    page = browser.new_page()
    start = time.perf_counter()
    try:
        page.goto(lab.page_url(f"{lesson}.ipynb"), wait_until="domcontentloaded")
        notebook = Notebook(page, lesson)
        notebook.cells.first.wait_for(timeout=180_000)
        notebook.run_all()
        ran = time.perf_counter() - start
        for k, (index, check) in enumerate(zip(lab.lessons[lesson], REGISTRY[lesson])):
            widget = notebook.widget(index)
            widget.scroll_into_view_if_needed()
            before = show(page, widget, check)
            assert before, f"{lesson}: the widget of cell {index} shows no output after its button"
            widget.screenshot(path=str(screenshots / f"{lesson}-{k}-before.png"))
            for change in check.changes:
                apply(page, widget, change)
            after = show(page, widget, check, before=before)
            widget.screenshot(path=str(screenshots / f"{lesson}-{k}-after.png"))
            (screenshots / f"{lesson}-{k}.txt").write_text(f"{check}\nthe lesson ran in {ran:.0f} s\n\nbefore:\n"
                                                          f"{before}\n\nafter:\n{after}\n", encoding="utf-8")
            assert after != before, f"{lesson}: changing {check.changes} did not change the widget's output"
            assert "error" not in after.lower(), f"{lesson}: the widget shows an error: {after}"
            for pattern in check.expect:
                assert re.search(pattern, after, re.M), f"{lesson}: {pattern!r} not in the output:\n{after}"
        print(f"\n{lesson}: ran in {ran:.0f} s, widgets checked in {time.perf_counter() - start - ran:.0f} s")
    except BaseException:
        page.screenshot(path=str(screenshots / f"{lesson}-failure.png"), full_page=True)
        raise
    finally:
        page.close()


def test_a_widget_that_does_not_render_fails(lab, browser):
    """A stored widget whose model the kernel does not hold (what a front end that cannot load the widgets shows):
    JupyterLab falls back to the widget's text form, and the check says so."""
    nb = {"cells": [{"cell_type": "code", "execution_count": 1, "id": "a", "metadata": {}, "source": "widget",
                     "outputs": [{"output_type": "display_data", "metadata": {},
                                  "data": {WIDGET_VIEW: {"model_id": "0" * 32, "version_major": 2, "version_minor": 0},
                                           "text/plain": "VBox(children=(Button(description='Go'),))"}}]}],
          "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}  # fmt: skip
    (lab.root / "not_rendered.ipynb").write_text(json.dumps(nb))
    page = browser.new_page()
    try:
        page.goto(lab.page_url("not_rendered.ipynb"), wait_until="domcontentloaded")
        notebook = Notebook(page, "not_rendered")
        notebook.cells.first.wait_for(timeout=180_000)
        with pytest.raises(AssertionError, match=r"(?s)did not render.*VBox\(children=\(Button"):
            notebook.widget(0, timeout=10)
    finally:
        page.close()
