"""Grading a class: one folder per learner, graded by cell metadata with the shipped checks, into a CSV.

A synthetic class covers what instructors meet: solved, unsolved, partly solved, cells reordered,
an answer cell deleted, a tampered check cell, and a corrupt file. None of them crashes the run.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import nbformat
import pytest

from course_lib.__main__ import main
from course_lib.grading import exercises
from course_lib.notebooks import ROOT, build_exercise

WELCOME = "00_welcome"


def _notebook(lesson: str, solved: set[str] | None = None) -> nbformat.NotebookNode:
    """The shipped exercise notebook of `lesson`, with the reference answer filled in for `solved` ids."""
    solution = nbformat.read(ROOT / "solutions" / f"{lesson}.ipynb", as_version=4)
    blank, filled = build_exercise(solution), build_exercise(solution, keep_answers=True)
    for cell, answer in zip(blank.cells, filled.cells, strict=True):
        if cell.metadata.get("lab", {}).get("exercise") in (solved or set()) and cell.metadata["lab"]["role"] == "answer":
            cell.source = answer.source
    return blank


# a lesson with several exercises for the partly-solved learner; 02 grades in seconds (01 starts real servers)
PARTIAL = "02_n_plus_one"


def _multi_exercise_lesson() -> str:
    assert len(exercises(PARTIAL)) >= 2, f"{PARTIAL} no longer has two exercises to test partial solutions on"
    return PARTIAL


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory) -> tuple[dict[tuple[str, str], dict[str, str]], str, str]:
    folder = tmp_path_factory.mktemp("class")
    everything = {e.id for e in exercises(WELCOME)}

    def put(learner: str, lesson: str, nb: nbformat.NotebookNode | str) -> None:
        (folder / learner).mkdir(exist_ok=True)
        target = folder / learner / f"{lesson}.ipynb"
        target.write_text(nb if isinstance(nb, str) else nbformat.writes(nb))

    put("ada_solved", WELCOME, _notebook(WELCOME, everything))
    put("bob_unsolved", WELCOME, _notebook(WELCOME))

    moved = _notebook(WELCOME, everything)  # reordered: code cells shuffled after the imports, extra cells
    head, tail = moved.cells[:2], moved.cells[2:]
    random.Random(3).shuffle(tail)
    moved.cells = head + [nbformat.v4.new_code_cell("scratch = 1 + 1")] + tail
    put("cy_reordered", WELCOME, moved)

    deleted = _notebook(WELCOME, everything)
    deleted.cells = [c for c in deleted.cells if c.metadata.get("lab", {}).get("role") != "answer"]
    put("dee_deleted_answer", WELCOME, deleted)

    tampered = _notebook(WELCOME)  # unsolved, but the check cell now just prints a fake pass line
    for cell in tampered.cells:
        if cell.metadata.get("lab", {}).get("role") == "check":
            cell.source = 'print("✓ 00.first-endpoint passed")'
    put("eve_tampered", WELCOME, tampered)

    put("fay_corrupt", WELCOME, '{"cells": [ this is not json')

    multi = _multi_exercise_lesson()
    first = exercises(multi)[0].id
    put("gus_partial", multi, _notebook(multi, {first}))

    csv_path = folder / "grades.csv"
    assert main(["grade", "--class", str(folder), "--csv", str(csv_path)]) == 0
    with csv_path.open() as handle:
        rows = {(r["learner"], r["exercise"]): r for r in csv.DictReader(handle)}
    return rows, multi, first


def _status(rows, learner: str, exercise: str = "00.first-endpoint") -> str:
    return rows[(learner, exercise)]["status"]


def test_solved_and_unsolved(graded_class):
    rows, *_ = graded_class
    assert _status(rows, "ada_solved") == "passed" and rows[("ada_solved", "00.first-endpoint")]["passed"] == "True"
    assert _status(rows, "bob_unsolved") == "failed"
    assert "not answered yet" in rows[("bob_unsolved", "00.first-endpoint")]["message"]


def test_reordered_cells_are_still_graded(graded_class):
    rows, *_ = graded_class
    assert _status(rows, "cy_reordered") == "passed"


def test_deleted_answer_is_a_clear_missing_row(graded_class):
    rows, *_ = graded_class
    assert _status(rows, "dee_deleted_answer") == "missing"
    assert "answer cell is missing" in rows[("dee_deleted_answer", "00.first-endpoint")]["message"]


def test_a_tampered_check_cell_does_not_pass(graded_class):
    rows, *_ = graded_class
    assert _status(rows, "eve_tampered") == "failed"


def test_a_corrupt_notebook_gets_rows_not_a_crash(graded_class):
    rows, *_ = graded_class
    assert _status(rows, "fay_corrupt") == "missing"
    assert "could not be graded" in rows[("fay_corrupt", "00.first-endpoint")]["message"]


def test_partly_solved(graded_class):
    rows, lesson, first = graded_class
    statuses = {ex.id: _status(rows, "gus_partial", ex.id) for ex in exercises(lesson)}
    assert statuses[first] == "passed"
    assert all(status == "failed" for ex_id, status in statuses.items() if ex_id != first)


def test_missing_class_folder_is_reported(tmp_path: Path, capsys):
    assert main(["grade", "--class", str(tmp_path / "nobody")]) == 2
    assert "no such folder" in capsys.readouterr().err
