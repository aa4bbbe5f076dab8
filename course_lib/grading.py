"""Grade exercises by behaviour: a registry of checkers, run with a time limit, that explain every failure."""

from __future__ import annotations

import asyncio
import fcntl
import html
import importlib
import inspect
import json
import os
import pkgutil
import threading
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "Result",
    "Exercise",
    "Checking",
    "Fail",
    "exercise",
    "grade",
    "check",
    "hint",
    "exercises",
    "progress_file",
    "load_progress",
]

Figure = int | float | str
_REGISTRY: dict[str, Exercise] = {}
_ATTEMPTS: dict[str, int] = {}
_LOADED = False


class Fail(Exception):
    """Raised inside a checker: the answer does not behave as asked; the message says what was measured."""


class LearnerCodeError(Exception):
    """The learner's code raised while the checker ran it."""


@dataclass
class Result:
    """The outcome of grading one answer: passed or not, why, and the figures measured on the way."""

    exercise: str
    passed: bool
    message: str
    figures: dict[str, Figure] = field(default_factory=dict)
    hint: str = ""

    def figures_text(self) -> str:
        """The measured figures as `name=value` pairs."""
        return ", ".join(f"{k}={_fmt(v)}" for k, v in self.figures.items())

    def __repr__(self) -> str:
        if self.passed:
            extra = f" ({self.figures_text()})" if self.figures else ""
            return f"✓ {self.exercise} passed: {self.message}{extra}"
        text = f"✗ {self.exercise} not yet: {self.message}"
        return text + (f"\nHint: {self.hint}" if self.hint else "")

    def _repr_html_(self) -> str:
        colour = "#e6f4ea" if self.passed else "#fdecea"
        body = html.escape(repr(self)).replace("\n", "<br>")
        return f"<div style='background:{colour};padding:6px 10px;border-radius:4px'>{body}</div>"


def _fmt(value: Figure) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


@dataclass
class Exercise:
    """One graded exercise: a stable id, what it asks for, hints from a nudge to a strong hint, and its checker."""

    id: str
    title: str
    lesson: str
    expects: str
    hints: tuple[str, ...]
    checker: Callable[..., Any]
    timeout: float = 60.0


class Checking:
    """Handed to each checker: call the learner's code safely, record figures, and fail with a message."""

    def __init__(self, exercise: Exercise) -> None:
        self.exercise = exercise
        self.figures: dict[str, Figure] = {}

    def record(self, name: str, value: Figure) -> None:
        """Keep a measured figure; it is shown with the result."""
        self.figures[name] = value

    def fail(self, message: str) -> None:
        """Stop grading: the answer does not do what the exercise asks."""
        raise Fail(message)

    def expect(self, condition: bool, message: str) -> None:
        """Fail with `message` unless `condition` holds."""
        if not condition:
            raise Fail(message)

    def require_callable(self, answer: Any, what: str = "") -> Callable[..., Any]:
        """Fail clearly unless the answer can be called (a function, not its result)."""
        # an app is callable too (ASGI), but it is the factory's result: `make_app(db)` passed for `make_app`
        if not callable(answer) or (hasattr(answer, "router") and not isinstance(answer, type)):
            raise Fail(f"expected {what or self.exercise.expects}, got {_describe(answer)}. "
                       "Pass the function itself, without calling it (no parentheses).")
        return answer

    def build_app(self, factory: Any, *args: Any) -> Any:
        """Call a learner's app factory (e.g. `make_app(db)`) and fail clearly unless it returns an ASGI app."""
        self.require_callable(factory, "a function that builds and returns a FastAPI app")
        app = self.call(factory, *args)
        if app is None or not callable(app) or not hasattr(app, "router"):
            raise Fail(f"your factory returned {_describe(app)}, not a FastAPI app: end it with `return app`.")
        return app

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call learner code; an exception it raises becomes a clear failure, not a traceback."""
        try:
            return fn(*args, **kwargs)
        except NotImplementedError as error:
            raise LearnerCodeError(_NOT_DONE) from error
        except Exception as error:  # learner code may raise anything
            raise LearnerCodeError(_explain_exception(error)) from error


def _describe(value: Any) -> str:
    if value is None:
        return "None (did a function forget to `return`, or a cell above not run?)"
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'…' if len(text) > 80 else ''}"


_NOT_DONE = ("not answered yet: your code still raises NotImplementedError. Replace the `# YOUR CODE HERE` "
             "stub with your answer and run that cell again.")


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """True if `error`, or an exception it was raised from or during, is a `kind`."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _learner_frames(error: BaseException) -> list[traceback.FrameSummary]:
    """Traceback frames from code typed in a notebook or console (not from installed modules)."""
    frames = traceback.extract_tb(error.__traceback__)
    return [f for f in frames if "ipykernel" in f.filename or f.filename.startswith("<")]


def _explain_exception(error: BaseException) -> str:
    learner = _learner_frames(error)
    where = ""
    if learner and learner[-1].line:
        where = f" (in your cell, line {learner[-1].lineno}: `{learner[-1].line.strip()}`)"
    return f"your code raised {type(error).__name__}: {error}{where}"


def exercise(
    exercise_id: str, *, title: str, lesson: str, expects: str, hints: tuple[str, ...] | list[str], timeout: float = 60.0
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a checker `fn(answer, checking)` (sync or async) under a stable id such as "02.fix-n-plus-one"."""
    if not hints:
        raise ValueError(f"exercise {exercise_id} needs at least one hint")

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        known = _REGISTRY.get(exercise_id)
        same = known is not None and (known.checker.__module__, known.checker.__qualname__) == (
            fn.__module__, fn.__qualname__)  # the same module imported again (after a failed first import)
        if known is not None and not same:  # a second grader would silently replace another lesson's
            raise ValueError(f"exercise id {exercise_id!r} is already registered by lesson "
                             f"{_REGISTRY[exercise_id].lesson}")
        _REGISTRY[exercise_id] = Exercise(exercise_id, title, lesson, expects, tuple(hints), fn, timeout)
        return fn

    return register


def _load_lessons() -> None:
    global _LOADED
    if _LOADED:
        return
    from . import lessons

    for module in sorted(pkgutil.iter_modules(lessons.__path__), key=lambda m: m.name):
        importlib.import_module(f"{lessons.__name__}.{module.name}")
    _LOADED = True


def exercises(lesson: str | None = None) -> list[Exercise]:
    """Every registered exercise in teaching order (lesson, then order of registration), or one lesson's."""
    _load_lessons()
    order = {ex_id: i for i, ex_id in enumerate(_REGISTRY)}  # a lesson registers its exercises in teaching order
    found = sorted(_REGISTRY.values(), key=lambda e: (e.lesson, order[e.id]))
    return [e for e in found if lesson is None or e.lesson == lesson]


def _lookup(exercise_id: Any) -> Exercise | None:
    _load_lessons()
    return _REGISTRY.get(exercise_id) if isinstance(exercise_id, str) else None


def _run_with_time_limit(ex: Exercise, answer: Any, timeout: float) -> tuple[str, str, dict[str, Figure]]:
    """Run the checker in its own thread and event loop; returns (outcome, message, figures)."""
    checking = Checking(ex)
    outcome: list[tuple[str, str]] = []

    def target() -> None:
        try:
            value = ex.checker(answer, checking)
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))
            outcome.append(("pass", value if isinstance(value, str) else "works as asked"))
        except Fail as failure:
            outcome.append(("fail", str(failure)))
        except LearnerCodeError as error:
            outcome.append(("fail", str(error)))
        except Exception as error:  # learner code raised through the app, or broke the checker unforeseen
            if _caused_by(error, NotImplementedError):  # a stub, maybe wrapped (e.g. by a lifespan error)
                outcome.append(("fail", _NOT_DONE))
            elif _learner_frames(error):
                outcome.append(("fail", _explain_exception(error)))
            else:
                outcome.append(("fail", f"the checker could not use your answer: {type(error).__name__}: "
                                        f"{error}. It expects {ex.expects}."))
        except BaseException as error:  # sys.exit() or KeyboardInterrupt raised by the answer
            outcome.append(("fail", f"your code stopped the checker with {type(error).__name__}"))

    thread = threading.Thread(target=target, name=f"grade-{ex.id}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return ("fail", f"grading did not finish within {timeout:g} s: does your code loop forever, sleep, or wait "
                        "for something that never comes? (It keeps running in the background until the kernel "
                        "restarts.)", checking.figures)
    kind, message = outcome[0]
    return kind, message, checking.figures


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def grade(exercise_id: str, answer: Any, *, timeout: float | None = None, record: bool = True) -> Result:
    """Check `answer` against exercise `exercise_id` by running it; never raises for a wrong answer.

    `record=False` is for demonstrations (a lesson showing what a failure looks like): the result is neither
    saved as the learner's progress nor counted as an attempt towards the next hint."""
    ex = _lookup(exercise_id)
    if ex is None:
        known = ", ".join(e.id for e in exercises())
        return Result(str(exercise_id), False, f"there is no exercise {exercise_id!r}; known ones: {known}")
    if answer is None:
        result = Result(ex.id, False, f"the answer is None, but this exercise expects {ex.expects}. "
                                      "Did the cell that defines it run without errors?")
    else:
        kind, message, figures = _run_with_time_limit(ex, answer, timeout or ex.timeout)
        result = Result(ex.id, kind == "pass", message, figures)
    if not result.passed:
        attempt = _ATTEMPTS.get(ex.id, 0) + 1
        if record:
            _ATTEMPTS[ex.id] = attempt
        result.hint = ex.hints[min(attempt, len(ex.hints)) - 1]
    if record:
        _save(result)
    return result


class ExerciseNotPassed(AssertionError):
    """Raised by `check` in a notebook when an answer does not pass yet; its message carries the hint."""

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a traceback: the grader's own frames are no help to a learner."""
        return [f"\x1b[31m{line}\x1b[0m" if i == 0 else line for i, line in enumerate(str(self).splitlines())]


def check(exercise_id: str, answer: Any, *, timeout: float | None = None) -> None:
    """Grade in a notebook: show the pass line, or raise ExerciseNotPassed with what was measured and a hint."""
    __tracebackhide__ = True  # noqa: F841  (IPython and pytest hide this frame)
    result = grade(exercise_id, answer, timeout=timeout)
    if not result.passed:
        raise ExerciseNotPassed(repr(result))
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(result)  # a green box in a notebook
            return
    except ImportError:
        pass
    print(repr(result))


def hint(exercise_id: str, level: int | None = None) -> str:
    """The next hint for an exercise (or a given level, 1 = nudge), without grading anything."""
    ex = _lookup(exercise_id)
    if ex is None:
        return f"there is no exercise {exercise_id!r}"
    index = (level if level is not None else _ATTEMPTS.get(ex.id, 0) + 1) - 1
    return ex.hints[max(0, min(index, len(ex.hints) - 1))]


def progress_file() -> Path:
    """Where results are kept between sessions: $COURSE_LAB_HOME/progress.json (default ~/.fastapi-perf-lab)."""
    home = Path(os.environ.get("COURSE_LAB_HOME", Path.home() / ".fastapi-perf-lab"))
    return home / "progress.json"


def load_progress() -> dict[str, dict[str, Any]]:
    """Last result of each exercise graded on this machine, by id."""
    try:
        data = json.loads(progress_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save(result: Result) -> None:
    record = {**asdict(result), "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    results_log = os.environ.get("COURSE_LAB_RESULTS")
    if results_log:  # set by `python -m course_lib grade` while it executes a notebook
        with open(results_log, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
    try:
        path = progress_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two kernels saving at once must not lose each other's results
            progress = load_progress()
            progress[result.exercise] = record
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(progress, indent=1, sort_keys=True))
            tmp.replace(path)
    except OSError:
        pass  # progress is a convenience: never fail grading over it
