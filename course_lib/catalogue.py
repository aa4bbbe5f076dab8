"""The course's lessons, declared once: grading, bench, progress, tests, CI and the README all read this catalogue.

A lesson is one line in `CATALOGUE` below plus its files, all named after it (`Lesson.files()` lists them).
Light on purpose: importing it loads no web, database or notebook library.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Literal

from .layout import ROOT

Services = tuple[Literal["postgresql", "redis"], ...]


@dataclass(frozen=True)
class Lesson:
    """One lesson: its number and slug (which name all its files), title, exercises in teaching order, needs."""

    number: str
    slug: str
    title: str
    exercises: tuple[str, ...] = ()
    serial: Literal["", "notebooks", "all"] = ""
    services: Services = ()
    service_parts: Literal["lesson", "all"] = "all"

    @property
    def name(self) -> str:
        """The name every file of the lesson carries, e.g. "02_n_plus_one"."""
        return f"{self.number}_{self.slug}"

    @property
    def module_name(self) -> str:
        """The lesson's Python module: demo apps, helpers, graders and `bench()`."""
        return f"course_lib.lessons.l{self.name}"

    def module(self) -> ModuleType:
        """Import the lesson's module (which registers its exercises)."""
        return importlib.import_module(self.module_name)

    def notebook(self, folder: Literal["notebooks", "solutions", "exercises"], root: Path = ROOT) -> Path:
        """The lesson's notebook in `folder`."""
        return root / folder / f"{self.name}.ipynb"

    def source(self, folder: Literal["notebooks", "solutions"], root: Path = ROOT) -> Path:
        """The jupytext text source its notebook in `folder` is built from."""
        return root / "sources" / folder / f"{self.name}.py"

    def instructor_notes(self, root: Path = ROOT) -> Path:
        """The instructors' notes for the lesson."""
        return root / "instructors" / f"{self.name}.md"

    def tests(self, root: Path = ROOT) -> Path:
        """The pytest file of the lesson's helpers and graders."""
        return root / "tests" / f"test_l{self.name}.py"

    def module_path(self, root: Path = ROOT) -> Path:
        """The lesson module's file (or its package folder's `__init__.py`)."""
        base = root / "course_lib" / "lessons" / f"l{self.name}"
        return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")

    def files(self, root: Path = ROOT) -> list[Path]:
        """Every file the lesson must have."""
        return [self.notebook("notebooks", root), self.notebook("solutions", root), self.notebook("exercises", root),
                self.source("notebooks", root), self.source("solutions", root), self.instructor_notes(root),
                self.tests(root), self.module_path(root)]

    def test_selection(self, parts: Literal["lesson", "all"] = "all", root: Path = ROOT) -> list[Path]:
        """What pytest runs for the lesson: its lesson notebook, or its tests (`test_lNN_*.py`) and lesson and solutions
        notebooks."""
        if parts == "lesson":
            return [self.notebook("notebooks", root)]
        more = sorted(path for path in root.glob(f"tests/test_l{self.number}_*.py") if path != self.tests(root))
        return [self.tests(root), *more, self.notebook("notebooks", root), self.notebook("solutions", root)]


@dataclass(frozen=True)
class Catalogue:
    """The lessons in teaching order; refuses a duplicate number, name or exercise id, or an id of another lesson."""

    lessons: tuple[Lesson, ...]
    _by_exercise: dict[str, Lesson] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = catalogue_problems(self.lessons)
        if problems:
            raise ValueError("; ".join(problems))
        for lesson in self.lessons:
            for exercise_id in lesson.exercises:
                self._by_exercise[exercise_id] = lesson

    def __iter__(self) -> Iterator[Lesson]:
        return iter(self.lessons)

    def __len__(self) -> int:
        return len(self.lessons)

    def find(self, key: str) -> Lesson | None:
        """The lesson named by number ("02"), name ("02_n_plus_one"), module or notebook stem; None if none."""
        for lesson in self.lessons:
            if key in (lesson.number, lesson.name, lesson.module_name, f"l{lesson.name}"):
                return lesson
        return None

    def of_module(self, module_name: str) -> Lesson | None:
        """The lesson a module belongs to (the lesson's module itself or a module inside its package)."""
        for lesson in self.lessons:
            if module_name == lesson.module_name or module_name.startswith(lesson.module_name + "."):
                return lesson
        return None

    def of_exercise(self, exercise_id: str) -> Lesson | None:
        """The lesson that declares an exercise id."""
        return self._by_exercise.get(exercise_id)

    def exercise_order(self) -> dict[str, int]:
        """Every declared exercise id → its position in the course's teaching order."""
        return {ex: i for i, ex in enumerate(ex for lesson in self.lessons for ex in lesson.exercises)}

    def needing(self, service: str) -> list[Lesson]:
        """The lessons CI runs again against a real `service` ("postgresql" or "redis")."""
        return [lesson for lesson in self.lessons if service in lesson.services]


def catalogue_problems(lessons: tuple[Lesson, ...]) -> list[str]:
    """Sentences naming each duplicate or misnumbered lesson or exercise id (empty when the catalogue is sound)."""
    problems: list[str] = []
    seen_numbers: set[str] = set()
    seen_ids: dict[str, str] = {}
    previous = -1
    for lesson in lessons:
        if not (len(lesson.number) == 2 and lesson.number.isdigit()):
            problems.append(f"lesson {lesson.name}: its number must be two digits")
        elif int(lesson.number) <= previous:
            problems.append(f"lesson {lesson.name} comes after a lesson numbered {previous:02d}: keep teaching order")
        else:
            previous = int(lesson.number)
        if lesson.number in seen_numbers:
            problems.append(f"lesson number {lesson.number} is used twice")
        seen_numbers.add(lesson.number)
        if not lesson.slug.isidentifier() or lesson.slug != lesson.slug.lower():
            problems.append(f"lesson {lesson.name}: its slug must be a lower-case Python name")
        for exercise_id in lesson.exercises:
            if not exercise_id.startswith(f"{lesson.number}."):
                problems.append(f"exercise {exercise_id} is declared by lesson {lesson.name}: its id must start with "
                                f"{lesson.number}.")
            if exercise_id in seen_ids:
                problems.append(f"exercise id {exercise_id} is declared twice (lessons {seen_ids[exercise_id]} and "
                                f"{lesson.name})")
            seen_ids[exercise_id] = lesson.name
    return problems


# One line per lesson, in teaching order. Exercises are listed in the order a learner meets them. `serial`: the
# lesson's notebooks (or "all" its tests) need the cores to themselves, so `./course test` runs them after the
# parallel phase. `services`: CI runs the lesson again against a real server (`service_parts`: "lesson" for its
# lesson notebook only).
CATALOGUE = Catalogue((
    Lesson("00", "welcome", "how the lab measures: query counter, timers, plots, graded exercises",
           ("00.first-endpoint",)),
    Lesson("01", "workers", "workers, async vs blocking, the thread pool, timeouts, connection pooling",
           ("01.unblock", "01.timeout-client", "01.workers"), serial="notebooks",
           services=("postgresql",), service_parts="lesson"),
    Lesson("02", "n_plus_one", "N+1 queries: lazy loading vs `selectinload` / `joinedload`",
           ("02.fix-n-plus-one", "02.nested", "02.raise-on-lazy"), services=("postgresql",)),
    Lesson("03", "caching", "response caching with Redis: keys, TTL, invalidation, stampedes",
           ("03.cache-endpoint", "03.invalidate", "03.stampede"), services=("redis",)),
    Lesson("04", "pagination", "bounded lists, offset vs keyset pagination, GZip",
           ("04.keyset", "04.gzip"), services=("postgresql",)),
    Lesson("05", "indexes", "indexes: query plans, composite indexes, what they cost on writes",
           ("05.declare-indexes",), services=("postgresql",)),
    Lesson("06", "structure", "the shape of a production app, and `/health` done right",
           ("06.refactor",)),
    Lesson("07", "settings", "configuration with pydantic-settings",
           ("07.settings-class",)),
    Lesson("08", "logging", "structured JSON request logs, pure ASGI middleware",
           ("08.access-log",)),
    Lesson("09", "async_db", "async database access: AsyncSession, MissingGreenlet, pools against max_connections",
           ("09.async-endpoint", "09.pool-budget"), services=("postgresql",)),
    Lesson("10", "diagnose", "find the bottleneck before you fix it: pyinstrument, asyncio debug mode, py-spy",
           ("10.diagnose", "10.fix"), services=("postgresql",)),
    Lesson("11", "capstone", "audit a slow app against the checklist, fix it, prove it under load",
           ("11.capstone",), serial="all", services=("postgresql",)),
))


def readme_table(catalogue: Catalogue = CATALOGUE) -> str:
    """The README's lesson table, rendered from the catalogue."""
    lines = ["| # | notebook | practice |", "| --- | --- | --- |"]
    lines += [f"| {lesson.number} | `{lesson.name}` | {lesson.title} |" for lesson in catalogue]
    return "\n".join(lines)
