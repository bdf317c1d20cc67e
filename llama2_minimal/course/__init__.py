"""The course's own machinery: notebooks in normal form, exercise notebooks generated from the solutions,
and lessons executed in order with their outputs stored.

    llama2-minimal course sync        normal form everywhere, exercises/ written from solutions/
    llama2-minimal course check       the same, writing nothing: exit 1 if any notebook would change
    llama2-minimal course execute     run lessons/ in order and store their outputs (laptop profile)
"""

from .exercises import ExerciseError, make_exercise_notebook
from .notebooks import COURSE_FOLDERS, code_hash, course_root, normal_form, read_notebook, write_notebook
from .sync import sync_course

__all__ = [
    "COURSE_FOLDERS",
    "ExerciseError",
    "code_hash",
    "course_root",
    "make_exercise_notebook",
    "normal_form",
    "read_notebook",
    "sync_course",
    "write_notebook",
]
