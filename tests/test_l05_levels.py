"""Lesson 05's measuring helpers: the lookup as the SQL alone (one held connection) and through the endpoint."""

from __future__ import annotations

import asyncio

from course_lib.lessons.l05_indexes import (
    add_index,
    clone_db,
    emails_to_look_up,
    held_lookup,
    lookup_levels,
    make_users_db,
)


def test_held_lookup_holds_one_connection_and_returns_it() -> None:
    with make_users_db(2_000) as db:
        emails = emails_to_look_up(2_000, 8)
        with held_lookup(db, emails) as lookup:
            for _ in range(10):
                lookup()
            assert db.engine.pool.checkedout() == 1
        assert db.engine.pool.checkedout() == 0


def test_lookup_levels_shows_both_levels_side_by_side() -> None:
    plain = make_users_db(20_000)
    indexed = clone_db(plain)
    add_index(indexed, "users", "email")
    try:
        text = asyncio.run(lookup_levels(plain, indexed, emails_to_look_up(20_000), n=5))
    finally:
        plain.close()
        indexed.close()
    assert text.startswith("<table>") and "20,000 users" in text
    assert "the SQL alone (raw " in text and "the endpoint, in-process" in text
