"""The project's own files agree with each other: pyproject.toml, environment.yml, README.md, .ci/run."""

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # PyPI name -> conda-forge name, where they differ


def requirement(spec: str) -> tuple[str, str]:
    spec = spec.split(";")[0].strip()
    name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", spec).groups()
    return name.lower(), version.replace(" ", "")


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def conda_environment() -> tuple[dict[str, str], list[str]]:
    """The conda packages (name -> version) and the pip lines of environment.yml (a flat list: no YAML
    library needed)."""
    conda, pip, in_pip = {}, [], False
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("\ndependencies:") :].splitlines():
        stripped = line.split("#")[0].rstrip()
        if re.fullmatch(r"\s*- pip:", stripped):
            in_pip = True
        elif in_pip and re.match(r"\s{4,}- ", stripped):
            pip.append(stripped.split("- ", 1)[1].strip())
        elif re.match(r"\s{2}- ", stripped):
            in_pip = False
            name, version = requirement(stripped.split("- ", 1)[1])
            conda[name] = version
    return conda, pip


def test_environment_yml_lists_what_pyproject_lists():
    project = pyproject()["project"]
    wanted = [
        requirement(r)
        for r in project["dependencies"] + project["optional-dependencies"]["dev"]
        if "python_version" not in r
    ]
    conda, pip = conda_environment()
    for name, version in wanted:
        conda_name = CONDA_NAMES.get(name, name)
        assert conda_name in conda, f"environment.yml lacks {conda_name} (pyproject.toml has {name}{version})"
        assert conda[conda_name] == version, f"{conda_name}: environment.yml {conda[conda_name]} != {version}"
    extra = set(conda) - {CONDA_NAMES.get(n, n) for n, _ in wanted} - {"python", "pip"}
    assert not extra, f"environment.yml has packages pyproject.toml lacks: {sorted(extra)}"
    assert pip == ['-e ".[dev]"'], "environment.yml must install the package itself in editable mode"


def test_torch_is_a_range_not_a_pin():
    deps = dict(requirement(r) for r in pyproject()["project"]["dependencies"])
    assert deps["torch"].startswith(">=") and "==" not in deps["torch"]


def test_readme_quickstart_commands_exist():
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[dev]"' in readme
    assert "conda env create -f environment.yml" in readme
    assert re.search(r"^pytest\b", readme, re.M), "the README's test command"
    scripts = pyproject()["project"]["scripts"]
    assert scripts == {"llama2-minimal": "llama2_minimal.cli:main"}
    from llama2_minimal.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    for used in re.findall(r"^llama2-minimal (\w+)", readme, re.M):
        assert used in commands, f"the README uses `llama2-minimal {used}`, which does not exist"


def test_ci_installs_like_a_new_user_and_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    torch_line = ci.index('"torch==2.13.0"')
    assert torch_line < ci.index('-e ".[dev]"'), "torch must be installed first, from the CPU build on disk"
    assert re.search(r"^pytest$", ci, re.M)
    assert '"$status" -eq 5' in ci, "pytest's exit code 5 (no tests) must be handled"
