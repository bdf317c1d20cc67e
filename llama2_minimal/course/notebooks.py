"""Notebooks in one normal form, so that a diff shows only what a person changed.

Normal form: nbformat 4.5; cell ids derived from the cell's content (stable when other cells move); only the
metadata the course uses (the kernel, cell tags, llama2_minimal's own records); exercise and solution notebooks
without outputs; lessons with their outputs, execution counts numbered in order; JSON as Jupyter writes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import nbformat

COURSE_FOLDERS = ("lessons", "solutions", "exercises")
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
META_KEY = "llama2_minimal"  # the notebook metadata the course writes itself


def course_root(start: str | os.PathLike | None = None) -> Path:
    """The repository folder that holds lessons/, solutions/ and exercises/ (found upwards from start)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "solutions").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    package_root = Path(__file__).resolve().parents[2]
    if (package_root / "solutions").is_dir():
        return package_root
    raise FileNotFoundError(
        f"no course found above {here}: run this from the llama2-minimal repository (the folder with solutions/)."
    )


def read_notebook(path: str | os.PathLike) -> nbformat.NotebookNode:
    try:
        return nbformat.read(str(path), as_version=4)
    except (json.JSONDecodeError, nbformat.reader.NotJSONError) as err:
        raise ValueError(f"{path} is not a notebook (invalid JSON): {err}") from None


def dumps(nb: nbformat.NotebookNode) -> str:
    """The file content: Jupyter's own JSON layout (indent 1, sorted keys, UTF-8) and a final newline."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def write_notebook(nb: nbformat.NotebookNode, path: str | os.PathLike) -> bool:
    """Write atomically (a temporary file renamed into place); returns whether the file changed."""
    path = Path(path)
    text = dumps(nb)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def _source(cell) -> str:
    return cell.source if isinstance(cell.source, str) else "".join(cell.source)


def code_hash(nb: nbformat.NotebookNode) -> str:
    """A hash of the code cells' sources: the outputs stored with a lesson belong to this code."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            digest.update(_source(cell).encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def content_hash(nb: nbformat.NotebookNode) -> str:
    """A hash of every cell's type and source: what a learner edits."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        digest.update(cell.cell_type.encode() + b"\0" + _source(cell).encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


def _clean_output(output: dict) -> dict:
    output = dict(output)
    output.pop("transient", None)
    if output.get("output_type") == "execute_result":
        output["metadata"] = output.get("metadata", {})
    return output


def normal_form(nb: nbformat.NotebookNode, keep_outputs: bool) -> nbformat.NotebookNode:
    """A new notebook in normal form (see the module docstring)."""
    course_meta = nb.metadata.get(META_KEY)
    out = nbformat.v4.new_notebook()
    out.nbformat, out.nbformat_minor = 4, 5
    out.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    if course_meta:
        out.metadata[META_KEY] = course_meta
    if keep_outputs and nb.metadata.get("widgets"):  # the stored state lets a web page render the widgets
        out.metadata["widgets"] = nb.metadata["widgets"]
    seen: dict[str, int] = {}
    count = 0
    for cell in nb.cells:
        source = _source(cell).rstrip("\n")
        tags = sorted(set(cell.get("metadata", {}).get("tags", [])))
        key = hashlib.sha1(f"{cell.cell_type}\0{source}".encode()).hexdigest()[:8]
        seen[key] = seen.get(key, 0) + 1
        cell_id = key if seen[key] == 1 else f"{key}-{seen[key]}"
        if cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(source=source)
            if keep_outputs and cell.get("outputs"):
                count += 1
                new.outputs = [_clean_output(o) for o in cell.outputs]
                for o in new.outputs:
                    if o.get("output_type") == "execute_result":
                        o["execution_count"] = count
                new.execution_count = count
            elif keep_outputs and cell.get("execution_count") is not None:
                count += 1
                new.execution_count = count
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(source=source)
            if cell.get("attachments"):
                new.attachments = cell.attachments
        else:
            new = nbformat.v4.new_raw_cell(source=source)
        new.id = cell_id
        new.metadata = {"tags": tags} if tags else {}
        out.cells.append(new)
    return nbformat.from_dict(out)
