"""Every lesson, as a whole: exercises generated from solutions, clean stored outputs, and honest graders.

These tests discover lessons by their files, so a new lesson is covered the moment it exists.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import nbformat
import pytest

from course_lib.grading import exercises
from course_lib.layout import language_info
from course_lib.notebooks import (
    CHECKED,
    ROOT,
    build_exercise,
    build_exercises,
    clean_notebook,
    grade_notebook,
    reset_exercise,
    strip_solutions,
)

SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
LESSONS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))


# ---------- the generator ----------

def test_solution_regions_become_stubs_with_indentation():
    source = "def f(x):\n    ### BEGIN SOLUTION\n    return x * 2\n    ### END SOLUTION\n"
    assert strip_solutions(source) == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"


def test_starter_lines_replace_the_stub():
    source = "### BEGIN SOLUTION\n#> stmt = select(User)  # 1 + N\nstmt = select(User).options(x)\n### END SOLUTION"
    assert strip_solutions(source) == "# YOUR CODE HERE\nstmt = select(User)  # 1 + N"


@pytest.mark.parametrize("broken", [
    "### BEGIN SOLUTION\nx = 1",
    "x = 1\n### END SOLUTION",
    "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION",
])
def test_unbalanced_markers_are_errors(broken):
    with pytest.raises(ValueError):
        strip_solutions(broken)


def test_solution_tagged_cells_are_dropped_and_cells_tagged_by_exercise():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("why it works", metadata={"tags": ["solution"]}),
        nbformat.v4.new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"),
        nbformat.v4.new_code_cell('check("00.demo", f)'),
    ])
    built = build_exercise(nb)
    assert len(built.cells) == 2
    assert built.cells[0].metadata["lab"] == {"role": "answer", "exercise": "00.demo"}
    assert built.cells[1].metadata["lab"] == {"role": "check", "exercise": "00.demo"}


# ---------- the committed notebooks ----------

def test_exercises_are_exactly_what_the_solutions_generate():
    assert build_exercises(ROOT, check=True) == [], (
        "exercises/ drifted from solutions/: run `python -m course_lib build-exercises`")
    assert {p.name for p in EXERCISES} == {p.name for p in SOLUTIONS}


@pytest.mark.parametrize("path", LESSONS + SOLUTIONS + EXERCISES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stored_notebooks_are_clean(path: Path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    stored = dict(nb.metadata.get("language_info", {}))
    expected = language_info()
    assert set(stored) == set(expected), "incomplete language_info: JupyterLab would open it as modified"
    cleaned = clean_notebook(nb)
    cleaned.metadata["language_info"]["version"] = stored["version"]  # whichever Python last stored it
    assert cleaned == nb, "outputs stored outside NBVAL_CHECK_OUTPUT cells: run refresh-outputs"
    for cell in nb.cells:
        if cell.cell_type == "code" and CHECKED in cell.source:
            assert cell.outputs, f"a {CHECKED} cell has no stored output: run refresh-outputs"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_each_lesson_has_its_lesson_notebook_module_and_checks(path: Path):
    lesson = path.stem
    assert (ROOT / "notebooks" / path.name).exists(), f"no notebooks/{path.name}"
    number, name = lesson.split("_", 1)
    assert (ROOT / "course_lib" / "lessons" / f"l{number}_{name}.py").exists() or (
        ROOT / "course_lib" / "lessons" / f"l{number}_{name}").is_dir()
    built = build_exercise(nbformat.read(path, as_version=4))
    checked = {c.metadata["lab"]["exercise"] for c in built.cells if c.metadata.get("lab", {}).get("role") == "check"}
    registered = {e.id for e in exercises(lesson)}
    assert registered, f"no exercise registered for lesson {lesson}"
    assert checked == registered, "each registered exercise needs exactly one check cell in the solutions notebook"
    answers = [c for c in built.cells if c.metadata.get("lab", {}).get("role") == "answer"]
    assert answers and all("exercise" in c.metadata["lab"] for c in answers)


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_shipped_exercises_fail_every_check_with_a_hint(path: Path):
    """Like `nbgrader validate --invert`: an untouched exercise notebook passes nothing."""
    rows = grade_notebook(path, timeout=300)
    assert rows, f"no exercises graded in {path.name}"
    for row in rows:
        assert row.status == "failed", f"{row.exercise} is {row.status} as shipped: {row.message}"
        assert "Hint:" in row.message


def test_grading_a_notebook_reports_deleted_check_cells_as_missing(tmp_path: Path):
    source = nbformat.read(ROOT / "solutions" / "00_welcome.ipynb", as_version=4)
    source.cells = [c for c in source.cells if "check(" not in c.source]
    target = tmp_path / "00_welcome.ipynb"
    nbformat.write(source, target)
    rows = grade_notebook(target, timeout=120)
    assert [(r.exercise, r.status) for r in rows] == [("00.first-endpoint", "missing")]


def test_an_answer_cell_that_stops_with_an_error_is_named_in_the_row(tmp_path: Path):
    """A SyntaxError in the answer cell is the learner's to fix: the row names it, not only the missing name."""
    nb = nbformat.read(ROOT / "exercises" / "00_welcome.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("lab", {}).get("role") == "answer":
            cell.source = "def make_app(db:\n    return None\n"
    target = tmp_path / "00_welcome.ipynb"
    nbformat.write(nb, target)
    (row,) = grade_notebook(target, timeout=120)
    assert row.status == "failed" and "your answer cell stopped with SyntaxError" in row.message, row.message


def test_reset_restores_the_shipped_notebook_and_keeps_a_backup(tmp_path: Path):
    for folder in ("solutions", "exercises"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns(".backup"))
    learner = tmp_path / "exercises" / "00_welcome.ipynb"
    learner.write_text("my work")
    target, backup = reset_exercise("00_welcome", tmp_path)
    assert backup is not None and backup.read_text() == "my work"
    assert target.read_text() == (ROOT / "exercises" / "00_welcome.ipynb").read_text()
    with pytest.raises(FileNotFoundError, match="known"):
        reset_exercise("99_nothing", tmp_path)


def test_a_kernel_dying_at_start_gets_another_try(monkeypatch, tmp_path: Path):
    import nbclient

    from course_lib import notebooks

    starts = []

    class FlakyClient:
        def __init__(self, nb, **kwargs):
            self.nb = nb

        def execute(self):
            starts.append(1)
            if len(starts) == 1:
                raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(nbclient, "NotebookClient", FlakyClient)
    notebooks._run(nbformat.v4.new_notebook(), tmp_path, timeout=10, allow_errors=True, env={})
    assert len(starts) == 2

    class BrokenClient(FlakyClient):
        def execute(self):
            raise RuntimeError("something else")

    monkeypatch.setattr(nbclient, "NotebookClient", BrokenClient)
    with pytest.raises(RuntimeError, match="something else"):
        notebooks._run(nbformat.v4.new_notebook(), tmp_path, timeout=10, allow_errors=True, env={})


def test_stored_language_info_is_what_the_kernel_reports():
    """JupyterLab replaces language_info with the kernel's on open; equal values leave the notebook unmodified."""
    from ipykernel.ipkernel import IPythonKernel

    assert language_info() == {**IPythonKernel.language_info, "version": platform.python_version()}
    stored = dict(nbformat.read(ROOT / "notebooks" / "00_welcome.ipynb", as_version=4).metadata["language_info"])
    assert stored.pop("version").startswith("3.")
    assert stored == {k: v for k, v in language_info().items() if k != "version"}
