"""Lesson 10 (diagnose): the measuring tools, the mystery apps, and the 10.diagnose grader.

The grader draws one mystery app of each kind per run (shuffled, random routes and sizes): the reference diagnoses
them all; right answers written other ways pass; wrong answers of our own fail, each saying why, among them ones that
look right (every tool used, one signal misread)."""

from __future__ import annotations

import asyncio
import random
import re
import time

import pytest
from answers.l10_diagnose import diagnose as reference

from course_lib import app_client, count_queries, grade, make_demo_db
from course_lib.lessons.l10_diagnose import (
    KINDS,
    Mystery,
    _parse_slow,
    count_connections,
    draw_mysteries,
    loop_lag_during,
    make_fixed_report_app,
    make_report_app,
    observe_kind_signs,
    profile_request,
    ptrace_status,
    request_cost,
    slow_callbacks,
    speedscope_top,
    statement_plans,
    time_share,
    top_frames,
)
from course_lib.queries import observe_statements


def _grade(answer):
    return grade("10.diagnose", answer, record=False)


# --- the tools ------------------------------------------------------------------------------------------------

def test_slow_callback_warnings_are_parsed():
    message = ("Executing <Task pending name='Task-7' coro=<RequestResponseCycle.run_asgi() running at "
               "/x/lib/python3.11/site-packages/uvicorn/protocols/http/h11_impl.py:403> created at "
               "/x/lib/python3.11/site-packages/uvicorn/protocols/http/h11_impl.py:250> took 0.105 seconds")
    slow = _parse_slow(message)
    assert slow is not None and slow.what == "RequestResponseCycle.run_asgi"
    assert slow.seconds == pytest.approx(0.105) and slow.created_at == "uvicorn/protocols/http/h11_impl.py:250"
    assert _parse_slow("something else") is None


def test_slow_callbacks_catch_a_blocking_step_and_nothing_leaks():
    async def main():
        loop = asyncio.get_running_loop()
        async with slow_callbacks(0.02) as held:
            time.sleep(0.05)
            await asyncio.sleep(0)
        async with slow_callbacks(0.02) as quiet:
            await asyncio.sleep(0.05)  # waiting without blocking: no warning
        return held, quiet, loop.get_debug()

    held, quiet, debug_after = asyncio.run(main())
    assert held and held[0].seconds >= 0.04
    assert quiet == [] and debug_after is False


def test_report_profile_blames_the_sleep_and_the_encoder():
    async def main():
        with make_demo_db(users=100, posts_per_user=10) as db:
            async with app_client(make_report_app(db, items=800, delay_s=0.03)) as client:
                await client.get("/report")
                return await profile_request(client, "/report")

    session = asyncio.run(main())
    table = top_frames(session, 10)
    sleep = [row for row in table.rows if row.function == "sleep"]
    assert sleep and sleep[0].self_ms >= 25  # the 30 ms wait, whatever else the machine is doing
    assert time_share(session, "sleep") > 0 and time_share(session, "fastapi/encoders.py") > 0.05
    assert "self ms" in repr(table) and "<table>" in table._repr_html_()


def test_fixed_report_is_the_same_json():
    async def main():
        with make_demo_db(users=50, posts_per_user=10) as db:
            async with app_client(make_report_app(db, items=100, delay_s=0)) as slow, \
                    app_client(make_fixed_report_app(db, items=100, delay_s=0)) as fixed:
                return (await slow.get("/report")).json(), (await fixed.get("/report")).json()

    slow, fixed = asyncio.run(main())
    assert slow == fixed and len(slow) == 100


def test_ptrace_status_says_why():
    allowed, why = ptrace_status()
    assert isinstance(allowed, bool) and "ptrace" in why or "py-spy" in why


def test_speedscope_top_reads_a_py_spy_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"shared": {"frames": [{"name": "spin", "file": "/a/b.py", "line": 4}, '
                    '{"name": "<module>", "file": "/a/b.py", "line": 9}]}, '
                    '"profiles": [{"samples": [[1, 0], [1, 0], [1]], "weights": [0.01, 0.01, 0.01]}]}')
    table = speedscope_top(path)
    assert table.rows[0].function == "spin" and table.rows[0].self_ms == pytest.approx(20)
    assert table.duration_ms == pytest.approx(30)


def test_each_mystery_kind_shows_its_sign():
    """Every kind is told apart by the measurement the hints name, on this run's database."""
    signs = asyncio.run(observe_kind_signs(random.Random(7)))
    assert signs["no_pooling"]["connections"] >= 1
    assert all(signs[k]["connections"] == 0 for k in KINDS if k != "no_pooling")
    assert signs["n_plus_one"]["queries"] > 10
    assert all(signs[k]["queries"] <= 2 for k in KINDS if k not in ("n_plus_one", "no_pooling"))
    assert signs["unbounded_list"]["growth"] > 3
    assert all(signs[k]["growth"] < 1.2 for k in KINDS if k != "unbounded_list")
    assert signs["missing_index"]["filtered_scan"] and not any(
        signs[k]["filtered_scan"] for k in KINDS if k not in ("missing_index", "n_plus_one"))


def test_mystery_database_refuses_a_bad_scale():
    _, mystery = draw_mysteries(random.Random(1))[0]
    for scale in (0, 0.5, 100, "4", None, True):
        with pytest.raises(ValueError):
            mystery.database(scale)


def test_mysteries_are_drawn_anew_each_run():
    first, second = draw_mysteries(random.Random(1)), draw_mysteries(random.Random(2))
    assert sorted(k for k, _ in first) == sorted(KINDS)
    assert [k for k, _ in first] != [k for k, _ in second] or [m.path for _, m in first] != [m.path for _, m in second]
    assert all(isinstance(m, Mystery) and m.path.startswith("/") for _, m in first)
    assert not any(kind in repr(m) for kind, m in first)


# --- the grader: right answers ------------------------------------------------------------------------------

def test_the_reference_passes():
    result = _grade(reference)
    assert result.passed, result.message
    assert result.figures["right"] == len(KINDS)


async def _other_way(mystery):
    """A right answer written another way: statements at the driver, three scales, the loop first, CPU last."""
    with mystery.database(1) as small, mystery.database(3) as large:
        async with app_client(mystery.make_app(small)) as client:
            small_size = len((await client.get(mystery.url(small))).content)
        async with app_client(mystery.make_app(large)) as client:
            url = mystery.url(large)
            await client.get(url)
            await client.get(url)
            with observe_statements(large) as seen, count_connections() as opened:
                await client.get(url)
                await client.get(url)
            if opened.count >= 2:
                return {"kind": "no_pooling", "evidence": f"{opened.count} connections for 2 warm requests"}
            if seen.count >= 10:
                return {"kind": "n_plus_one", "evidence": f"{seen.count} statements for 2 requests"}
            size = len((await client.get(url)).content)
            if size >= 2 * small_size:
                return {"kind": "unbounded_list", "evidence": f"{small_size} → {size} bytes for 3× the rows"}
            plans = await statement_plans(client, large, url)
            if any(" where " in " ".join(sql.lower().split()) and plan.full_scans for sql, plan in plans):
                return {"kind": "missing_index", "evidence": "a WHERE reads a whole table"}
            # the largest share of three profiles: one sample of a busy machine can hide the encoder
            sessions = [await profile_request(client, url) for _ in range(3)]
    if max(time_share(session, "encoders.py", "jsonable_encoder") for session in sessions) > 0.2:
        return {"kind": "slow_serialization", "evidence": "the profile is mostly jsonable_encoder"}
    return {"kind": "blocking_call", "evidence": "nothing else explains the time; the loop is held"}


def test_a_right_answer_written_another_way_passes():
    result = _grade(_other_way)
    assert result.passed, result.message


# --- the grader: wrong answers ------------------------------------------------------------------------------

def test_always_the_same_kind_fails():
    result = _grade(lambda mystery: ("n_plus_one", "it is always N+1"))  # a plain function is accepted too
    assert not result.passed
    assert "every verdict was 'n_plus_one'" in result.message and "its bottleneck is" in result.message


async def _wall_time_only(mystery):
    """Wrong: times the request at two sizes and guesses from milliseconds."""
    timings = []
    for scale in (1, 4):
        with mystery.database(scale) as db:
            async with app_client(mystery.make_app(db)) as client:
                await client.get(mystery.url(db))
                timings.append((await request_cost(client, mystery.url(db))).wall_ms)
    if timings[1] > 2 * timings[0]:
        return "unbounded_list", f"{timings[0]:.0f} → {timings[1]:.0f} ms"
    if timings[1] > 20:
        return "blocking_call", f"{timings[1]:.0f} ms is slow"
    return "n_plus_one", f"{timings[1]:.0f} ms"


def test_looking_only_at_wall_time_fails():
    result = _grade(_wall_time_only)
    assert not result.passed and "its bottleneck is" in result.message


async def _queries_only(mystery):
    """Wrong: counts queries and calls everything else a missing index."""
    with mystery.database(2) as db:
        async with app_client(mystery.make_app(db)) as client:
            with count_queries(db.engine) as log:
                await client.get(mystery.url(db))
    if log.count > 5:
        return "n_plus_one", f"{log.count} queries"
    return "missing_index", f"only {log.count} queries, so it must be the plan"


def test_counting_queries_only_fails():
    result = _grade(_queries_only)
    assert not result.passed and "its bottleneck is" in result.message


async def _held_loop_means_blocking(mystery):
    """Wrong, and looks right: every exact signal first, then any held loop is called a blocking call, though
    encoding a large response in the loop holds it too (the CPU was working, not waiting)."""
    with mystery.database(1) as small, mystery.database(4) as large:
        async with app_client(mystery.make_app(small)) as client:
            small_cost = await request_cost(client, mystery.url(small))
        async with app_client(mystery.make_app(large)) as client:
            url = mystery.url(large)
            await client.get(url)
            with count_connections() as connections, count_queries(large.engine) as queries:
                cost = await request_cost(client, url)
            if connections.count:
                return "no_pooling", "new connection per request"
            if queries.count > 5:
                return "n_plus_one", f"{queries.count} statements"
            if cost.size > 2 * small_cost.size:
                return "unbounded_list", "grows with the table"
            for sql, plan in await statement_plans(client, large, url):
                if re.search(r"\bWHERE\b", sql) and plan.full_scans:
                    return "missing_index", "filtered full scan"
            async with slow_callbacks(0.005) as held:  # 5 ms: any encoding of ~1,000 models holds it longer
                await client.get(url)
    if held:
        return "blocking_call", f"the loop was held {held[0].seconds * 1000:.0f} ms"
    return "slow_serialization", "the loop was not held"


def test_a_held_loop_alone_is_not_a_blocking_call():
    result = _grade(_held_loop_means_blocking)
    assert not result.passed
    assert "you said 'blocking_call'" in result.message and "'slow_serialization'" in result.message


async def _profile_only(mystery):
    """Wrong: one profile of one request, read by its top frame's name; misses what a profile cannot show (a plan,
    connections, growth with the table)."""
    with mystery.database(2) as db:
        async with app_client(mystery.make_app(db)) as client:
            url = mystery.url(db)
            await client.get(url)
            session = await profile_request(client, url)
    top = top_frames(session, 1).rows[0].function if top_frames(session, 1).rows else ""
    if time_share(session, "encoders.py") > 0.2:
        return "slow_serialization", "encoder in the profile"
    if top == "sleep":
        return "blocking_call", "sleep on top"
    if time_share(session, "connect") > 0.2:
        return "no_pooling", "connect in the profile"
    return "n_plus_one", f"top frame {top}"


def test_reading_one_profile_only_fails():
    result = _grade(_profile_only)
    assert not result.passed and "its bottleneck is" in result.message


async def _any_full_scan_is_an_index(mystery):
    """Wrong, and looks right: explains the statements first, and calls any full scan a missing index (a page of
    `ORDER BY id LIMIT n` reads the table in order, which SQLite and PostgreSQL may show as a scan too)."""
    with mystery.database(2) as db:
        async with app_client(mystery.make_app(db)) as client:
            url = mystery.url(db)
            await client.get(url)
            with count_connections() as connections, count_queries(db.engine) as queries:
                await client.get(url)
            if connections.count:
                return "no_pooling", "new connection per request"
            if queries.count > 5:
                return "n_plus_one", f"{queries.count} statements"
            for _, plan in await statement_plans(client, db, url):
                if plan.full_scans:
                    return "missing_index", f"full scan: {plan.full_scans[0].detail}"
    return "blocking_call", "no scan, so the loop"


def test_any_full_scan_is_not_a_missing_index():
    result = _grade(_any_full_scan_is_an_index)
    assert not result.passed and "its bottleneck is" in result.message


# --- the grader: bad answers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("answer, says", [
    (None, "a function diagnose(mystery)"),
    (lambda m: None, "expected a pair (kind, evidence)"),
    (lambda m: "n_plus_one", "expected a pair (kind, evidence)"),
    (lambda m: ("slow", "it is slow"), "expected one of n_plus_one"),
    (lambda m: ("n_plus_one", ""), "say what you measured"),
    (lambda m: 1 / 0, "ZeroDivisionError"),
])
def test_bad_answers_fail_with_a_message(answer, says):
    result = _grade(answer)
    assert not result.passed and says in result.message, result.message
    assert "Traceback" not in result.message


def test_profiler_middleware_profiles_only_when_asked():
    from fastapi import FastAPI

    from course_lib.lessons.l10_diagnose import ProfilerMiddleware

    async def main():
        app = FastAPI()

        @app.get("/work")
        async def work() -> dict[str, int]:
            return {"total": sum(range(200_000))}

        async with app_client(ProfilerMiddleware(app)) as client:
            return (await client.get("/work"), await client.get("/work?profile=text"),
                    await client.get("/work?profile=1"), await client.get("/work?profile"))

    plain, text, page, bare = asyncio.run(main())
    assert plain.json() == {"total": sum(range(200_000))} and bare.json() == plain.json()
    assert text.headers["content-type"].startswith("text/plain") and "work" in text.text
    assert page.headers["content-type"].startswith("text/html") and "<html" in page.text.lower()


def test_loop_lag_shows_a_blocking_call_on_the_loop():
    async def main():
        with make_demo_db(users=20, posts_per_user=10) as db:
            async with app_client(make_report_app(db, items=50, delay_s=0.05)) as client:
                await client.get("/report")
                return await loop_lag_during(client, "/report")

    worst_ms, ticks = asyncio.run(main())
    assert worst_ms >= 40  # the 50 ms sleep runs on the loop: no timer can fire during it
