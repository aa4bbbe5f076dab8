"""Lesson 09: the bookshop's behaviour, the audit of each step, and the capstone grader on right and wrong answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sqlalchemy import text

from course_lib.grading import grade
from course_lib.lessons.bookshop import make_bookshop_db
from course_lib.lessons.bookshop.app import ALL_FIXES, STEPS, make_app
from course_lib.lessons.l09_capstone import GOAL, audit_bookshop, compare_behaviour, copy_db, corpus
from course_lib.notebooks import BEGIN, END, ROOT, STARTER
from course_lib.servers import running_servers

EX = "09.capstone"


def reference_source() -> str:
    """The reference fix, exactly as the solutions notebook writes it."""
    nb = json.loads((ROOT / "solutions" / "09_capstone.ipynb").read_text())
    cell = next("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code" and BEGIN in "".join(c["source"]))
    inside = cell.split(BEGIN, 1)[1].split(END, 1)[0]
    return "\n".join(line for line in inside.splitlines() if not line.startswith(STARTER.strip()))


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return path


@pytest.fixture(scope="module")
def db():
    with make_bookshop_db() as shop:
        yield shop


def test_original_runs_n_plus_one_and_fixed_does_not(db) -> None:
    from course_lib import app_client, count_queries

    async def queries(fixes: frozenset[str]) -> int:
        app = make_app(copy_db(db), fixes)
        async with app_client(app) as client:
            with count_queries(app.state.engine) as log:
                assert (await client.get("/books")).status_code == 200
        return log.count

    assert asyncio.run(queries(frozenset())) == 23  # 1 page + 2 authors + 20 review lists
    assert asyncio.run(queries(ALL_FIXES)) == 3


def test_copies_are_independent_databases(db) -> None:
    from sqlalchemy import create_engine, inspect as inspect_db
    from course_lib.lessons.bookshop import engine_args

    first, second = copy_db(db), copy_db(db)
    assert first != second and db.url not in (first, second)
    engines = [create_engine(url, **engine_args(url)) for url in (first, second)]
    try:
        with engines[0].begin() as conn:
            conn.execute(text("CREATE INDEX ix_reviews_book_id ON reviews (book_id)"))
        names = [{ix["name"] for ix in inspect_db(e).get_indexes("reviews")} for e in engines]
        assert names == [{"ix_reviews_book_id"}, set()]  # one app's index never speeds up another
        with engines[1].connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM reviews")).scalar_one() == db.counts["reviews"]
    finally:
        for engine in engines:
            engine.dispose()


def test_every_step_keeps_behaviour(db) -> None:
    original = make_app(copy_db(db))
    for _, fixes in STEPS[1:]:
        assert asyncio.run(compare_behaviour(original, make_app(copy_db(db), fixes), corpus(db))) == []


def test_behaviour_comparison_sees_a_change(db) -> None:
    a, b = make_app(copy_db(db)), make_app(copy_db(db))

    @b.get("/stats", include_in_schema=False)
    def other_stats() -> dict[str, int]:
        return {"books": 0}

    b.router.routes.insert(0, b.router.routes.pop())  # the new /stats shadows the original one
    diffs = asyncio.run(compare_behaviour(a, b, ["/stats", "/books/1"]))
    assert len(diffs) == 1 and diffs[0].startswith("GET /stats: body")


def test_audit_turns_green_step_by_step(db) -> None:
    failing = [len([c for c in asyncio.run(audit_bookshop(make_app(copy_db(db), f))).checks if c.status == "✗"])
               for _, f in STEPS]
    assert failing[0] == 9 and failing[-1] == 0
    assert failing == sorted(failing, reverse=True)


# --- the grader -------------------------------------------------------------------------------------

def test_reference_answer_passes(tmp_path: Path) -> None:
    result = grade(EX, write(tmp_path, "reference", reference_source()))
    assert result.passed, result.message
    assert result.figures["ratio"] >= GOAL and result.figures["audit"] == "10/10"
    assert running_servers() == []


def test_answer_written_another_way_passes(tmp_path: Path) -> None:
    source = ("from course_lib.lessons.bookshop.app import ALL_FIXES, make_app as shipped\n\n"
              "def make_app(database_url):\n    return shipped(database_url, ALL_FIXES)\n")
    result = grade(EX, write(tmp_path, "all_fixes", source))
    assert result.passed, result.message


def test_faster_but_changed_response_fails(tmp_path: Path) -> None:
    source = reference_source().replace("Query(ge=1, le=100)] = 20", "Query(ge=1, le=100)] = 10")
    assert "= 10" in source
    result = grade(EX, write(tmp_path, "smaller_pages", source))
    assert not result.passed
    assert "answer differently from the original" in result.message and "GET /books" in result.message


def test_the_shipped_original_fails_on_the_audit(tmp_path: Path) -> None:
    result = grade(EX, write(tmp_path, "original", "from course_lib.lessons.bookshop.app import make_app\n"))
    assert not result.passed
    assert "the audit is not all ✓" in result.message and "N+1" in result.message


def test_audit_green_but_not_faster_fails(tmp_path: Path) -> None:
    # Stands for a cost that only real load reveals: 25 ms of CPU per request, only when served.
    source = reference_source().replace(
        "    def get_db():\n",
        "    import os\n    served = 'BOOKSHOP_DB_LATENCY_MS' in os.environ\n\n    def get_db():\n"
        "        if served:\n            end = time.perf_counter() + 0.025\n"
        "            while time.perf_counter() < end:\n                pass\n")
    assert "served = " in source
    result = grade(EX, write(tmp_path, "cpu_heavy", source))
    assert not result.passed, result.message
    assert "req/s vs the original's" in result.message and f"the goal is ≥ {GOAL:g}×" in result.message
    assert result.figures["audit"] == "10/10"
    assert running_servers() == []


@pytest.mark.parametrize("answer, expected", [
    (None, "the answer is None"),
    (42, "expected the path of your app file"),
    ("/no/such/file.py", "is not a Python file"),
])
def test_odd_answers_get_clear_messages(answer: object, expected: str) -> None:
    result = grade(EX, answer)
    assert not result.passed and expected in result.message


@pytest.mark.parametrize("source, expected", [
    ("def make_app(:\n", "SyntaxError"),
    ("x = 1\n", "defines no make_app"),
    ("def make_app(url):\n    return None\n", "not a FastAPI app"),
    ("def make_app(url):\n    raise NotImplementedError()\n", "not answered yet"),
])
def test_broken_files_get_clear_messages(tmp_path: Path, source: str, expected: str) -> None:
    result = grade(EX, write(tmp_path, "broken", source))
    assert not result.passed and expected in result.message, result.message
