"""Notebook tooling: generate exercises from solutions, keep stored outputs clean, and grade notebooks by running them."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from .grading import exercises

__all__ = [
    "ROOT",
    "strip_solutions",
    "build_exercise",
    "build_exercises",
    "clean_notebook",
    "execute_notebook",
    "refresh_outputs",
    "GradeRow",
    "grade_notebook",
    "grade_class",
    "reset_exercise",
]

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STARTER = "#> "
CHECKED = "NBVAL_CHECK_OUTPUT"
_CHECK_CALL = re.compile(r"""check\(\s*["']([\w.\-]+)["']""")


def strip_solutions(source: str) -> str:
    """Replace each BEGIN/END SOLUTION region by its `#> ` starter lines, or by a YOUR CODE HERE stub."""
    out: list[str] = []
    inside = False
    starter: list[str] = []
    indent = ""
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError("nested '### BEGIN SOLUTION'")
            inside, starter, indent = True, [], line[: len(line) - len(line.lstrip())]
        elif stripped == END:
            if not inside:
                raise ValueError("'### END SOLUTION' without BEGIN")
            inside = False
            out.append(f"{indent}# YOUR CODE HERE")
            out.extend(starter or [f"{indent}raise NotImplementedError()"])
        elif inside:
            if stripped.startswith(STARTER.strip()):
                starter.append(indent + stripped[len(STARTER):] if stripped.startswith(STARTER) else indent)
        else:
            out.append(line)
    if inside:
        raise ValueError("'### BEGIN SOLUTION' without END")
    return "\n".join(out)


def _clear(cell: NotebookNode) -> None:
    if cell.cell_type == "code":
        cell.outputs = []
        cell.execution_count = None


def clean_notebook(nb: NotebookNode) -> NotebookNode:
    """Drop outputs and counters, except in `# NBVAL_CHECK_OUTPUT` cells (nbval compares those; the counter
    tells nbval they ran, and is the same on every run-all)."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if CHECKED not in cell.source:
            _clear(cell)
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nb.metadata["language_info"] = {"name": "python"}  # not the version of whoever ran it last
    return nb


def build_exercise(solution: NotebookNode, keep_answers: bool = False) -> NotebookNode:
    """The learner's notebook: answers stubbed, `solution`-tagged cells dropped, answer/check cells tagged by id.
    With keep_answers=True the reference answers stay in: a "solved" exercise notebook (tests, demos)."""
    nb = copy.deepcopy(solution)
    cells: list[NotebookNode] = []
    for cell in nb.cells:
        if "solution" in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "code" and BEGIN in cell.source:
            if not keep_answers:
                cell.source = strip_solutions(cell.source)
            cell.metadata["lab"] = {"role": "answer"}
        _clear(cell)
        cells.append(cell)
    pending: list[NotebookNode] = []
    for cell in cells:  # an answer cell belongs to the exercise of the next check(...) cell
        if cell.metadata.get("lab", {}).get("role") == "answer":
            pending.append(cell)
        match = _CHECK_CALL.search(cell.source) if cell.cell_type == "code" else None
        if match:
            cell.metadata["lab"] = {"role": "check", "exercise": match.group(1)}
            for answer in pending:
                answer.metadata["lab"]["exercise"] = match.group(1)
            pending = []
    nb.cells = cells
    return nb


def _dumps(nb: NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def build_exercises(root: Path = ROOT, check: bool = False, names: Sequence[str] = ()) -> list[Path]:
    """Write exercises/NAME.ipynb from each solutions/NAME.ipynb (or only the named lessons, e.g. "02" or
    "02_n_plus_one"); with check=True only list those out of date."""
    stale: list[Path] = []
    for solution_path in sorted((root / "solutions").glob("*.ipynb")):
        if names and not any(solution_path.stem == n or solution_path.stem.startswith(f"{n}_") for n in names):
            continue
        target = root / "exercises" / solution_path.name
        text = _dumps(build_exercise(nbformat.read(solution_path, as_version=4)))
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            stale.append(target)
            if not check:
                target.parent.mkdir(exist_ok=True)
                target.write_text(text, encoding="utf-8")
    return stale


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (kernels started inside inherit them), then restore."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(nb: NotebookNode, folder: Path, *, timeout: int, allow_errors: bool, env: dict[str, str]) -> None:
    from nbclient import NotebookClient

    with _environment(env):
        for attempt in range(3):  # a kernel that dies while starting (a port taken under load) gets another try
            try:
                NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                               resources={"metadata": {"path": str(folder)}}).execute()
                return
            except RuntimeError as error:
                if "died before replying to kernel_info" not in str(error) or attempt == 2:
                    raise


def execute_notebook(path: Path, *, timeout: int = 600, allow_errors: bool = False,
                     env: dict[str, str] | None = None) -> NotebookNode:
    """Run every cell of a notebook in a fresh `python3` kernel, in the notebook's folder; return it executed."""
    nb = nbformat.read(path, as_version=4)
    _run(nb, path.parent, timeout=timeout, allow_errors=allow_errors, env=env or {})
    return nb


def refresh_outputs(path: Path) -> None:
    """Execute a lesson or solutions notebook and store only the outputs nbval checks."""
    executed = execute_notebook(path)
    nbformat.write(clean_notebook(executed), path)


@dataclass
class GradeRow:
    """One line of a grading report."""

    notebook: str
    exercise: str
    title: str
    status: str  # "passed", "failed" or "missing"
    figures: str
    message: str


def _official_checks(lesson: str, root: Path) -> dict[str, str]:
    """The shipped check cell of each exercise of a lesson, by exercise id (from solutions/, the source)."""
    solution = root / "solutions" / f"{lesson}.ipynb"
    if not solution.exists():
        return {}
    built = build_exercise(nbformat.read(solution, as_version=4))
    return {cell.metadata["lab"]["exercise"]: cell.source for cell in built.cells
            if cell.metadata.get("lab", {}).get("role") == "check"}


def _role(cell: NotebookNode) -> tuple[str, str]:
    lab = cell.metadata.get("lab", {}) if isinstance(cell.metadata.get("lab"), dict) else {}
    return lab.get("role", ""), lab.get("exercise", "")


def grade_notebook(path: Path, timeout: int = 600, root: Path | None = None) -> list[GradeRow]:
    """Grade a learner's exercise notebook: run its cells, with its own check cells replaced by the *shipped*
    check of each exercise, run right after that exercise's last answer cell (found by metadata, not position)."""
    lesson = path.stem
    expected = exercises(lesson)
    checks = _official_checks(lesson, root or ROOT)
    results: dict[str, dict[str, Any]] = {}
    answered: set[str] = set()
    problem = ""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "results.jsonl"
        log.touch()
        try:
            nb = nbformat.read(path, as_version=4)
            learner_cells = [c for c in nb.cells if c.cell_type == "code" and _role(c)[0] != "check"]
            answered = {_role(c)[1] for c in learner_cells if _role(c)[0] == "answer"}
            last_answer = {_role(c)[1]: i for i, c in enumerate(learner_cells) if _role(c)[0] == "answer"}
            cells: list[NotebookNode] = []
            for i, cell in enumerate(learner_cells):  # each shipped check right after its exercise's answer
                cells.append(cell)
                cells += [nbformat.v4.new_code_cell(checks[ex_id]) for ex_id, last in last_answer.items()
                          if last == i and ex_id in checks]
            nb.cells = cells
            # check() in the kernel appends each result to this file
            _run(nb, path.parent, timeout=timeout, allow_errors=True, env={"COURSE_LAB_RESULTS": str(log)})
        except Exception as error:  # corrupt file, dead kernel, a cell over the time limit
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            problem = f"the notebook could not be graded: {type(error).__name__}: {first_line}"
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines()[:1000]:
            try:  # a line the kernel did not write as a result (or wrote garbled) is skipped, never a crash
                record = json.loads(line)
                if (isinstance(record, dict) and record.get("exercise") in checks and isinstance(record.get("passed"), bool)
                        and isinstance(record.get("message"), str) and isinstance(record.get("figures"), dict)):
                    results[record["exercise"]] = record
            except ValueError:
                continue
    rows = []
    for ex in expected:
        record = results.get(ex.id)
        if record is None:
            why = problem or ("its answer cell is missing (deleted, or pasted into a new cell): "
                              f"`python -m course_lib reset {lesson}` restores the notebook"
                              if ex.id not in answered else "its check did not run")
            rows.append(GradeRow(path.name, ex.id, ex.title, "missing", "", why))
            continue
        figures = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in record["figures"].items())
        message = record["message"] + (f" Hint: {record['hint']}" if record.get("hint") else "")
        rows.append(GradeRow(path.name, ex.id, ex.title, "passed" if record["passed"] else "failed", figures, message))
    return rows


def grade_class(folder: Path, root: Path | None = None) -> list[tuple[str, GradeRow]]:
    """Grade every learner's folder (one per learner) of exercise notebooks: (learner, row) for each exercise."""
    rows: list[tuple[str, GradeRow]] = []
    for learner in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for notebook in sorted(learner.glob("*.ipynb")):
            if not exercises(notebook.stem):
                continue  # not an exercise notebook of this course
            rows += [(learner.name, row) for row in grade_notebook(notebook, timeout=300, root=root)]
    return rows


def reset_exercise(name: str, root: Path = ROOT) -> tuple[Path, Path | None]:
    """Restore exercises/NAME.ipynb to its shipped state; the learner's copy is kept in exercises/.backup/."""
    solution = root / "solutions" / f"{Path(name).stem}.ipynb"
    if not solution.exists():
        known = ", ".join(p.stem for p in sorted((root / "solutions").glob("*.ipynb")))
        raise FileNotFoundError(f"no exercise notebook {name!r}; known: {known}")
    target = root / "exercises" / solution.name
    backup = None
    if target.exists():
        backup = root / "exercises" / ".backup" / f"{solution.stem}-{datetime.now():%Y%m%d-%H%M%S}-{time.time_ns() % 1000}.ipynb"
        backup.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(target, backup)
    target.write_text(_dumps(build_exercise(nbformat.read(solution, as_version=4))), encoding="utf-8")
    return target, backup
