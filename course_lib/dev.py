"""`python -m course_lib dev {check,build,new,renumber,files}`: the maintainer's tools, driven by the lesson catalogue.

`dev check` holds the course's shape (as rustlings' `dev check` does): lessons and exercise ids unique and in
teaching order, every exercise graded and hinted, every lesson with all its files, notebooks built from their text
sources, exercises built from solutions, the README's table from the catalogue; with `--run`, every solution passes
its own grader and every shipped exercise fails it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

from . import catalogue
from .catalogue import Catalogue, Lesson, catalogue_problems
from .layout import ROOT

README_BEGIN = "<!-- lessons: generated from course_lib/catalogue.py by `python -m course_lib dev build` -->"
README_END = "<!-- /lessons -->"
MIN_HINTS = 2  # a nudge (what to look at) and a tool (which API); a third level shows a shape with gaps


def _exercise_problems(lessons: Catalogue) -> list[str]:
    """Every declared exercise registered by its lesson's module, with progressive hints."""
    from . import grading

    problems: list[str] = []
    for lesson in lessons:
        try:
            lesson.module()
        except Exception as error:  # noqa: BLE001 - a broken module is a finding, not a crash
            problems.append(f"lesson {lesson.name}: its module {lesson.module_name} does not import: "
                            f"{type(error).__name__}: {error}")
            continue
        for exercise_id in lesson.exercises:
            registered = grading._REGISTRY.get(exercise_id)
            if registered is None:
                problems.append(f"exercise {exercise_id} is declared by lesson {lesson.name} but no grader registers it "
                                f"(`@exercise({exercise_id!r}, ...)` in {lesson.module_name})")
                continue
            if registered.lesson != lesson.name:
                problems.append(f"exercise {exercise_id} is declared by lesson {lesson.name} but graded by lesson "
                                f"{registered.lesson}")
            hints = [h for h in registered.hints if h.strip()]
            if len(hints) < MIN_HINTS:
                problems.append(f"exercise {exercise_id} has {len(hints)} hint(s): give at least {MIN_HINTS} levels "
                                "(what to look at, which tool; then a shape with gaps, never the answer)")
    return problems


def _file_problems(lessons: Catalogue, root: Path) -> list[str]:
    """Every lesson's files present, and no lesson file that the catalogue does not list."""
    problems = [f"lesson {lesson.name}: {path.relative_to(root)} is missing"
                for lesson in lessons for path in lesson.files(root) if not path.exists()]
    numbers = {lesson.number: lesson.name for lesson in lessons}
    patterns = {"notebooks/*.ipynb": "", "solutions/*.ipynb": "", "exercises/*.ipynb": "", "instructors/*.md": "",
                "sources/notebooks/*.py": "", "sources/solutions/*.py": "", "course_lib/lessons/l[0-9]*": "l",
                "tests/test_l[0-9]*.py": "test_l"}
    for pattern, prefix in patterns.items():
        for path in sorted(root.glob(pattern)):
            stem = path.stem if path.suffix else path.name
            number = stem[len(prefix):len(prefix) + 2]
            exact = pattern.startswith("tests/") is False  # a lesson may have several test files: test_lNN_*.py
            name = numbers.get(number)
            if name is None or (exact and stem[len(prefix):] != name):
                problems.append(f"{path.relative_to(root)} belongs to no lesson of the catalogue "
                                "(course_lib/catalogue.py)")
    return problems


def _built_problems(lessons: Catalogue, root: Path) -> list[str]:
    """Notebooks equal to the build of their sources, exercises to the build of solutions, README to the catalogue."""
    problems: list[str] = []
    try:
        from . import sources
    except ImportError:
        sources = None  # type: ignore[assignment]
    if sources is not None and (root / "sources").is_dir():
        problems += [f"drift: {sentence}" for sentence in sources.drifted(root)]
    from .notebooks import build_exercises

    stale = build_exercises(root, check=True, names=[lesson.name for lesson in lessons])
    problems += [f"{path.relative_to(root)} is not the build of its solutions notebook: run "
                 "`python -m course_lib dev build`" for path in stale]
    readme = root / "README.md"
    if readme.exists() and readme_table_in(readme.read_text()) != catalogue.readme_table(lessons):
        problems.append("README.md's lesson table differs from the catalogue: run `python -m course_lib dev build`")
    return problems


def _run_problems(lessons: Catalogue, root: Path, only: Sequence[str]) -> list[str]:
    """Grade each lesson's solutions (every exercise must pass) and its shipped exercises (none may pass)."""
    import tempfile

    import nbformat

    from .notebooks import build_exercise, grade_notebook

    problems: list[str] = []
    for lesson in lessons:
        if only and lesson.number not in only and lesson.name not in only:
            continue
        with tempfile.TemporaryDirectory(prefix="dev-check-") as tmp:
            answered = Path(tmp) / f"{lesson.name}.ipynb"
            solution = nbformat.read(lesson.notebook("solutions", root), as_version=4)
            nbformat.write(build_exercise(solution, keep_answers=True), answered)
            for row in grade_notebook(answered, root=root):
                if row.status != "passed":
                    problems.append(f"solution {lesson.name}: {row.exercise} {row.status}: {row.message[:200]}")
        for row in grade_notebook(lesson.notebook("exercises", root), root=root):
            if row.status == "passed":
                problems.append(f"exercise {row.exercise} passes as shipped: its starter code already answers it")
    return problems


def check(root: Path = ROOT, *, run: bool = False, only: Sequence[str] = (),
          lessons: Catalogue | None = None) -> list[str]:
    """Every problem with the course's shape, one sentence each (empty when all is well)."""
    lessons = lessons or catalogue.CATALOGUE
    problems = catalogue_problems(lessons.lessons)
    problems += _exercise_problems(lessons)
    problems += _file_problems(lessons, root)
    problems += _built_problems(lessons, root)
    if run:
        problems += _run_problems(lessons, root, only)
    return problems


def readme_table_in(text: str) -> str:
    """The lesson table between the README's generated-table markers ("" when the markers are missing)."""
    if README_BEGIN not in text or README_END not in text:
        return ""
    return text.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()


def write_readme_table(readme: Path, lessons: Catalogue | None = None) -> bool:
    """Rewrite the README's lesson table from the catalogue; True if it changed."""
    text = readme.read_text()
    if README_BEGIN not in text:
        raise ValueError(f"{readme} has no {README_BEGIN!r} marker")
    head, tail = text.split(README_BEGIN, 1)
    _, after = tail.split(README_END, 1)
    new = f"{head}{README_BEGIN}\n{catalogue.readme_table(lessons or catalogue.CATALOGUE)}\n{README_END}{after}"
    if new != text:
        readme.write_text(new)
    return new != text


def build(root: Path = ROOT, only: Sequence[str] = ()) -> list[Path]:
    """Build notebooks and solutions from their text sources, exercises from solutions, the README table."""
    from .notebooks import build_exercises

    written: list[Path] = []
    if (root / "sources").is_dir():
        from . import sources

        for name in only or [None]:  # type: ignore[list-item]
            written += sources.build_all(name, root)
    written += build_exercises(root, names=list(only))
    if write_readme_table(root / "README.md"):
        written.append(root / "README.md")
    return written


def files(service: str, lessons: Catalogue | None = None, root: Path = ROOT) -> list[Path]:
    """What CI runs again against a real `service`: each lesson's part that needs it."""
    lessons = lessons or catalogue.CATALOGUE
    return [path for lesson in lessons.needing(service) for path in lesson.test_selection(lesson.service_parts, root)]


def serial_keys(lessons: Catalogue | None = None) -> tuple[str, ...]:
    """Path fragments of the lessons' tests that need the cores to themselves (conftest marks them serial)."""
    keys: list[str] = []
    for lesson in lessons or catalogue.CATALOGUE:
        if lesson.serial:
            keys += [f"{folder}/{lesson.name}.ipynb" for folder in ("notebooks", "solutions")]
        if lesson.serial == "all":
            keys.append(f"tests/test_l{lesson.name}.py")
    return tuple(keys)


# ---------------------------------------------------------------- dev new: a lesson's scaffold

_MODULE = '''"""Lesson {number}: {title}. Demo apps, helpers, graders and benchmark rows."""

from __future__ import annotations

from fastapi import FastAPI

from ..bench_rows import BenchRow
from ..client import app_client
from ..grading import Checking, exercise
from ..timing import measure


def make_demo_app() -> FastAPI:
    """The lesson's demo app: replace it with the app the lesson measures."""
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {{"pong": "yes"}}

    return app


@exercise(
    "{number}.first",
    title="Write the app the lesson asks for",
    expects="a function make_app() -> FastAPI whose GET /ping answers 200",
    hints=("Look at what GET /ping returns now: which status?",
           "A route is declared with `@app.get(path)` on the app your function returns.",
           "Shape: `def make_app():` / `app = FastAPI()` / a route for /ping / `return app`."),
)
async def check_first(answer, checking: Checking) -> str:
    """GET /ping on the learner's app answers 200 (replace with the property the exercise names)."""
    app = checking.build_app(answer)
    async with app_client(app) as client:
        response = await client.get("/ping")
    checking.expect(response.status_code == 200, f"GET /ping answered {{response.status_code}}, expected 200")
    return "GET /ping answers 200"


def bench() -> list[BenchRow]:
    """The lesson's headline effect, measured now."""
    async def one() -> float:
        async with app_client(make_demo_app()) as client:
            timing = await measure(lambda: client.get("/ping"), n=50, warmup=5)
        return timing.median_ms

    import asyncio

    return [BenchRow("GET /ping, median", asyncio.run(one()), "ms", level="endpoint")]
'''

_TESTS = '''"""Lesson {number}'s graders: the reference passes, a right answer written another way passes, wrong ones fail."""

from fastapi import FastAPI

from course_lib import grade


def reference():
    app = FastAPI()

    @app.get("/ping")
    async def ping():
        return {{"pong": "yes"}}

    return app


def test_the_reference_passes():
    assert grade("{number}.first", reference, record=False).passed


def test_an_app_without_the_route_fails():
    result = grade("{number}.first", FastAPI, record=False)
    assert not result.passed and "404" in result.message


def test_none_fails_with_a_message():
    assert not grade("{number}.first", None, record=False).passed
'''

_LESSON_SOURCE = '''# %% [markdown]
# # {number} · {title}
#
# **Teaching:** 20 min · **Exercises:** 10 min
#
# **Questions**
# - What does this practice change, measured?
#
# **Objectives**
# - Measure the effect on your machine.

# %%
from course_lib import *
from course_lib.lessons.l{name} import make_demo_app

# %%
async with app_client(make_demo_app()) as client:
    timing = await measure(lambda: client.get("/ping"), n=50, warmup=5)
say(f"GET /ping takes **{{timing.median_ms:.2f}} ms** (median of 50).")

# %% [markdown]
# ## Key points
# - Every number above was measured in the cell above it.
'''

_SOLUTION_SOURCE = '''# %% [markdown]
# # {number} · {title}: exercises
#
# Write your answer where it says `# YOUR CODE HERE`, then run the check cell below it.

# %%
from course_lib import *

# %% [markdown]
# ## Exercise {number}.first
# Write `make_app()` returning a FastAPI app whose `GET /ping` answers 200.

# %%
from fastapi import FastAPI


def make_app():
    ### BEGIN SOLUTION
    app = FastAPI()

    @app.get("/ping")
    async def ping():
        return {{"pong": "yes"}}

    return app
    ### END SOLUTION

# %%
check("{number}.first", make_app)
'''

_NOTES = '''# {number} · {title}: instructor notes

- **Timing:** 20 min teaching, 10 min exercises.
- **What learners measure:** (the lesson's headline figure, and where it is measured).
- **Common wrong answers:** (what the grader rejects, and the hint that teaches).
'''


def new_lesson(number: str, slug: str, title: str, root: Path = ROOT) -> list[Path]:
    """Scaffold lesson `number`_`slug`: its catalogue line, module, sources, notebooks, notes and tests."""
    lesson = Lesson(number, slug, title, (f"{number}.first",))
    known = catalogue.CATALOGUE
    problems = catalogue_problems((*known.lessons, lesson))
    if problems:
        raise ValueError("; ".join(problems))
    fields = {"number": number, "slug": slug, "title": title, "name": lesson.name}
    made = {lesson.module_path(root): _MODULE, lesson.tests(root): _TESTS, lesson.instructor_notes(root): _NOTES,
            lesson.source("notebooks", root): _LESSON_SOURCE, lesson.source("solutions", root): _SOLUTION_SOURCE}
    for path in made:
        if path.exists():
            raise FileExistsError(f"{path} exists already")
    for path, template in made.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**fields))
    catalogue_file = root / "course_lib" / "catalogue.py"
    text = catalogue_file.read_text()
    line = f"    Lesson({number!r}, {slug!r}, {title!r},\n           ({number + '.first'!r},)),\n"
    text = text.replace("\n))\n", f"\n{line}))\n", 1) if text.count("\n))\n") == 1 else None  # type: ignore[assignment]
    if text is None:
        raise ValueError(f"cannot find the end of CATALOGUE in {catalogue_file}: add the line yourself:\n{line}")
    catalogue_file.write_text(text)
    return [catalogue_file, *made]


# ---------------------------------------------------------------- dev renumber: move a lesson in teaching order

_TEXT_SUFFIXES = {".py", ".md", ".json", ".yaml", ".yml", ".toml", ".txt", ".cfg", ""}
_SEARCHED = ("course_lib", "sources", "tests", "tools", "instructors", "docker", ".ci")


def renumber(old: str, new: str, root: Path = ROOT) -> list[str]:
    """Give lesson `old` the number `new`: its files, names, exercise ids and every reference to them; returns the
    lines mentioning the old number that a person should still read (prose such as "Lesson 09")."""
    lesson = catalogue.CATALOGUE.find(old)
    if lesson is None:
        raise ValueError(f"no lesson {old!r} in the catalogue")
    moved = Lesson(new, lesson.slug, lesson.title, tuple(new + ex[len(old):] for ex in lesson.exercises),
                   lesson.serial, lesson.services, lesson.service_parts)
    others = tuple(known for known in catalogue.CATALOGUE if known is not lesson)
    order = sorted((*others, moved), key=lambda known: known.number)
    problems = catalogue_problems(tuple(order))
    if problems:
        raise ValueError("; ".join(problems))
    renames = {lesson.name: moved.name, **dict(zip(lesson.exercises, moved.exercises, strict=True))}
    pattern = re.compile("|".join(re.escape(key) for key in sorted(renames, key=len, reverse=True)))
    optional = [(root / "sources" / "answers" / f"l{lesson.name}.py", root / "sources" / "answers" / f"l{moved.name}.py")]
    for old_path, new_path in [*zip(lesson.files(root), moved.files(root), strict=True), *optional]:
        if old_path.exists() and not new_path.exists():
            target = new_path.parent if old_path.name == "__init__.py" else new_path
            (old_path.parent if old_path.name == "__init__.py" else old_path).rename(target)
    to_read: list[str] = []
    files = [root / name for name in ("README.md", "INSTRUCTORS.md", "CONTRIBUTING.md", "conftest.py")]
    files += [path for folder in _SEARCHED for path in (root / folder).rglob("*")
              if path.is_file() and path.suffix in _TEXT_SUFFIXES and "__pycache__" not in path.parts]
    for path in files:
        if not path.exists():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if path.name == "catalogue.py":
            text = text.replace(f'Lesson("{old}", "{lesson.slug}"', f'Lesson("{new}", "{lesson.slug}"')
        changed = pattern.sub(lambda m: renames[m.group(0)], text)
        if path.name == "catalogue.py":  # keep the lines in teaching order: the catalogue refuses any other
            changed = _reorder_catalogue(changed)
        if moved.name in path.name:  # the lesson's own files: its title and "Lesson NN" follow the new number
            changed = re.sub(rf"(?<![\d.]){old} · ", f"{new} · ", changed)
            changed = re.sub(rf"· {old}\b", f"· {new}", changed)
            changed = re.sub(rf"\b([Ll]esson |[Ee]xercise |notebooks/|solutions/|exercises/){old}\b", rf"\g<1>{new}",
                             changed)
        if changed != text:
            path.write_text(changed)
        if moved.name in path.name or path.name == f"l{moved.name}.py":
            to_read += [f"{path.relative_to(root)}:{i}: {line.strip()}" for i, line in
                        enumerate(changed.splitlines(), 1)
                        if re.search(rf"(?i)(lesson|exercise|capstone|·|/)\W{{0,3}}{old}(?!\d)", line)]
    return to_read


def _reorder_catalogue(text: str) -> str:
    """The CATALOGUE block's `Lesson(...)` entries sorted by number (each entry may span lines)."""
    start = text.index("CATALOGUE = Catalogue((\n") + len("CATALOGUE = Catalogue((\n")
    end = text.index("\n))\n", start) + 1
    entries = re.split(r"(?m)^(?=    Lesson\()", text[start:end])
    entries = [entry for entry in entries if entry.strip()]
    entries.sort(key=lambda entry: re.search(r'Lesson\("(\d\d)"', entry).group(1))  # type: ignore[union-attr]
    return text[:start] + "".join(entries) + text[end:]


# ---------------------------------------------------------------- the command line

def main(argv: Sequence[str]) -> int:
    """Run one `dev` command (see the module's docstring)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m course_lib dev", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="check the course's shape (add --run to grade solutions and exercises)")
    p.add_argument("--run", action="store_true", help="also grade every solution (must pass) and exercise (must fail)")
    p.add_argument("only", nargs="*", help="with --run: only these lessons, e.g. 00 02")
    p = sub.add_parser("build", help="build notebooks from sources, exercises from solutions, the README table")
    p.add_argument("only", nargs="*", help="only these lessons, e.g. 02 or 02_n_plus_one")
    p = sub.add_parser("new", help="scaffold a lesson: its catalogue line and every file it needs")
    p.add_argument("number", help="two digits, after the last lesson's")
    p.add_argument("slug", help="a lower-case Python name, e.g. async_db")
    p.add_argument("title", help="what the lesson teaches, one line (the README's table shows it)")
    p = sub.add_parser("renumber", help="move a lesson in teaching order: its files, names, ids and references")
    p.add_argument("old", help="the lesson's number now, e.g. 09")
    p.add_argument("new", help="its new number, e.g. 11 (free, and in teaching order among the others)")
    p = sub.add_parser("files", help="the test selection CI runs again against a real server")
    p.add_argument("--service", required=True, choices=("postgresql", "redis"))
    args = parser.parse_args(argv)
    if args.command == "check":
        problems = check(run=args.run, only=args.only)
        for problem in problems:
            print(f"✗ {problem}")
        print(f"{len(problems)} problem(s)" if problems else
              f"✓ {len(catalogue.CATALOGUE)} lessons, "
              f"{sum(len(lesson.exercises) for lesson in catalogue.CATALOGUE)} exercises: the course's shape holds")
        return 1 if problems else 0
    if args.command == "build":
        for path in build(only=args.only):
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    if args.command == "new":
        try:
            made = new_lesson(args.number, args.slug, args.title)
        except (ValueError, FileExistsError) as error:
            print(error, file=sys.stderr)
            return 2
        for path in made:
            print(f"wrote {path.relative_to(ROOT)}")
        print(f"next: `python -m course_lib dev build {args.number}`, then `python -m course_lib dev check`")
        return 0
    if args.command == "renumber":
        try:
            to_read = renumber(args.old, args.new)
        except ValueError as error:
            print(error, file=sys.stderr)
            return 2
        for line in to_read:
            print(f"read: {line}")
        print(f"renumbered; next: `python -m course_lib dev build {args.new}`, then `python -m course_lib dev check`")
        return 0
    for path in files(args.service):
        print(path.relative_to(ROOT))
    return 0
