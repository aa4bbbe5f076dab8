"""The query counter counts exactly, lists SQL, adds simulated latency, and detaches after its block."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select
from sqlalchemy.orm import joinedload, selectinload

from course_lib import User, compare_sync, count_queries, make_demo_db, simulated_latency


@pytest.fixture(scope="module")
def db():
    with make_demo_db(users=25, posts_per_user=4) as demo:
        yield demo


def _touch_posts(db, *options) -> int:
    with db.session() as session:
        users = session.scalars(select(User).options(*options)).unique().all()
        return sum(len(u.posts) for u in users)


@pytest.mark.parametrize(("options", "expected"), [
    ((), 1 + 25),
    ((selectinload(User.posts),), 2),
    ((joinedload(User.posts),), 1),
])
def test_counts_exactly(db, options, expected):
    with count_queries(db.engine) as queries:
        assert _touch_posts(db, *options) == 100
    assert queries.count == expected
    assert len(queries.statements) == len(queries.durations_ms) == expected
    assert queries.statements[0].lstrip().upper().startswith("SELECT")


def test_listeners_removed_after_block(db):
    with count_queries(db.engine) as queries:
        _touch_posts(db, selectinload(User.posts))
    _touch_posts(db)
    assert queries.count == 2


def test_nested_counters_both_count(db):
    with count_queries(db.engine) as outer:
        with count_queries(db.engine) as inner:
            _touch_posts(db, selectinload(User.posts))
        _touch_posts(db, selectinload(User.posts))
    assert (inner.count, outer.count) == (2, 4)


def test_nested_counters_keep_their_own_clocks(db):
    """The outer block's simulated 3 ms round trip shows in its own times, never as a negative inner time."""
    with count_queries(db.engine, latency_ms=3) as outer:
        with count_queries(db.engine) as inner:
            _touch_posts(db, selectinload(User.posts))
    assert min(outer.durations_ms) >= 3 and min(inner.durations_ms) >= 0, (outer.durations_ms, inner.durations_ms)


def test_counts_statements_from_other_threads(db):
    with count_queries(db.engine) as queries:
        threads = [threading.Thread(target=_touch_posts, args=(db, selectinload(User.posts))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert queries.count == 8


def test_simulated_latency_makes_round_trips_cost(db):
    def plain() -> None:
        _touch_posts(db)

    def slow() -> None:
        with simulated_latency(db.engine, 2):
            _touch_posts(db)

    result = compare_sync({"slow": slow, "plain": plain}, n=3, warmup=1)
    # 26 statements × 2 ms = 52 ms added; the plain loop takes a few ms: a wide margin either way
    assert result.ratio > 3


def test_latency_counts_as_database_time(db):
    with count_queries(db.engine, latency_ms=2) as queries:
        _touch_posts(db, selectinload(User.posts))
    assert queries.count == 2
    assert queries.db_time_ms >= 2 * 2 * 0.9
    assert "2 ms simulated" in queries.summary()


def test_repr_and_html_list_the_sql(db):
    with count_queries(db.engine) as queries:
        _touch_posts(db)
    text, page = repr(queries), queries._repr_html_()
    assert text.startswith("26 queries")
    assert "… and 16 more" in text and "… and 16 more" in page
    assert "<table>" in page and "SELECT" in page


def test_rejects_what_is_not_an_engine():
    with pytest.raises(TypeError, match="Engine"):
        with count_queries("sqlite://"):
            pass
