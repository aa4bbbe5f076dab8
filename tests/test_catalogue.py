"""The lesson catalogue and `python -m course_lib dev`: one place lists a lesson, and `dev check` holds the shape."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib import catalogue, dev
from course_lib.catalogue import CATALOGUE, Catalogue, Lesson, catalogue_problems
from course_lib.grading import exercise, exercises

ROOT = Path(__file__).resolve().parent.parent


# ---------- the catalogue refuses what would silently break grading ----------

def test_the_catalogue_lists_every_registered_exercise_in_teaching_order():
    declared = [ex for lesson in CATALOGUE for ex in lesson.exercises]
    assert [e.id for e in exercises()] == declared
    assert [e.lesson for e in exercises()] == [CATALOGUE.of_exercise(ex).name for ex in declared]


@pytest.mark.parametrize(("lessons", "problem"), [
    ((Lesson("00", "a", "t", ("00.x",)), Lesson("01", "b", "t", ("00.x",))), "declared twice"),
    ((Lesson("00", "a", "t"), Lesson("00", "b", "t")), "used twice"),
    ((Lesson("02", "a", "t"), Lesson("01", "b", "t")), "keep teaching order"),
    ((Lesson("01", "a", "t", ("02.x",)),), "must start with 01."),
    ((Lesson("1", "a", "t"),), "two digits"),
    ((Lesson("01", "Bad-Slug", "t"),), "lower-case Python name"),
])
def test_a_malformed_catalogue_is_refused_with_a_sentence(lessons, problem):
    assert any(problem in p for p in catalogue_problems(lessons)), catalogue_problems(lessons)
    with pytest.raises(ValueError, match=problem.split()[0]):
        Catalogue(lessons)


def test_a_grader_for_an_id_its_lesson_does_not_declare_is_refused():
    def checker(answer, checking):
        return "ok"

    checker.__module__ = "course_lib.lessons.l02_n_plus_one"
    with pytest.raises(ValueError, match="does not declare it"):
        exercise("02.undeclared", title="x", expects="x", hints=("a", "b"))(checker)


def test_lookups_by_number_name_module_and_exercise():
    lesson = CATALOGUE.find("02")
    assert lesson is CATALOGUE.find("02_n_plus_one") is CATALOGUE.of_module("course_lib.lessons.l02_n_plus_one")
    assert CATALOGUE.of_module("course_lib.lessons.l01_workers.l01_served") is CATALOGUE.find("01")
    assert CATALOGUE.of_exercise("02.nested") is lesson and CATALOGUE.find("99") is None


def test_the_readme_table_and_ci_selections_come_from_the_catalogue():
    assert dev.readme_table_in((ROOT / "README.md").read_text()) == catalogue.readme_table()
    redis = [p.relative_to(ROOT).as_posix() for p in dev.files("redis")]
    assert redis == ["tests/test_l03_caching.py", "notebooks/03_caching.ipynb", "solutions/03_caching.ipynb"]
    postgres = [p.relative_to(ROOT).as_posix() for p in dev.files("postgresql")]
    assert "notebooks/01_workers.ipynb" in postgres and "solutions/01_workers.ipynb" not in postgres
    assert "tests/test_l11_capstone.py" in postgres and "tests/test_l03_caching.py" not in postgres
    assert "dev files --service redis" in (ROOT / ".ci" / "run").read_text()


def test_serial_lessons_are_marked_from_their_catalogue_line():
    keys = dev.serial_keys()
    assert "notebooks/01_workers.ipynb" in keys and "tests/test_l01_workers.py" not in keys
    assert "tests/test_l11_capstone.py" in keys and not any("02_n_plus_one" in k for k in keys)


# ---------- dev check: passes on the course, fails on each planted defect ----------

def test_dev_check_passes_on_the_course():
    assert dev.check() == []


def _copy_course(tmp_path: Path) -> Path:
    """A copy of the course's files (no venv, no git) in which defects can be planted."""
    copy = tmp_path / "course"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for folder in ("course_lib", "notebooks", "solutions", "exercises", "sources", "instructors"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=ignore)
    (copy / "tests").mkdir()
    for test in ROOT.glob("tests/test_l[0-9]*.py"):
        shutil.copy(test, copy / "tests" / test.name)
    shutil.copy(ROOT / "README.md", copy / "README.md")
    return copy


def _dev(copy: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `python -m course_lib dev ...` on the copy (its own course_lib first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(copy)}
    return subprocess.run([sys.executable, "-m", "course_lib", "dev", *args], cwd=copy, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_dev_check_fails_on_a_planted_duplicate_exercise_id(tmp_path):
    copy = _copy_course(tmp_path)
    path = copy / "course_lib" / "catalogue.py"
    text = path.read_text()
    path.write_text(text.replace('("05.declare-indexes",)', '("05.declare-indexes", "02.nested")', 1))
    done = _dev(copy, "check")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "02.nested" in done.stderr and "declared twice" in done.stderr


def test_dev_check_fails_on_an_exercise_with_one_hint(tmp_path):
    copy = _copy_course(tmp_path)
    module = copy / "course_lib" / "lessons" / "l07_settings.py"
    module.write_text(module.read_text() + (
        "\nfrom dataclasses import replace as _replace\nfrom ..grading import _REGISTRY as _R\n"
        "_R['07.settings-class'] = _replace(_R['07.settings-class'], hints=('only a nudge',))\n"))
    done = _dev(copy, "check")
    assert done.returncode == 1 and "exercise 07.settings-class has 1 hint(s)" in done.stdout, done.stdout


def test_dev_check_fails_on_a_drifted_notebook_and_a_missing_file(tmp_path):
    copy = _copy_course(tmp_path)
    notebook = copy / "notebooks" / "04_pagination.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.insert(3, nbformat.v4.new_markdown_cell("An edit made in the notebook, not in its source."))
    nbformat.write(nb, notebook)
    (copy / "instructors" / "06_structure.md").unlink()
    done = _dev(copy, "check")
    assert done.returncode == 1, done.stdout
    assert "drift: notebooks/04_pagination.ipynb" in done.stdout, done.stdout
    assert "lesson 06_structure: instructors/06_structure.md is missing" in done.stdout


def test_dev_new_scaffolds_a_lesson_that_checks_and_grades(tmp_path):
    copy = _copy_course(tmp_path)
    number = f"{int(CATALOGUE.lessons[-1].number) + 1:02d}"  # the next free number, after the course's last lesson
    made = _dev(copy, "new", number, "scaffolded", "a scaffolded lesson")
    assert made.returncode == 0, made.stdout + made.stderr
    built = _dev(copy, "build", number)
    assert built.returncode == 0, built.stdout + built.stderr
    for folder in ("notebooks", "solutions", "exercises"):
        assert (copy / folder / f"{number}_scaffolded.ipynb").exists(), built.stdout
    checked = _dev(copy, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    exercises = sum(len(lesson.exercises) for lesson in CATALOGUE) + 1
    assert f"{len(CATALOGUE) + 1} lessons, {exercises} exercises" in checked.stdout
    env = {**os.environ, "PYTHONPATH": str(copy), "COURSE_LAB_HOME": str(tmp_path / "home")}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                            f"tests/test_l{number}_scaffolded.py"], cwd=copy, env=env, capture_output=True, text=True,
                           timeout=300)
    assert tests.returncode == 0, tests.stdout[-2000:]
    again = _dev(copy, "new", number, "other", "another")
    assert again.returncode == 2 and "used twice" in again.stderr


def test_dev_check_run_grades_solutions_and_shipped_exercises(tmp_path):
    from course_lib.notebooks import build_exercise

    lesson = CATALOGUE.find("00")
    assert dev._run_problems(CATALOGUE, ROOT, ["00"]) == []  # the solution passes, the shipped exercise fails
    copy = _copy_course(tmp_path)
    solution = nbformat.read(lesson.notebook("solutions", copy), as_version=4)
    nbformat.write(build_exercise(solution, keep_answers=True), lesson.notebook("exercises", copy))
    problems = dev._run_problems(CATALOGUE, copy, ["00"])
    assert problems == ["exercise 00.first-endpoint passes as shipped: its starter code already answers it"]


def test_dev_renumber_moves_a_lesson_and_the_course_still_checks(tmp_path):
    copy = _copy_course(tmp_path)
    capstone = next(lesson for lesson in CATALOGUE if lesson.slug == "capstone")
    last = max(int(lesson.number) for lesson in CATALOGUE)
    new = f"{last + 1:02d}"
    moved = _dev(copy, "renumber", capstone.number, new)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert (copy / "notebooks" / f"{new}_capstone.ipynb").exists()
    assert not (copy / "notebooks" / f"{capstone.name}.ipynb").exists()
    assert (copy / "tests" / f"test_l{new}_capstone.py").exists()
    assert f'"{new}.capstone"' in (copy / "course_lib" / "lessons" / f"l{new}_capstone.py").read_text()
    built = _dev(copy, "build", new)
    assert built.returncode == 0, built.stdout + built.stderr
    checked = _dev(copy, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    refused = _dev(copy, "renumber", new, "05")
    assert refused.returncode == 2 and "used twice" in refused.stderr
