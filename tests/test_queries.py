"""The query counter counts exactly, lists SQL, adds simulated latency, and detaches after its block."""

from __future__ import annotations

import sqlite3
import threading
from sqlite3 import connect as early_connect

import pytest
from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, joinedload, selectinload

from course_lib import User, compare_sync, count_queries, make_demo_db, simulated_latency
from course_lib.db import dialect
from course_lib.queries import _engine_statement, is_setup, observe_statements


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

    result = compare_sync({"slow": slow, "plain": plain}, n=5, warmup=1)
    # 26 statements × 2 ms = 52 ms added to each run, whatever the plain loop costs (a few ms in-process on
    # SQLite, 50-90 ms of real round trips on a busy PostgreSQL): every slow run pays it, the medians show it
    assert min(result["slow"].samples) * 1000 >= 26 * 2 * 0.95, result
    assert result["slow"].median_ms - result["plain"].median_ms > 26 * 2 * 0.5, result


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


# --- observe_statements: every statement that reaches the database, whoever opens the connection -------------

def _own_connection(demo):
    """A DB-API connection opened outside the DemoDB: sqlite3, or psycopg on a server."""
    url = demo.engine.url
    if url.get_backend_name() == "sqlite":
        return sqlite3.connect(url.database)
    import psycopg

    return psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                           dbname=url.database)


def test_observer_counts_like_the_engine_counter(db):
    for options, expected in (((), 26), ((selectinload(User.posts),), 2), ((joinedload(User.posts),), 1)):
        with observe_statements(db) as seen, count_queries(db.engine) as counted:
            assert _touch_posts(db, *options) == 100
        assert seen.count == counted.count == expected, options
        assert [s.split()[0] for s in seen.statements] == [s.split()[0] for s in counted.statements]


def test_observer_sees_an_engine_and_a_raw_connection_opened_in_the_block(db):
    with observe_statements(db) as seen:
        engine = create_engine(db.url)  # its first-connect probes are setup, not counted
        with Session(engine) as session:
            users = session.scalars(select(User)).all()
            assert sum(len(u.posts) for u in users) == 100  # 1 + 25 lazy loads
        engine.dispose()
        mark = seen.mark()
        conn = _own_connection(db)
        try:
            conn.execute("SELECT count(*) FROM posts").fetchall()
            conn.execute("SELECT 1").fetchall()  # a ping: setup
        finally:
            conn.close()
    assert seen.count == 26 + 1
    assert seen.since(mark) == ["SELECT count(*) FROM posts"]
    assert "observed" in seen.summary() and "FROM posts" in repr(seen)


@pytest.mark.skipif(dialect() != "sqlite", reason="sqlite3 specifics")
def test_observer_sees_connect_imported_early_and_attach(db, tmp_path):
    with observe_statements(db) as seen:
        conn = early_connect(db.engine.url.database)
        conn.execute("SELECT count(*) FROM users").fetchall()
        conn.close()
        other = sqlite3.connect(tmp_path / "elsewhere.sqlite3")
        other.execute("SELECT 1").fetchall()
        mark = seen.mark()
        other.execute(f"ATTACH DATABASE '{db.engine.url.database}' AS demo")
        other.execute("SELECT count(*) FROM demo.posts").fetchall()
        other.close()
    assert seen.statements[0] == "SELECT count(*) FROM users"
    assert seen.since(mark)[-1] == "SELECT count(*) FROM demo.posts"


def test_observer_keeps_other_databases_and_other_times_out(db):
    with make_demo_db(users=2, posts_per_user=1) as other:
        with observe_statements(db) as mine, observe_statements(other) as theirs:
            _touch_posts(db, selectinload(User.posts))
            with other.session() as session:
                session.scalars(select(User)).all()
        _touch_posts(db, selectinload(User.posts))  # after the block: not recorded
    assert (mine.count, theirs.count) == (2, 1)


def test_observer_counts_threads_and_removes_its_patches(db):
    import psycopg

    before = (sqlite3.connect, psycopg.Cursor.execute, psycopg.AsyncCursor.execute)
    with observe_statements(db) as seen:
        assert sqlite3.connect is not before[0] and psycopg.Cursor.execute is not before[1]
        threads = [threading.Thread(target=_touch_posts, args=(db, selectinload(User.posts))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert seen.count == 8
    assert (sqlite3.connect, psycopg.Cursor.execute, psycopg.AsyncCursor.execute) == before
    assert not event.contains(Engine, "before_cursor_execute", _engine_statement)


@pytest.mark.parametrize(("sql", "setup"), [
    ("BEGIN", True), ("COMMIT", True), ("PRAGMA read_uncommitted", True), ("SELECT 1", True),
    ("select pg_catalog.version()", True), ("show standard_conforming_strings", True),
    ("SELECT * FROM posts", False), ("select 1 union select id from posts", False),
    ("select pg_catalog.version() union select title from posts", False),
    ("SELECT 1;", True), ("SET search_path TO public; SELECT title FROM posts", False),
    ("BEGIN; SELECT * FROM posts WHERE user_id = 3", False),
])
def test_setup_statements_are_matched_exactly(sql, setup):
    assert is_setup(sql) is setup


def test_observer_refuses_a_private_in_memory_database():
    engine = create_engine("sqlite://")
    with pytest.raises(ValueError, match="in-memory"):
        with observe_statements(engine):
            pass


def test_observer_counts_executemany_once_per_parameter_set(db):
    with observe_statements(db) as seen:
        conn = _own_connection(db)
        try:
            if isinstance(conn, sqlite3.Connection):
                conn.executemany("UPDATE posts SET likes = likes WHERE id = ?", [(1,), (2,), (3,)])
                conn.commit()
            else:
                with conn.cursor() as cursor:
                    cursor.executemany("SELECT %s", iter([(1,), (2,), (3,)]), returning=True)
                    assert cursor.fetchone() == (1,)  # the parameters, consumed by the count, still all ran
                    cursor.executemany("SELECT %s", params_seq=[(4,)])
        finally:
            conn.close()
    assert seen.count == (3 if dialect() == "sqlite" else 4), seen.records
