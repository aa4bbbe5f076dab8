"""Grade exercises by behaviour: a registry of checkers, run with a time limit, that explain every failure."""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import html
import inspect
import json
import os
import re
import sys
import sysconfig
import threading
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import httpx

from . import catalogue
from .queries import StatementLog, count_queries

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

    def fail(self, message: str) -> NoReturn:
        """Stop grading: the answer does not do what the exercise asks."""
        raise Fail(message)

    async def request(self, client: Any, method: str, url: str, *, status: int | None = 200,
                      **kwargs: Any) -> Any:
        """Send one request to the answer's app (an httpx client); fail clearly, never with a traceback, when the
        app raises or answers another status than `status` (None: any), saying what came back."""
        label = request_label(method, url, kwargs.get("params"))
        try:
            response = await client.request(method, url, **kwargs)
        except (Fail, LearnerCodeError):
            raise
        except Exception as error:  # the app raised (httpx's ASGITransport re-raises it): the learner's error
            why = _NOT_DONE if _caused_by(error, NotImplementedError) else _explain_exception(error)
            raise LearnerCodeError(f"{label}: {why}") from error
        if status is not None and response.status_code != status:
            raise Fail(f"{label} answered {response.status_code}, expected {status}. Body: {response.text[:200]}")
        return response

    def json_body(self, response: Any, label: str = "") -> Any:
        """The parsed JSON body of `response`; fail clearly (what came back) when it is not JSON."""
        try:
            return response.json()
        except ValueError:
            label = label or request_label(response.request.method, str(response.request.url.raw_path, "ascii"))
            raise Fail(f"{label} answered {response.status_code} but not JSON: {response.text[:200]!r}") from None

    async def get_json(self, client: Any, url: str, *, status: int | None = 200, **kwargs: Any) -> Any:
        """GET `url`, expecting `status` and a JSON body; return the parsed body."""
        response = await self.request(client, "GET", url, status=status, **kwargs)
        return self.json_body(response, request_label("GET", url, kwargs.get("params")))

    async def counted(self, client: Any, queries: Any, method: str, url: str, *, status: int | None = 200,
                      **kwargs: Any) -> tuple[Any, list[str]]:
        """Send one request as `request` does; return (response, the SQL statements it caused). `queries` is an
        engine (its statements, `count_queries`) or a `StatementLog` (every statement at the driver, whoever
        opened the connection: `observe_statements`)."""
        if isinstance(queries, StatementLog):
            mark = queries.mark()
            response = await self.request(client, method, url, status=status, **kwargs)
            return response, queries.since(mark)
        with count_queries(queries) as log:
            response = await self.request(client, method, url, status=status, **kwargs)
        return response, log.statements

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


def request_label(method: str, url: str, params: Any = None) -> str:
    """How a failure names a request: `GET /items?limit=5`."""
    query = str(httpx.QueryParams(params)) if params else ""
    return f"{method.upper()} {url}" + (f"?{query}" if query else "")


def _describe(value: Any) -> str:
    if value is None:
        return "None (did a function forget to `return`, or a cell above not run?)"
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'…' if len(text) > 80 else ''}"


_NOT_DONE = ("not answered yet: your code still raises NotImplementedError. Replace the `# YOUR CODE HERE` "
             "stub with your answer and run that cell again.")


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """True if `error`, an exception it was raised from or during, or a member of an ExceptionGroup, is a `kind`."""
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        if isinstance(current, BaseExceptionGroup):
            todo += list(current.exceptions)
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
    return False


# a notebook cell (/tmp/ipykernel_<pid>/<hash>.py), a console line; not "<string>" (code libraries generate)
_CELL_FILE = re.compile(r"ipykernel_\d+|^<(stdin|console|ipython-input-)")
_LIBRARY_DIRS = tuple(sorted({os.path.realpath(p) + os.sep for k, p in sysconfig.get_paths().items()
                              if k in ("stdlib", "platstdlib", "purelib", "platlib")}
                             | {str(Path(__file__).resolve().parent) + os.sep}))


def _is_learner_file(filename: str) -> bool:
    """True for code a learner wrote: a notebook cell, a console line, or a file outside Python, its packages and
    this course's toolkit (an answer kept in a module of its own)."""
    if _CELL_FILE.search(filename):
        return True
    if filename.startswith("<"):
        return False
    return not os.path.realpath(filename).startswith(_LIBRARY_DIRS)


def _learner_frames(error: BaseException, checker_file: str = "") -> list[traceback.FrameSummary]:
    """Traceback frames from code the learner wrote (a notebook cell, a console, their own module)."""
    frames = traceback.extract_tb(error.__traceback__)
    return [f for f in frames if _is_learner_file(f.filename) and f.filename != checker_file]


def _learner_error(error: BaseException, checker_file: str = "") -> tuple[BaseException, traceback.FrameSummary] | None:
    """The exception raised in the learner's code, and its innermost learner frame, wherever it hides.

    It may be `error` itself, or inside it: the cause or context of a wrapper (a lifespan error), a member of an
    ExceptionGroup (a TaskGroup, anyio), an exception raised in a worker thread (`asyncio.to_thread`,
    `run_in_threadpool`, a `def` endpoint) and re-raised by the awaiting coroutine."""
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    found: tuple[BaseException, traceback.FrameSummary] | None = None
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BaseExceptionGroup):
            todo[:0] = list(current.exceptions)  # the members raised the real errors
        else:
            frames = _learner_frames(current, checker_file)
            if frames and found is None:
                found = (current, frames[-1])
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
    return found


def _explain_exception(error: BaseException, checker_file: str = "") -> str:
    found = _learner_error(error, checker_file)
    if found is None:
        return f"your code raised {type(error).__name__}: {error}"
    raised, frame = found
    where = ""
    if frame.line:
        place = (f"in your cell, line {frame.lineno}" if _CELL_FILE.search(frame.filename)
                 else f"in your code, {Path(frame.filename).name} line {frame.lineno}")
        where = f" ({place}: `{frame.line.strip()}`)"
    return f"your code raised {type(raised).__name__}: {raised}{where}"


def exercise(
    exercise_id: str, *, title: str, expects: str, hints: tuple[str, ...] | list[str], timeout: float = 60.0,
    lesson: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a checker `fn(answer, checking)` (sync or async) under an id its lesson declares in the catalogue.

    The lesson is the catalogue's lesson of the checker's module; `lesson` names one only for exercises outside the
    catalogue (a test's throwaway exercises). An id registered twice, or not declared by its lesson, is refused.
    """
    if not hints:
        raise ValueError(f"exercise {exercise_id} needs at least one hint")

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        owner = catalogue.CATALOGUE.of_module(fn.__module__)
        if owner is not None and exercise_id not in owner.exercises:
            raise ValueError(f"exercise {exercise_id!r} is registered by {fn.__module__} but lesson {owner.name} does "
                             f"not declare it: add it to the lesson's line in course_lib/catalogue.py")
        name = owner.name if owner is not None else lesson
        if name is None:
            raise ValueError(f"exercise {exercise_id!r} belongs to no lesson of the catalogue: register it from its "
                             f"lesson's module")
        known = _REGISTRY.get(exercise_id)
        same = known is not None and (known.checker.__module__, known.checker.__qualname__) == (
            fn.__module__, fn.__qualname__)  # the same module imported again (after a failed first import)
        if known is not None and not same:  # a second grader would silently replace another lesson's
            raise ValueError(f"exercise id {exercise_id!r} is already registered by lesson "
                             f"{_REGISTRY[exercise_id].lesson}")
        _REGISTRY[exercise_id] = Exercise(exercise_id, title, name, expects, tuple(hints), fn, timeout)
        return fn

    return register


def _load_lessons() -> None:
    global _LOADED
    if _LOADED:
        return
    for lesson in catalogue.CATALOGUE:
        lesson.module()
    _LOADED = True


def exercises(lesson: str | None = None) -> list[Exercise]:
    """Every registered exercise in teaching order (the catalogue's), or one lesson's ("02" or "02_n_plus_one")."""
    _load_lessons()
    declared = catalogue.CATALOGUE.exercise_order()
    registered = {ex_id: i for i, ex_id in enumerate(_REGISTRY)}  # exercises outside the catalogue (tests) go last
    found = sorted(_REGISTRY.values(), key=lambda e: (declared.get(e.id, len(declared)), registered[e.id]))
    return [e for e in found if lesson is None or lesson in (e.lesson, e.lesson[:2])]


def _lookup(exercise_id: Any) -> Exercise | None:
    _load_lessons()
    return _REGISTRY.get(exercise_id) if isinstance(exercise_id, str) else None


class _TimeLimit(BaseException):
    """Raised inside a check that overran its time limit (and inside the learner code it runs), to stop it."""


_STOP_GRACE_S = 1.0  # after the time limit: let a cancelled check clean up (stop its servers), then force it
_ABANDONED: list[tuple[str, threading.Thread]] = []  # checks that could not be stopped (stuck in a blocking call)


def _raise_in_thread(thread: threading.Thread) -> None:
    """Ask `thread` to raise _TimeLimit at its next Python instruction (not inside a blocking C call)."""
    if thread.ident is not None and thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_TimeLimit))


def _runs_learner_code(thread: threading.Thread) -> bool:
    """True if `thread` is executing code the learner wrote right now (e.g. a `def` endpoint looping forever)."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if _is_learner_file(frame.f_code.co_filename):
            return True
        frame = frame.f_back
    return False


def _stop_check(thread: threading.Thread, runner: dict[str, Any], started_with: set[threading.Thread]) -> bool:
    """Stop a check past its time limit: cancel its event loop's task, then raise in its threads; True if stopped."""
    loop, task = runner.get("loop"), runner.get("task")
    if loop is not None and task is not None and not loop.is_closed():
        try:
            loop.call_soon_threadsafe(task.cancel)  # awaits end, `finally`/`with` blocks run: servers stop
        except RuntimeError:  # the loop closed meanwhile
            pass
        thread.join(_STOP_GRACE_S)
    for _ in range(2):  # the loop itself is blocked (a busy loop, a blocking call in `async def`), or it swallowed
        if not thread.is_alive():
            break
        _raise_in_thread(thread)
        for helper in threading.enumerate():  # worker threads it started that run the learner's code
            if helper not in started_with and helper is not thread and _runs_learner_code(helper):
                _raise_in_thread(helper)
        thread.join(_STOP_GRACE_S)
    for helper in threading.enumerate():
        if helper not in started_with and helper is not thread and _runs_learner_code(helper):
            _raise_in_thread(helper)  # one more chance for a helper still busy in the learner's code
    return not thread.is_alive()


def _restore(cwd: str, environ: dict[str, str]) -> None:
    """Put back the working folder and environment a check (or the learner's code) changed and left changed."""
    try:
        if os.getcwd() != cwd:
            os.chdir(cwd)
    except OSError:  # the folder the check moved into was deleted, or ours was
        try:
            os.chdir(cwd)
        except OSError:
            pass
    if dict(os.environ) != environ:
        for key in [k for k in os.environ if k not in environ]:
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def _run_with_time_limit(ex: Exercise, answer: Any, timeout: float) -> tuple[str, str, dict[str, Figure]]:
    """Run the checker in its own thread and event loop; returns (outcome, message, figures).

    Past its time limit a check is stopped (its task cancelled, then an exception raised in its threads) and, in
    every case, the working folder and environment are restored to what they were before it started."""
    checking = Checking(ex)
    outcome: list[tuple[str, str]] = []
    runner: dict[str, Any] = {}
    cwd, environ = os.getcwd(), dict(os.environ)
    started_with = set(threading.enumerate())
    checker_file = getattr(getattr(ex.checker, "__code__", None), "co_filename", "")

    def target() -> None:
        try:
            value = ex.checker(answer, checking)
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value, runner))
            outcome.append(("pass", value if isinstance(value, str) else "works as asked"))
        except _TimeLimit:
            pass
        except Fail as failure:
            outcome.append(("fail", str(failure)))
        except LearnerCodeError as error:
            outcome.append(("fail", str(error)))
        except Exception as error:  # learner code raised through the app, or broke the checker unforeseen
            if _caused_by(error, NotImplementedError):  # a stub, maybe wrapped (e.g. by a lifespan error)
                outcome.append(("fail", _NOT_DONE))
            elif _learner_error(error, checker_file) is not None:  # the checker's own frames are not the learner's
                outcome.append(("fail", _explain_exception(error, checker_file)))
            else:
                outcome.append(("fail", f"the checker could not use your answer: {type(error).__name__}: "
                                        f"{error}. It expects {ex.expects}."))
        except BaseException as error:  # sys.exit() or KeyboardInterrupt raised by the answer, or a cancellation
            if not _caused_by(error, _TimeLimit) and not runner.get("timed_out") and not runner.get("interrupted"):
                outcome.append(("fail", f"your code stopped the checker with {type(error).__name__}"))

    earlier = [name for name, stuck in _ABANDONED if stuck.is_alive()]
    finished = threading.Event()

    def run() -> None:
        try:
            target()
        finally:
            finished.set()

    thread = threading.Thread(target=run, name=f"grade-{ex.id}", daemon=True)
    try:
        thread.start()
        try:  # an Event's wait, not `thread.join`: a join cut by Ctrl-C can mark a running thread stopped (3.11)
            finished.wait(timeout)
        except KeyboardInterrupt:  # Ctrl-C, or the kernel's interrupt: stop the check too (servers it started)
            runner["interrupted"] = True
            from .servers import _sigint_deferred

            with _sigint_deferred():  # a second Ctrl-C waits until the check has stopped
                _stop_check(thread, runner, started_with)
            raise
        if not finished.is_set():
            runner["timed_out"] = True
            stopped = _stop_check(thread, runner, started_with)
            message = (f"grading did not finish within {timeout:g} s: does your code loop forever, sleep, or wait "
                       "for something that never comes? ")
            if stopped:
                message += "The check was stopped."
            else:
                _ABANDONED.append((ex.id, thread))
                message += ("It could not be stopped (it is stuck in a blocking call) and keeps running in the "
                            "background: restart the kernel (Kernel → Restart) before checking again.")
            if earlier:
                message += (f" An earlier check that could not be stopped ({', '.join(earlier)}) is still running "
                            "and may hold what this one needs: restart the kernel.")
            return "fail", message, checking.figures
    finally:
        _restore(cwd, environ)
    if not outcome:  # the answer swallowed the checker's own stop, or ended the thread some other way
        return "fail", "the check ended without a verdict: does your code catch BaseException?", checking.figures
    kind, message = outcome[0]
    return kind, message, checking.figures


async def _awaited(awaitable: Any, runner: dict[str, Any] | None = None) -> Any:
    if runner is not None:  # lets the time limit cancel the check from outside
        runner["loop"], runner["task"] = asyncio.get_running_loop(), asyncio.current_task()
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
    record = {**asdict(result), "when": datetime.now(UTC).isoformat(timespec="seconds")}
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
