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
