"""Text sources of truth: every lesson and solutions notebook is exactly the build of its py:percent source.

The build (course_lib.sources) is deterministic, keeps the stored outputs of NBVAL_CHECK_OUTPUT cells, and
round-trips every cell's type, source and metadata; drift between a notebook and its source is caught and named.
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from nbformat import NotebookNode

from course_lib.layout import CHECKED, ROOT
from course_lib.notebooks import build_exercises
from course_lib.sources import (
    SourceError,
    build_all,
    build_notebook,
    drifted,
    export_all,
    export_notebook,
    notebook_path,
    read_source,
    render_notebook,
    source_path,
)

SOURCES = sorted((ROOT / "sources" / "notebooks").glob("*.py")) + sorted((ROOT / "sources" / "solutions").glob("*.py"))
LESSON = "02_n_plus_one"  # many NBVAL_CHECK_OUTPUT cells, no snippets


def _copy_lesson(tmp_path: Path, lesson: str = LESSON) -> Path:
    """A course root in tmp_path holding one lesson's notebooks, solutions, exercises and sources."""
    for folder in ("notebooks", "solutions", "exercises"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / folder / f"{lesson}.ipynb", tmp_path / folder)
    for folder in ("notebooks", "solutions"):
        (tmp_path / "sources" / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / "sources" / folder / f"{lesson}.py", tmp_path / "sources" / folder)
    if (ROOT / "sources" / "answers").is_dir():
        shutil.copytree(ROOT / "sources" / "answers", tmp_path / "sources" / "answers",
                        ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _edit(path: Path, change: Callable[[NotebookNode], None]) -> None:
    """Change a notebook file with nbformat, as the course's scripts do."""
    nb = nbformat.read(path, as_version=4)
    change(nb)
    path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")


def _checked(nb: NotebookNode) -> list[NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code" and CHECKED in c.source]


# ---------------------------------------------------------------- the committed tree


def test_every_notebook_is_the_build_of_its_source() -> None:
    problems = drifted()
    assert problems == [], "\n".join(problems)


def test_every_lesson_and_solutions_notebook_has_a_source() -> None:
    for folder in ("notebooks", "solutions"):
        notebooks = {p.stem for p in (ROOT / folder).glob("*.ipynb")}
        assert notebooks and notebooks == {p.stem for p in (ROOT / "sources" / folder).glob("*.py")}, folder


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_building_an_unchanged_source_rewrites_nothing(py: Path, tmp_path: Path) -> None:
    committed = notebook_path(py)
    assert committed.is_file(), f"{py.relative_to(ROOT)} was never built: no {committed.relative_to(ROOT)}"
    target = tmp_path / committed.parent.name / committed.name
    target.parent.mkdir()
    shutil.copy2(committed, target)
    assert build_notebook(py, target) is False, f"building {py.name} changed {committed.name}"
    assert target.read_bytes() == committed.read_bytes()
    fresh_a, fresh_b = tmp_path / "a.ipynb", tmp_path / "b.ipynb"  # no stored outputs to keep: still deterministic
    build_notebook(py, fresh_a), build_notebook(py, fresh_b)
    assert fresh_a.read_bytes() == fresh_b.read_bytes()
    ids = [c.id for c in nbformat.read(fresh_a, as_version=4).cells]
    assert ids == [c.id for c in nbformat.read(committed, as_version=4).cells]
    assert len(set(ids)) == len(ids)


def test_sources_to_exercises_is_one_chain(tmp_path: Path) -> None:
    """Built from its source, a solutions notebook still generates the committed exercise notebook."""
    root = _copy_lesson(tmp_path)
    (root / "solutions" / f"{LESSON}.ipynb").unlink()
    assert build_all(LESSON, root=root) == [root / "solutions" / f"{LESSON}.ipynb"]
    assert build_exercises(root, check=True) == []


# ---------------------------------------------------------------- stored outputs


def test_stored_check_outputs_survive_a_build(tmp_path: Path) -> None:
    """Outputs follow their cell's source when cells move, and stay by position when a checked cell is edited."""
    root = _copy_lesson(tmp_path)
    ipynb = root / "notebooks" / f"{LESSON}.ipynb"
    before = nbformat.read(ipynb, as_version=4)
    stored = [(c.source, c.outputs, c.execution_count) for c in _checked(before)]
    assert len(stored) >= 4 and all(out for _, out, _ in stored)

    def reorder_and_edit(nb: NotebookNode) -> None:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell("A new first cell."))
        checked = _checked(nb)
        a, b = nb.cells.index(checked[0]), nb.cells.index(checked[1])
        nb.cells[a], nb.cells[b] = nb.cells[b], nb.cells[a]  # two checked cells swap places
        checked[3].source += "\n# a comment added in the source"

    edited = root / "edited.ipynb"
    shutil.copy2(ipynb, edited)
    _edit(edited, reorder_and_edit)
    export_notebook(edited, source_path(ipynb, root))
    assert build_notebook(source_path(ipynb, root), ipynb) is True
    after = _checked(nbformat.read(ipynb, as_version=4))
    assert [c.source for c in after[:2]] == [stored[1][0], stored[0][0]]
    assert [(c.outputs, c.execution_count) for c in after[:2]] == [stored[1][1:], stored[0][1:]], (
        "the outputs of two swapped checked cells did not follow their sources")
    assert after[3].source.endswith("# a comment added in the source")
    assert (after[3].outputs, after[3].execution_count) == stored[3][1:], "an edited checked cell lost its output"
    assert [c.outputs for c in after[4:]] == [out for _, out, _ in stored[4:]]
    unchecked = [c for c in nbformat.read(ipynb, as_version=4).cells if c.cell_type == "code" and c not in after]
    assert all(not c.outputs and c.execution_count is None for c in unchecked)


# ---------------------------------------------------------------- drift is caught and named


def _cell_index(nb: NotebookNode, cell_type: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == cell_type and i > 2)


def _change_notebook_source(root: Path) -> None:
    def change(nb: NotebookNode) -> None:
        i = _cell_index(nb, "markdown")
        nb.cells[i].source = "Edited in the notebook.\n" + nb.cells[i].source
    _edit(root / "notebooks" / f"{LESSON}.ipynb", change)


def _change_the_source(root: Path) -> None:
    py = root / "sources" / "notebooks" / f"{LESSON}.py"
    py.write_text(py.read_text(encoding="utf-8").replace("N+1", "N plus 1", 1), encoding="utf-8")


def _add_a_cell(root: Path) -> None:
    _edit(root / "solutions" / f"{LESSON}.ipynb", lambda nb: nb.cells.append(nbformat.v4.new_code_cell("x = 1")))


def _tag_a_cell(root: Path) -> None:
    def change(nb: NotebookNode) -> None:
        nb.cells[_cell_index(nb, "code")].metadata["tags"] = ["nbval-skip"]
    _edit(root / "notebooks" / f"{LESSON}.ipynb", change)


def _hide_a_cell(root: Path) -> None:
    def change(nb: NotebookNode) -> None:
        nb.cells[_cell_index(nb, "code")].metadata["jupyter"] = {"source_hidden": True}
    _edit(root / "solutions" / f"{LESSON}.ipynb", change)


def _renumber_a_cell(root: Path) -> None:
    def change(nb: NotebookNode) -> None:
        nb.cells[3].id = "a1b2c3d4"
    _edit(root / "notebooks" / f"{LESSON}.ipynb", change)


def _change_a_cell_type(root: Path) -> None:
    def change(nb: NotebookNode) -> None:
        i = _cell_index(nb, "markdown")
        nb.cells[i] = nbformat.v4.new_raw_cell(nb.cells[i].source)
        nb.cells[i].id = f"02-not-{i + 1}"
    _edit(root / "notebooks" / f"{LESSON}.ipynb", change)


def _delete_the_source(root: Path) -> None:
    (root / "sources" / "solutions" / f"{LESSON}.py").unlink()


def _delete_the_notebook(root: Path) -> None:
    (root / "notebooks" / f"{LESSON}.ipynb").unlink()


def _break_the_source(root: Path) -> None:
    py = root / "sources" / "solutions" / f"{LESSON}.py"
    py.write_text(py.read_text(encoding="utf-8") + '\n# %%\n# --8<-- "answers/nothing.py:answer"\n', encoding="utf-8")


@pytest.mark.parametrize(("plant", "says"), [
    (_change_notebook_source, ["notebooks/02_n_plus_one.ipynb differs", "line 1", "Edited in the notebook."]),
    (_change_the_source, ["notebooks/02_n_plus_one.ipynb differs", "N plus 1"]),
    (_add_a_cell, ["solutions/02_n_plus_one.ipynb differs", "cells where the source builds"]),
    (_tag_a_cell, ["notebooks/02_n_plus_one.ipynb differs", "metadata", "nbval-skip"]),
    (_hide_a_cell, ["solutions/02_n_plus_one.ipynb differs", "metadata", "source_hidden"]),
    (_renumber_a_cell, ["notebooks/02_n_plus_one.ipynb differs", "cell 4 has id 'a1b2c3d4'", "02-not-4"]),
    (_change_a_cell_type, ["notebooks/02_n_plus_one.ipynb differs", "raw in the notebook but markdown"]),
    (_delete_the_source, ["solutions/02_n_plus_one.ipynb has no text source"]),
    (_delete_the_notebook, ["sources/notebooks/02_n_plus_one.py was never built"]),
    (_break_the_source, ["sources/solutions/02_n_plus_one.py does not build", "nothing.py"]),
], ids=lambda v: v.__name__.strip("_") if callable(v) else None)
def test_a_planted_drift_is_caught_and_named(tmp_path: Path, plant: Callable[[Path], None], says: list[str]) -> None:
    root = _copy_lesson(tmp_path)
    assert drifted(root) == []
    plant(root)
    problems = drifted(root)
    assert len(problems) == 1, problems
    for words in says:
        assert words in problems[0], problems[0]


def test_building_the_source_ends_a_drift(tmp_path: Path) -> None:
    root = _copy_lesson(tmp_path)
    _change_the_source(root)
    assert build_all(root=root) == [root / "notebooks" / f"{LESSON}.ipynb"]
    assert drifted(root) == []
    assert _checked(nbformat.read(root / "notebooks" / f"{LESSON}.ipynb", as_version=4))[0].outputs


# ---------------------------------------------------------------- what a source round-trips


def _every_kind_of_cell() -> NotebookNode:
    v4 = nbformat.v4
    return v4.new_notebook(cells=[
        v4.new_markdown_cell("# Title\n\nSome *text*, a table:\n\n| a | b |\n| --- | --- |", metadata={}),
        v4.new_markdown_cell("Why it works.", metadata={"tags": ["solution"]}),
        v4.new_code_cell("import time\n\n\nx = 1", metadata={"jupyter": {"source_hidden": True}, "collapsed": True}),
        v4.new_code_cell("%time x = 1\n!echo hi\nawait something()", metadata={"tags": ["nbval-ignore-output"]}),
        v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)"),
        v4.new_code_cell("def f():\n    ### BEGIN SOLUTION\n    #> return 0\n    return 1\n    ### END SOLUTION",
                         metadata={"lab": {"role": "answer", "exercise": "00.x"}, "editable": False}),
        v4.new_raw_cell("raw text", metadata={"format": "text/plain"}),
        v4.new_code_cell(""),
        v4.new_markdown_cell("line\n\n\n\nafter blank lines"),
        v4.new_code_cell("\n\nx = 1", metadata={"tags": ["nbval-raises-exception", "nbval-skip"]}),
    ])


def test_every_cell_type_source_and_metadata_round_trips(tmp_path: Path) -> None:
    nb = _every_kind_of_cell()
    ipynb = tmp_path / "notebooks" / "42_demo.ipynb"
    ipynb.parent.mkdir()
    ipynb.write_text(nbformat.writes(nb), encoding="utf-8")
    py = tmp_path / "sources" / "notebooks" / "42_demo.py"
    assert export_notebook(ipynb, py) is True
    assert export_notebook(ipynb, py) is False, "exporting the same notebook again changed its source"
    built = read_source(py)
    assert [(c.cell_type, c.source, dict(c.metadata)) for c in built.cells] == [
        (c.cell_type, c.source, dict(c.metadata)) for c in nb.cells]
    assert [c.id for c in built.cells] == [f"42-not-{i}" for i in range(1, len(nb.cells) + 1)]
    assert built.metadata["kernelspec"]["name"] == "python3" and "jupytext" not in built.metadata
    assert "source_hidden" in py.read_text(encoding="utf-8") and "kernelspec" not in py.read_text(encoding="utf-8")


@pytest.mark.parametrize(("cell", "says"), [
    (nbformat.v4.new_code_cell("x = 1\n# %% looks like a new cell\ny = 2"), "cell 1 (code)"),
    (nbformat.v4.new_code_cell("x = 1\n# %% looks like a new cell\ny = 2"), "its line 2 starts like a cell marker"),
    (nbformat.v4.new_code_cell("# In[3]:\nx = 1"), "its line 1 starts like a cell marker"),
    (nbformat.v4.new_code_cell("x = 1\n"), "remove the trailing blank line(s)"),
    (nbformat.v4.new_markdown_cell("![a](attachment:a.png)",
                                   attachments={"a.png": {"image/png": "iVBORw0KGgo="}}), "it has attachments"),
], ids=["percent-line", "percent-line-named", "in-line", "trailing-newline", "attachment"])
def test_a_cell_text_cannot_hold_is_refused_by_name(tmp_path: Path, cell: NotebookNode, says: str) -> None:
    ipynb = tmp_path / "99_lossy.ipynb"
    ipynb.write_text(nbformat.writes(nbformat.v4.new_notebook(cells=[cell])), encoding="utf-8")
    with pytest.raises(SourceError, match="does not survive py:percent") as error:
        export_notebook(ipynb, tmp_path / "99_lossy.py")
    assert says in str(error.value) and "99_lossy.ipynb" in str(error.value)
    assert not (tmp_path / "99_lossy.py").exists()


def test_a_build_keeps_the_python_version_the_notebook_was_stored_with(tmp_path: Path) -> None:
    """Built on another Python, an unchanged source still rewrites nothing (language_info.version is kept)."""
    root = _copy_lesson(tmp_path)
    ipynb = root / "notebooks" / f"{LESSON}.ipynb"
    _edit(ipynb, lambda nb: nb.metadata["language_info"].update(version="3.11.0"))
    assert drifted(root) == []
    assert build_notebook(source_path(ipynb, root), ipynb) is False
    fresh = tmp_path / "fresh.ipynb"
    build_notebook(source_path(ipynb, root), fresh)
    assert nbformat.read(fresh, as_version=4).metadata["language_info"]["version"] == platform.python_version()


def test_run_timings_in_cell_metadata_stay_out_of_the_source(tmp_path: Path) -> None:
    """JupyterLab records each run's times in `execution` metadata: a source (and its build) never holds them."""
    nb = _every_kind_of_cell()
    nb.cells[2].metadata["execution"] = {"iopub.execute_input": "2026-12-01T06:00:00.1Z"}
    nb.cells[3].metadata["ExecuteTime"] = {"end_time": "2026-12-01T06:00:00.2Z"}
    ipynb, py = tmp_path / "notebooks" / "42_demo.ipynb", tmp_path / "sources" / "notebooks" / "42_demo.py"
    ipynb.parent.mkdir()
    ipynb.write_text(nbformat.writes(nb), encoding="utf-8")
    export_notebook(ipynb, py)
    assert "2026-12-01" not in py.read_text(encoding="utf-8")
    assert [dict(c.metadata) for c in read_source(py).cells] == [dict(c.metadata) for c in _every_kind_of_cell().cells]


def test_a_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no source"):
        build_notebook(tmp_path / "sources" / "notebooks" / "42_none.py", tmp_path / "42_none.ipynb")
    with pytest.raises(SourceError, match="no source"):
        render_notebook(tmp_path / "missing.py")


# ---------------------------------------------------------------- snippets: reference answers spliced in


ANSWER_MODULE = '''"""A reference answer."""


class Shop:
    """The class the learner writes."""

    # --8<-- [start:answer]
    name: str = "shop"

    def total(self) -> int:
        return 1
    # --8<-- [end:answer]
'''


MARKERS = ['# --8<-- "answers/l42_demo.py:answer"', '...  # --8<-- "answers/l42_demo.py:answer"']


def _snippet_lesson(tmp_path: Path, marker: str = MARKERS[0]) -> tuple[Path, Path]:
    (tmp_path / "sources" / "answers").mkdir(parents=True)
    (tmp_path / "sources" / "answers" / "l42_demo.py").write_text(ANSWER_MODULE, encoding="utf-8")
    py = tmp_path / "sources" / "solutions" / "42_demo.py"
    py.parent.mkdir(parents=True)
    py.write_text('# %%\nclass Shop:\n    ### BEGIN SOLUTION\n    #> pass\n'
                  f'    {marker}\n    ### END SOLUTION\n\n\n# %%\ncheck("42.demo", Shop)\n',
                  encoding="utf-8")
    return py, tmp_path / "solutions" / "42_demo.ipynb"


@pytest.mark.parametrize("marker", MARKERS, ids=["comment", "ellipsis"])
def test_a_snippet_splices_the_answer_module_at_its_indentation(tmp_path: Path, marker: str) -> None:
    py, ipynb = _snippet_lesson(tmp_path, marker)
    build_notebook(py, ipynb)
    cell = nbformat.read(ipynb, as_version=4).cells[0]
    assert cell.source == ('class Shop:\n    ### BEGIN SOLUTION\n    #> pass\n    name: str = "shop"\n\n'
                           '    def total(self) -> int:\n        return 1\n    ### END SOLUTION')
    namespace: dict[str, object] = {}
    exec(compile(cell.source, "<cell>", "exec"), namespace)  # noqa: S102 - the test's own text
    assert namespace["Shop"]().total() == 1  # type: ignore[operator]


@pytest.mark.parametrize("marker", MARKERS, ids=["comment", "ellipsis"])
def test_exporting_keeps_the_snippet_line(tmp_path: Path, marker: str) -> None:
    py, ipynb = _snippet_lesson(tmp_path, marker)
    text = py.read_text(encoding="utf-8")
    build_notebook(py, ipynb)
    assert export_notebook(ipynb, py) is False
    assert py.read_text(encoding="utf-8") == text

    def markdown_before(nb: NotebookNode) -> None:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell("Added in the notebook."))
    _edit(ipynb, markdown_before)
    assert export_notebook(ipynb, py) is True
    assert f"\n    {marker}\n" in py.read_text(encoding="utf-8")
    assert "Added in the notebook." in py.read_text(encoding="utf-8")


def test_exporting_refuses_an_answer_edited_in_the_notebook(tmp_path: Path) -> None:
    py, ipynb = _snippet_lesson(tmp_path)
    build_notebook(py, ipynb)
    _edit(ipynb, lambda nb: setattr(nb.cells[0], "source", nb.cells[0].source.replace("return 1", "return 2")))
    with pytest.raises(SourceError, match="l42_demo.py:answer") as error:
        export_notebook(ipynb, py)
    assert "make that edit in the module" in str(error.value)


@pytest.mark.parametrize(("module", "says"), [
    (None, "does not exist"),
    (ANSWER_MODULE.replace("# --8<-- [end:answer]", ""), "1 start, 0 end"),
    (ANSWER_MODULE + "# --8<-- [start:answer]\n# --8<-- [end:answer]\n", "2 start, 2 end"),
], ids=["no-module", "no-end", "twice"])
def test_a_broken_snippet_is_a_clear_error(tmp_path: Path, module: str | None, says: str) -> None:
    py, ipynb = _snippet_lesson(tmp_path)
    answer = tmp_path / "sources" / "answers" / "l42_demo.py"
    if module is None:
        answer.unlink()
    else:
        answer.write_text(module, encoding="utf-8")
    with pytest.raises(SourceError, match=says):
        build_notebook(py, ipynb)


def test_each_reference_answer_module_is_spliced_into_its_solution() -> None:
    """A section of sources/answers/ is used by a solution source, and the built solution holds its lines."""
    import ast
    import re

    answers = sorted((ROOT / "sources" / "answers").glob("l*.py"))
    assert answers, "no reference answer modules"
    for module in answers:
        sections = re.findall(r"# --8<-- \[start:([\w.-]+)\]", module.read_text(encoding="utf-8"))
        lesson = module.stem[1:]
        solution = ROOT / "sources" / "solutions" / f"{lesson}.py"
        text = solution.read_text(encoding="utf-8")
        assert (ROOT / "solutions" / f"{lesson}.ipynb").is_file(), f"solutions/{lesson}.ipynb was never built"
        built = nbformat.read(ROOT / "solutions" / f"{lesson}.ipynb", as_version=4)
        for section in sections:
            assert f'# --8<-- "answers/{module.name}:{section}"' in text, f"{module.name}:{section} is spliced nowhere"
        compile(text, str(solution), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)  # the source stays valid Python
        assert not any("--8<--" in c.source for c in built.cells), "a snippet line was left in the built notebook"


def _answer_holders(root: Path) -> list[Path]:
    """Every file of the course that holds a reference answer: a BEGIN SOLUTION block or a snippet section.
    (Not course_lib/: the kernel must import it, so it is readable by design and holds templates, not answers.)"""
    import os

    from course_lib.layout import BEGIN

    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in {".venv", ".git", "build", "artifacts", "node_modules", "__pycache__"}
                   and not d.endswith("_cache") and Path(folder, d) != root / "course_lib"]
        for name in files:
            path = Path(folder) / name
            if name.endswith(".ipynb"):
                try:
                    cells = nbformat.read(path, as_version=4).cells
                except Exception:  # noqa: BLE001 - not a notebook this test is about
                    continue
                lines = [line.strip() for c in cells if c.cell_type == "code" for line in c.source.split("\n")]
            elif name.endswith(".py"):
                lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").split("\n")]
            else:
                continue
            if BEGIN in lines or any(line.startswith("# --8<-- [start:") for line in lines):
                found.append(path)
    return found


def test_class_grading_hides_every_file_that_holds_a_reference_answer(tmp_path: Path) -> None:
    """The text sources hold the answers too: a learner's kernel must not read them while being graded."""
    from course_lib.notebooks import _hidden_from_learners

    hidden = _hidden_from_learners(tmp_path, ROOT)
    holders = _answer_holders(ROOT)
    assert any(p.parent.name == "answers" for p in holders) and any(p.suffix == ".ipynb" for p in holders)
    readable = [str(p.relative_to(ROOT)) for p in holders if not any(p.is_relative_to(h) for h in hidden)]
    assert readable == [], f"readable by a learner's kernel during class grading: {readable}"


def test_export_all_writes_back_only_notebooks_edited_after_their_sources(tmp_path: Path) -> None:
    """A notebook edited in JupyterLab goes back to its source; a source edited since is never overwritten."""
    import os

    root = _copy_lesson(tmp_path)
    py = root / "sources" / "notebooks" / f"{LESSON}.py"
    assert export_all(root=root) == [], "a notebook equal to its source's build rewrote the source"
    _change_notebook_source(root)
    assert export_all(root=root) == [py] and "Edited in the notebook." in py.read_text(encoding="utf-8")
    assert drifted(root) == []

    _change_notebook_source(root)  # both sides edited: the source last
    _change_the_source(root)
    later = (root / "notebooks" / f"{LESSON}.ipynb").stat().st_mtime_ns + 10**9
    os.utime(py, ns=(later, later))
    text = py.read_text(encoding="utf-8")
    with pytest.raises(SourceError, match="edited after their notebooks: sources/notebooks/02_n_plus_one.py"):
        export_all(root=root)
    assert py.read_text(encoding="utf-8") == text, "a source edited after its notebook was overwritten"
    assert export_all(root=root, force=True) == [py] and "N plus 1" not in py.read_text(encoding="utf-8")
