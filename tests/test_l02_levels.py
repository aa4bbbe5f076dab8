"""Lesson 02's measuring helpers: one effect at the SQL and the endpoint level, and the fixed cost between them."""

from __future__ import annotations

import asyncio
import re

from course_lib.db import make_demo_db
from course_lib.lessons.l02_n_plus_one import levels_markdown, orm_ratio, queries, request_floor_ms, strategy_prose


def test_queries_are_pluralised() -> None:
    assert (queries(0), queries(1), queries(2), queries(1_200)) == ("0 queries", "1 query", "2 queries", "1,200 queries")


def test_levels_markdown_is_a_table_of_both_levels_and_explains_the_gap_from_its_figures() -> None:
    text = levels_markdown("lookup", "slow", "fast", sql=(40.0, 0.05), endpoint=(45.0, 5.0), floor_ms=0.5)
    assert text.startswith("<table>") and text.count("<tr>") == 3
    assert "<b>800.0×</b>" in text and "<b>9.0×</b>" in text  # 40 / 0.05 and 45 / 5
    assert "4.95 ms" in text  # everything in the fast request but its SQL: 5 − 0.05
    assert "99.0%" in text or "99%" in text
    predicted = (40 + 4.95) / (0.05 + 4.95)
    assert f"**{predicted:.1f}×**" in text
    assert "10%" in text  # the empty route's share of the fast request: 0.5 / 5
    assert not re.search(r"\d\.\d{4,}", text), "numbers are rounded for prose"


def test_orm_ratio_times_the_strategies_at_a_simulated_round_trip() -> None:
    with make_demo_db(users=30, posts_per_user=3) as db:
        result = orm_ratio(db, 1.0, n=3)
    assert set(result.timings) == {"lazy", "selectinload"}
    assert result["lazy"].median_ms > 30 * 1.0  # 31 round trips of ≥ 1 ms each
    assert result.ratio > 3, result


def test_request_floor_is_a_positive_median_in_ms() -> None:
    floor = asyncio.run(request_floor_ms(n=10))
    assert 0 < floor < 1_000


def test_strategy_prose_quotes_the_tables_it_is_given() -> None:
    local = [{"strategy": "lazy", "queries": 101, "median ms": 20.0}, {"strategy": "selectinload", "queries": 2,
                                                                       "median ms": 10.0}]
    remote = [{"strategy": "lazy", "queries": 101, "median ms": 130.0},
              {"strategy": "selectinload", "queries": 2, "median ms": 13.0}]
    text = strategy_prose("SQLite", 0.02, local, remote)
    assert "**2.0×**" in text and "**10.0×**" in text and "101 bare round trips" in text


def test_wrapped_folds_long_lines_at_spaces_and_keeps_short_ones() -> None:
    from course_lib.lessons.l02_n_plus_one import users_statement, wrapped

    text = wrapped(users_statement("joinedload"))
    assert all(len(line) <= 100 for line in text.splitlines())
    assert " ".join(text.split()) == " ".join(str(users_statement("joinedload")).split())
    assert wrapped("short\nlines") == "short\nlines"
