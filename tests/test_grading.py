"""Grading: never raises for a wrong answer, explains every failure, escalates hints, keeps progress."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session

from course_lib import User, check, grade, hint
from course_lib.catalogue import CATALOGUE
from course_lib.grading import ExerciseNotPassed, exercises, load_progress, progress_file
from course_lib.notebooks import solution_namespace

ID = "00.first-endpoint"


# ---------- right answers, written different ways ----------

def reference(db):
    """Lesson 00's shipped answer (solutions/00_welcome.ipynb), not re-typed here."""
    return solution_namespace("00_welcome")["make_app"](db)


def no_route(db):
    """A wrong answer: an app without the route (lesson 00's own wrong answers are in test_l00_welcome.py)."""
    return FastAPI()


# ---------- bad input never escapes as a traceback ----------

def test_none_wrong_type_and_called_factory():
    assert "the answer is None" in grade(ID, None).message
    assert "got int 42" in grade(ID, 42).message
    assert "Pass the function itself" in grade(ID, 42).message
    called = grade(ID, FastAPI())  # make_app(db) passed instead of make_app: an app is callable too (ASGI)
    assert not called.passed and "Pass the function itself" in called.message, called.message


def test_factory_returning_nothing():
    result = grade(ID, lambda db: None)
    assert not result.passed and "return app" in result.message


def test_raising_answer():
    def broken(db):
        raise ZeroDivisionError("oops")

    result = grade(ID, broken)
    assert not result.passed and "ZeroDivisionError: oops" in result.message


def test_stub_answer_says_not_done():
    def stub(db):
        raise NotImplementedError()

    assert "not answered yet" in grade(ID, stub).message


def test_hanging_answer_is_stopped_by_the_time_limit():
    hang_s = 30

    def hangs(db):
        time.sleep(hang_s)

    started = time.monotonic()
    result = grade(ID, hangs, timeout=1)
    assert time.monotonic() - started < hang_s / 3  # it returned long before the answer would have
    assert not result.passed and "did not finish within 1 s" in result.message


def test_unknown_exercise_and_non_string_id():
    assert "no exercise" in grade("99.nope", reference).message
    assert "no exercise" in grade(None, reference).message  # type: ignore[arg-type]


# ---------- hints, check(), progress ----------

def test_hints_escalate_then_stay_on_the_last():
    from course_lib import grading

    grading._ATTEMPTS.pop(ID, None)
    ex = next(e for e in exercises() if e.id == ID)
    seen = [grade(ID, no_route).hint for _ in range(len(ex.hints) + 1)]
    assert seen == [*ex.hints, ex.hints[-1]]
    assert hint(ID, 1) == ex.hints[0]


def test_check_raises_with_hint_and_prints_on_pass(capsys):
    with pytest.raises(ExerciseNotPassed, match="Hint:"):
        check(ID, no_route)
    assert check(ID, reference) is None
    assert capsys.readouterr().out.startswith(f"✓ {ID} passed")


def test_progress_is_kept_in_the_learners_home(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_LAB_HOME", str(tmp_path))
    grade(ID, no_route)
    assert load_progress()[ID]["passed"] is False
    grade(ID, reference)
    assert load_progress()[ID]["passed"] is True
    assert progress_file().parent == tmp_path


def test_every_exercise_has_a_nudge_and_a_lesson():
    for ex in exercises():
        assert ex.hints and all(h.strip() for h in ex.hints)
        assert ex.lesson[:2].isdigit() and ex.id.startswith(ex.lesson[:2] + ".")


# ---------- progress belongs to the learner (issue 12 §4) ----------

def test_a_duplicate_exercise_id_is_refused():
    from course_lib.grading import exercise

    with pytest.raises(ValueError, match="already registered"):
        exercise(ID, title="copy", lesson="99_copy", expects="x", hints=("h",))(lambda answer, checking: "ok")
    assert next(e for e in exercises() if e.id == ID).lesson == "00_welcome"  # the original grader stays


def test_exercises_are_listed_in_teaching_order():
    ids = [e.id for e in exercises("01_workers")]
    assert ids[0] == "01.unblock", ids  # the notebook starts with it; sorting by id put 01.timeout-client first
    lessons = [e.lesson for e in exercises()]
    assert lessons == sorted(lessons)


def test_a_demonstration_neither_saves_progress_nor_downgrades_a_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_LAB_HOME", str(tmp_path))
    assert grade(ID, reference).passed
    demo = grade(ID, lambda db: FastAPI(), record=False)
    assert not demo.passed and demo.hint  # the demo still shows its hint
    assert load_progress()[ID]["passed"] is True


def test_two_processes_saving_at_once_lose_nothing(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from course_lib.grading import Result, _save\n"
        "for i in range(60):\n"
        "    _save(Result(f'p{sys.argv[1]}.{i}', True, 'ok'))\n"
    )
    env = {**__import__("os").environ, "COURSE_LAB_HOME": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(n)], env=env) for n in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    saved = json.loads((tmp_path / "progress.json").read_text())
    assert len(saved) == 240, f"{240 - len(saved)} of 240 concurrent updates were lost"


# ---------- errors raised in worker threads are the learner's (issue 12 §2) ----------

@pytest.fixture
def synthetic():
    """Register throwaway exercises (id 99.*) for one test, and remove them afterwards."""
    from course_lib import grading
    from course_lib.grading import exercise

    made: list[str] = []

    def register(exercise_id, checker, timeout=60.0):
        made.append(exercise_id)
        exercise(exercise_id, title="synthetic", lesson="99_synthetic", expects="anything",
                 hints=("look", "tool"), timeout=timeout)(checker)
        return exercise_id

    yield register
    for exercise_id in made:
        grading._REGISTRY.pop(exercise_id, None)


_CELL = '''
import asyncio
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool


def lookup(item_id):
    return {"id": item_id, "ratio": 1 / 0}


def make_to_thread():
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int):
        return await asyncio.to_thread(lookup, item_id)

    return app


def make_threadpool():
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int):
        return await run_in_threadpool(lambda: {"price": {}["price"]})

    return app


def make_task_group():
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int):
        async with asyncio.TaskGroup() as group:
            group.create_task(asyncio.to_thread(lookup, item_id))
        return {}

    return app
'''


def _as_cell(source: str, filename: str) -> dict[str, Any]:
    """Run `source` as if typed in a notebook cell (ipykernel names cells /tmp/ipykernel_<pid>/<hash>.py)."""
    import linecache

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


async def _get_item(make_app, checking):
    from course_lib.client import app_client

    async with app_client(checking.build_app(make_app)) as client:
        await client.get("/items/3")
    return "ok"


@pytest.mark.parametrize(("factory", "raised", "line"), [
    ("make_to_thread", "ZeroDivisionError: division by zero", 'return {"id": item_id, "ratio": 1 / 0}'),
    ("make_threadpool", "KeyError: 'price'", 'return await run_in_threadpool(lambda: {"price": {}["price"]})'),
    ("make_task_group", "ZeroDivisionError: division by zero", 'return {"id": item_id, "ratio": 1 / 0}'),
])
def test_an_error_raised_in_a_worker_thread_is_the_learners(synthetic, factory, raised, line):
    """`asyncio.to_thread`, `run_in_threadpool`, a TaskGroup: the message names the exception and the cell's line."""
    namespace = _as_cell(_CELL, "/tmp/ipykernel_4242/1234567.py")
    result = grade(synthetic("99.thread-error", _get_item), namespace[factory], record=False)
    assert not result.passed
    assert result.message.startswith(f"your code raised {raised}"), result.message
    assert "in your cell, line" in result.message and line in result.message, result.message
    assert "could not use your answer" not in result.message


def test_an_error_in_the_learners_own_module_names_the_file(synthetic, tmp_path, monkeypatch):
    """An answer kept in a .py file of the learner's (not a notebook) is still the learner's code."""
    (tmp_path / "my_answers.py").write_text(_CELL)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("my_answers")
    result = grade(synthetic("99.thread-error-file", _get_item), module.make_to_thread, record=False)
    assert "your code raised ZeroDivisionError" in result.message, result.message
    assert "my_answers.py line" in result.message, result.message


def test_a_checker_bug_is_still_told_apart(synthetic):
    """An error in the course's own code (no learner frame anywhere) is not blamed on the learner."""
    from course_lib.lessons.l01_workers import slow_lookup

    def checker(answer, checking):
        return slow_lookup("not an id", "two")  # the course's helper called wrongly: the checker's fault

    result = grade(synthetic("99.checker-bug", checker), object(), record=False)
    assert "the checker could not use your answer" in result.message, result.message


# ---------- a check past its time limit is stopped and leaves the kernel as it was (issue 14) ----------

def test_a_busy_loop_is_stopped_and_cwd_env_and_lock_are_restored(synthetic, tmp_path):
    """A checker that (like lesson 07's) takes a lock, moves into its own folder and sets variables, then runs an
    answer that loops forever: after the time limit the check stops, the lock is free, cwd and env are back."""
    import os
    import threading

    lock = threading.RLock()

    def checker(answer, checking):
        with lock:
            os.chdir(tmp_path)
            os.environ["LAB_SYNTHETIC"] = "grader"
            answer()  # never returns
        return "ok"

    spins = {"n": 0}
    namespace = _as_cell("def loops_forever(spins):\n    while True:\n        spins['n'] += 1\n",
                         "/tmp/ipykernel_4242/7654321.py")
    cwd = os.getcwd()
    os.environ.pop("LAB_SYNTHETIC", None)
    started = time.monotonic()
    result = grade(synthetic("99.busy", checker), lambda: namespace["loops_forever"](spins), timeout=1, record=False)
    took = time.monotonic() - started
    assert not result.passed and "did not finish within 1 s" in result.message
    assert "The check was stopped." in result.message, result.message
    assert took < 5, took  # 5 × the 1 s limit: returned, not hung
    stopped_at = spins["n"]
    time.sleep(0.2)
    assert spins["n"] == stopped_at, "the busy loop still runs after its check was stopped"
    assert os.getcwd() == cwd and "LAB_SYNTHETIC" not in os.environ
    assert lock.acquire(timeout=1), "the timed-out check still holds its lock"
    lock.release()
    before = spins["n"]
    time.sleep(0.3)
    assert spins["n"] == before, "the answer's loop still runs after the check was stopped"


def test_a_busy_def_endpoint_in_a_worker_thread_is_stopped_too(synthetic):
    """The loop runs in FastAPI's thread pool (a `def` endpoint): that thread is stopped as well."""

    namespace = _as_cell('''
from fastapi import FastAPI
spins = {"n": 0}

def make_app():
    app = FastAPI()

    @app.get("/items/{item_id}")
    def read_item(item_id: int):
        while True:
            spins["n"] += 1

    return app
''', "/tmp/ipykernel_4242/1111111.py")
    result = grade(synthetic("99.busy-def", _get_item), namespace["make_app"], timeout=1, record=False)
    assert "did not finish within 1 s" in result.message and "The check was stopped." in result.message, result.message
    before = namespace["spins"]["n"]
    time.sleep(0.3)
    assert namespace["spins"]["n"] == before, "the endpoint's loop still burns a core"


def test_a_timed_out_check_restores_cwd_and_env_even_when_stuck(synthetic, tmp_path):
    """Stuck in a blocking call it cannot be stopped: the message says to restart, cwd and env are restored anyway."""
    import os

    def checker(answer, checking):
        os.chdir(tmp_path)
        os.environ["LAB_SYNTHETIC_STUCK"] = "1"
        time.sleep(3)  # a C call: an exception raised in this thread waits until it returns
        return "ok"

    cwd = os.getcwd()
    result = grade(synthetic("99.stuck", checker), object(), timeout=0.5, record=False)
    assert "did not finish within 0.5 s" in result.message
    assert "restart the kernel" in result.message, result.message
    assert os.getcwd() == cwd and "LAB_SYNTHETIC_STUCK" not in os.environ
    time.sleep(3)  # let it end before other tests run


# ---------- hints teach, they never hand over the answer (issue 12 §2) ----------

_LESSONS = [lesson.number for lesson in CATALOGUE]  # every lesson of the catalogue
_NOT_YET_PROGRESSIVE: set[str] = set()  # lessons whose hints are still being rewritten (flip when they land)


def _solutions_by_exercise(lesson: str) -> tuple[dict[str, list[str]], set[str]]:
    """Each exercise's answer lines (between BEGIN/END SOLUTION before its check cell), and the starter lines."""
    import re
    from pathlib import Path

    import nbformat

    answers: dict[str, list[str]] = {}
    starter: set[str] = set()
    pending: list[str] = []
    for path in sorted(Path(__file__).resolve().parent.parent.glob(f"solutions/{lesson}_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            inside = False
            for line in cell.source.splitlines():
                stripped = line.strip()
                if stripped.startswith("### BEGIN SOLUTION"):
                    inside = True
                elif stripped.startswith("### END SOLUTION"):
                    inside = False
                elif stripped.startswith("#>"):
                    starter.add(_code_line(stripped[2:]))
                elif inside:
                    pending.append(_code_line(stripped))
            for exercise_id in re.findall(r"""\b(?:check|grade)\(\s*["']([0-9]{2}\.[\w-]+)["']""", cell.source):
                answers.setdefault(exercise_id, []).extend(pending)
                pending = []
    return answers, starter


def _code_line(line: str) -> str:
    """A line of code without its trailing comment, whitespace collapsed."""
    code = line.split("  #", 1)[0] if not line.lstrip().startswith("#") else ""
    return " ".join(code.split())


def _given_away(line: str, hint_text: str) -> bool:
    """True if (nearly) all of `line` appears in the hint in order, in runs of 4+ characters (90 % or more)."""
    from difflib import SequenceMatcher

    blocks = SequenceMatcher(None, line, hint_text, autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks if b.size >= 4) >= 0.9 * len(line)


@pytest.mark.parametrize("lesson", [
    pytest.param(n, marks=pytest.mark.xfail(strict=False, reason="hints being rewritten"))
    if n in _NOT_YET_PROGRESSIVE else n for n in _LESSONS])
def test_hints_are_progressive_and_never_the_answer(lesson):
    """Every exercise: at least 2 hints, and no hint holds half (or more) of its solution's non-trivial lines."""
    found = [e for e in exercises() if e.id.startswith(lesson + ".")]
    answers, starter = _solutions_by_exercise(lesson)
    problems = []
    for ex in found:
        if len(ex.hints) < 2:
            problems.append(f"{ex.id}: {len(ex.hints)} hint(s); a nudge, then the tool, then a shape")
        secret = [line for line in dict.fromkeys(answers.get(ex.id, []))
                  if len(line) >= 12 and line not in starter]  # `return app`, `)` … give nothing away
        for level, text in enumerate(ex.hints, 1):
            flat = " ".join(text.split())
            given = [line for line in secret if _given_away(line, flat)]
            if secret and 2 * len(given) >= len(secret):
                problems.append(f"{ex.id} hint {level} holds {len(given)} of the solution's {len(secret)} lines: "
                                f"{given}")
    assert not problems, "\n".join(problems)


def test_the_give_away_criterion_catches_the_full_answer():
    """The criterion above rejects a hint that is the solution, and accepts a shape with gaps."""
    answers, starter = _solutions_by_exercise("00")
    secret = [line for line in answers["00.first-endpoint"] if len(line) >= 12 and line not in starter]
    assert len(secret) >= 3, secret
    full = " ".join(secret)
    assert all(_given_away(line, full) for line in secret)
    shape = " ".join(hint("00.first-endpoint", 3).split())
    assert 2 * sum(_given_away(line, shape) for line in secret) < len(secret)


def test_a_timed_out_async_check_is_cancelled_and_its_cleanup_runs(synthetic):
    """An async check waiting past its limit is cancelled: its `finally` (stopping servers, say) runs at once."""
    import asyncio
    import threading

    cleaned = threading.Event()

    async def checker(answer, checking):
        try:
            await asyncio.sleep(60)
        finally:
            cleaned.set()
        return "ok"

    started = time.monotonic()
    result = grade(synthetic("99.async-wait", checker), object(), timeout=0.5, record=False)
    assert "did not finish within 0.5 s" in result.message and "The check was stopped." in result.message
    assert cleaned.is_set() and time.monotonic() - started < 3


# ---------- the graders' HTTP plumbing: Checking.request / get_json / json_body / counted (issue 13) ----------

def _checking():
    from course_lib.grading import Checking, Exercise

    return Checking(Exercise("99.plumbing", "synthetic", "99_synthetic", "anything", ("look",), lambda a, c: None))


def _plumbing_app(db):
    from fastapi.responses import PlainTextResponse

    app = FastAPI()
    get_db = db.dependency()

    @app.get("/users")
    def users(limit: int = 3, session: Session = Depends(get_db)) -> list[dict]:
        return [{"id": u.id, "posts": len(u.posts)} for u in session.scalars(select(User).order_by(User.id).limit(limit))]

    @app.get("/text", response_class=PlainTextResponse)
    def text() -> str:
        return "plain words"

    @app.get("/boom")
    def boom() -> dict:
        return {"ratio": 1 / 0}

    @app.get("/todo")
    def todo() -> dict:
        raise NotImplementedError

    return app


def _plumb(db, steps):
    """Run `steps(checking, client)` against the plumbing app; return what it returned or the exception it raised."""
    import asyncio

    from course_lib.client import app_client

    async def go():
        async with app_client(_plumbing_app(db)) as client:
            return await steps(_checking(), client)

    try:
        return asyncio.run(go())
    except Exception as error:  # noqa: BLE001 - the test inspects it
        return error


@pytest.fixture(scope="module")
def plumbing_db():
    from course_lib.db import make_demo_db

    with make_demo_db(users=6, posts_per_user=2) as db:
        yield db


def test_checking_fail_never_returns_and_is_typed_so():
    import typing

    from course_lib.grading import Checking, Fail

    assert typing.get_type_hints(Checking.fail)["return"] is typing.NoReturn
    with pytest.raises(Fail, match="measured 3"):
        _checking().fail("measured 3")


def test_request_names_the_status_that_came_back(plumbing_db):
    from course_lib.grading import Fail

    error = _plumb(plumbing_db, lambda c, client: c.request(client, "GET", "/nowhere"))
    assert isinstance(error, Fail) and str(error).startswith("GET /nowhere answered 404, expected 200. Body: {")
    error = _plumb(plumbing_db, lambda c, client: c.request(client, "GET", "/users", status=422, params={"limit": 2}))
    assert isinstance(error, Fail) and str(error).startswith("GET /users?limit=2 answered 200, expected 422"), error
    response = _plumb(plumbing_db, lambda c, client: c.request(client, "GET", "/nowhere", status=None))
    assert response.status_code == 404  # status=None: any status is fine, the caller looks


def test_request_turns_an_app_error_into_the_learners_error_not_a_traceback(plumbing_db):
    from course_lib.grading import LearnerCodeError

    error = _plumb(plumbing_db, lambda c, client: c.request(client, "GET", "/boom"))
    assert isinstance(error, LearnerCodeError), error
    assert str(error).startswith("GET /boom: your code raised ZeroDivisionError: division by zero"), error
    error = _plumb(plumbing_db, lambda c, client: c.request(client, "GET", "/todo"))
    assert isinstance(error, LearnerCodeError) and "not answered yet" in str(error), error


def test_get_json_refuses_a_body_that_is_not_json(plumbing_db):
    from course_lib.grading import Fail

    error = _plumb(plumbing_db, lambda c, client: c.get_json(client, "/text"))
    assert isinstance(error, Fail) and str(error) == "GET /text answered 200 but not JSON: 'plain words'", error
    body = _plumb(plumbing_db, lambda c, client: c.get_json(client, "/users", params={"limit": 2}))
    assert body == [{"id": 1, "posts": 2}, {"id": 2, "posts": 2}]


@pytest.mark.parametrize("limit", [2, 5])
def test_counted_gives_the_statements_of_one_request_exactly(plumbing_db, limit):
    """Lazy loading: 1 + one query per user, counted through the engine and through a driver-level observer alike."""
    from course_lib.queries import observe_statements

    async def by_engine(c, client):
        response, statements = await c.counted(client, plumbing_db.engine, "GET", "/users", params={"limit": limit})
        return len(statements), response.json()

    async def by_observer(c, client):
        with observe_statements(plumbing_db) as log:
            await client.get("/users")  # statements before the mark are not this request's
            _, statements = await c.counted(client, log, "GET", f"/users?limit={limit}")
        return len(statements), None

    assert _plumb(plumbing_db, by_engine)[0] == 1 + limit
    assert _plumb(plumbing_db, by_observer)[0] == 1 + limit


def test_a_grader_using_the_plumbing_reports_a_clear_message(synthetic, plumbing_db):
    """Through grade(): the learner sees which request failed and why, never a traceback."""
    from course_lib.client import app_client

    async def checker(answer, checking):
        async with app_client(checking.build_app(answer, plumbing_db)) as client:
            await checking.get_json(client, "/users")
            await checking.get_json(client, answer.path)
        return "ok"

    def make(path):
        factory = lambda db: _plumbing_app(db)  # noqa: E731
        factory.path = path
        return factory

    exercise_id = synthetic("99.plumbing", checker)
    assert grade(exercise_id, make("/users"), record=False).passed
    assert grade(exercise_id, make("/text"), record=False).message == "GET /text answered 200 but not JSON: 'plain words'"
    message = grade(exercise_id, make("/boom"), record=False).message
    assert message.startswith("GET /boom: your code raised ZeroDivisionError"), message
