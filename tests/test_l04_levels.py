"""Lesson 04's measuring helpers: OFFSET vs keyset as the SQL alone and through the endpoint."""

from __future__ import annotations

import asyncio

from course_lib.lessons.l04_pagination import keyset_levels, make_items_db, page_sql_times


def test_page_sql_times_runs_both_pages_through_the_driver_and_returns_the_connection() -> None:
    with make_items_db(30_000) as db:
        result = page_sql_times(db, 29_980, n=3)
        assert list(result.timings) == ["OFFSET 29,980", "keyset id < 21"]
        assert result.ratio > 3, result  # 29,980 rows walked against a seek
        assert db.engine.pool.checkedout() == 0


def test_page_sql_times_clamps_the_depth_to_the_last_page() -> None:
    with make_items_db(100) as db:
        assert list(page_sql_times(db, 10**6, n=1).timings) == ["OFFSET 80", "keyset id < 21"]


def test_keyset_levels_shows_both_levels_side_by_side() -> None:
    with make_items_db(20_000) as db:
        text = asyncio.run(keyset_levels(db, n=3))
    assert text.startswith("<table>") and "19,980 rows deep of 20,000" in text
    assert "the SQL alone (raw " in text and "the endpoint, in-process" in text
    assert "an empty route costs" in text


def test_the_prose_helpers_quote_what_they_are_given() -> None:
    import httpx

    from course_lib.lessons.l04_pagination import limit_prose, ties_prose

    dumped = httpx.Response(200, json=[{"id": i} for i in range(1_234)])
    refused = httpx.Response(500, text="LIMIT must not be negative")
    assert "200 with 1,234 items" in limit_prose("sqlite", dumped)
    assert "answered **500**" in limit_prose("postgresql", refused)
    assert "**1,000 distinct**" in ties_prose("sqlite", list(range(1_000)), "SCAN items")
    repeated = list(range(990)) + list(range(10))
    assert "**990 distinct**" in ties_prose("postgresql", repeated, "Limit") and "**10** items never came" in ties_prose(
        "postgresql", repeated, "Limit")
