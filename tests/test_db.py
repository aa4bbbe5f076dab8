"""Demo databases: fresh, deterministic, sized as asked, fast in bulk, removed on close."""

from __future__ import annotations

import os
from datetime import datetime

import pytest
from sqlalchemy import create_engine, func, select, text

from course_lib import Comment, Post, User, make_demo_db
from course_lib.db import dialect, row_count


def test_sizes_are_as_asked():
    with make_demo_db(users=7, posts_per_user=3, comments_per_post=2) as db:
        assert db.counts == {"users": 7, "posts": 21, "comments": 42}
        assert row_count(db.engine, User) == 7
        assert row_count(db.engine, Post) == 21
        assert row_count(db.engine, Comment) == 42
        assert "7 users" in repr(db)


def test_same_seed_same_data_other_seed_other_data():
    def snapshot(seed: int) -> list[tuple]:
        with make_demo_db(users=20, posts_per_user=2, seed=seed) as db, db.session() as session:
            return [tuple(r) for r in session.execute(select(User.name, User.email, User.country).order_by(User.id))]

    assert snapshot(1) == snapshot(1)
    assert snapshot(1) != snapshot(2)


def _server_databases(url) -> set[str]:
    engine = create_engine(url)
    with engine.connect() as conn:
        names = set(conn.scalars(text("SELECT datname FROM pg_database")))
    engine.dispose()
    return names


def test_each_database_is_fresh_and_close_removes_it():
    first, second = make_demo_db(users=1), make_demo_db(users=1)
    assert first.url != second.url
    if dialect() == "sqlite":
        assert first.path.exists()
        first.close()
        second.close()
        assert not first.path.exists() and not second.path.parent.exists()
    else:  # DATABASE_URL: a new database on the server each time, dropped on close
        names = {first.engine.url.database, second.engine.url.database}
        assert names <= _server_databases(first.engine.url)
        first.close()
        second.close()
        assert not names & _server_databases(os.environ["DATABASE_URL"])


def test_inserts_without_ids_continue_after_the_demo_rows():
    with make_demo_db(users=3, posts_per_user=1) as db, db.session() as session:
        session.add(Post(user_id=1, title="new", body="", likes=0, created_at=datetime(2025, 1, 1)))
        session.commit()
        assert session.scalar(select(func.max(Post.id))) == 4


def test_emails_are_unique_and_posts_belong_to_users():
    with make_demo_db(users=300, posts_per_user=2) as db, db.session() as session:
        assert session.scalar(select(func.count(func.distinct(User.email)))) == 300
        orphans = session.scalar(select(func.count()).select_from(Post).where(Post.user_id > 300))
        assert orphans == 0


def test_dependency_yields_a_working_session_and_closes_it():
    with make_demo_db(users=3) as db:
        dependency = db.dependency()()
        session = next(dependency)
        assert session.get(User, 2).id == 2
        assert session.in_transaction()
        with pytest.raises(StopIteration):
            next(dependency)
        assert not session.in_transaction()


def test_200k_rows_build_in_bulk():
    with make_demo_db(users=200_000, posts_per_user=0) as db:
        assert row_count(db.engine, User) == 200_000


def test_negative_sizes_are_refused():
    with pytest.raises(ValueError, match="positive"):
        make_demo_db(users=-1)


def test_databases_of_dead_processes_are_dropped():
    if dialect() == "sqlite":
        pytest.skip("server databases only: set DATABASE_URL to a PostgreSQL server")
    import subprocess

    from sqlalchemy.pool import NullPool

    from course_lib import db as db_module

    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = f"lab_{db_module._HOST}_{dead.pid}_1_dead00"
    admin = create_engine(os.environ["DATABASE_URL"], isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{orphan}"')
    db_module._SERVER_DATABASES.clear()  # as in a fresh process
    with make_demo_db(users=1):
        assert orphan not in _server_databases(os.environ["DATABASE_URL"])


def test_copy_database_has_the_rows_and_indexes_and_is_independent():
    from sqlalchemy import inspect

    from course_lib.db import copy_database, drop_fresh_database

    with make_demo_db(users=30, posts_per_user=2) as db:
        with db.engine.begin() as conn:
            conn.execute(text("CREATE INDEX ix_users_email ON users (email)"))
        engine, path = copy_database(db.engine)
        try:
            assert engine.url != db.engine.url
            assert row_count(engine, User) == 30 and row_count(engine, Post) == 60
            assert "ix_users_email" in {ix["name"] for ix in inspect(engine).get_indexes("users")}
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM posts"))
            assert row_count(db.engine, Post) == 60
        finally:
            drop_fresh_database(engine, path)


def test_temp_folders_of_dead_processes_are_swept(tmp_path, monkeypatch):
    import subprocess
    import tempfile

    from course_lib import db as db_module

    dead = subprocess.Popen(["true"])
    dead.wait()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    orphan = tmp_path / f"fastapi-lab-{dead.pid}-db-abc"
    mine = tmp_path / f"fastapi-lab-{os.getpid()}-db-def"
    orphan.mkdir()
    mine.mkdir()
    monkeypatch.setattr(db_module, "_SWEPT", False)
    made = db_module.temp_folder("test")
    assert not orphan.exists() and mine.exists()
    assert made.parent == tmp_path and made.name.startswith(f"fastapi-lab-{os.getpid()}-test-")


# --- one bulk loader, one SQLite thread-safety setting (issue 13) ---------------------------------------------

def _scratch_table():
    from sqlalchemy import Column, Integer, MetaData, String, Table

    return Table("scratch", MetaData(), Column("id", Integer, primary_key=True), Column("word", String(20)))


@pytest.mark.parametrize("rows", [0, 1, 5_001])
def test_bulk_load_loads_every_row_and_moves_the_id_sequence(rows):
    from course_lib.db import bulk_load, drop_fresh_database, fresh_engine
    from course_lib.queries import count_queries

    engine, path = fresh_engine()
    try:
        table = _scratch_table()
        table.metadata.create_all(engine)
        with count_queries(engine) as log:
            loaded = bulk_load(engine, table, ({"id": i, "word": f"w{i}"} for i in range(1, rows + 1)), batch=2_000,
                               analyze=True)
        assert loaded == rows
        inserts = [s for s in log.statements if s.lstrip().upper().startswith("INSERT")]
        if engine.dialect.name == "postgresql":
            assert inserts == []  # COPY, not INSERT statements
            if rows:
                assert any("setval" in s for s in log.statements)
        else:
            assert len(inserts) == -(-rows // 2_000)  # one executemany per batch of 2,000
        with engine.begin() as conn:
            assert conn.scalar(select(func.count()).select_from(table)) == rows
            new_id = conn.execute(table.insert().values(word="new").returning(table.c.id)).scalar_one()
        assert new_id == rows + 1  # PostgreSQL: the sequence was moved past the loaded ids
    finally:
        drop_fresh_database(engine, path)


def test_one_thread_safety_setting_for_sqlite_and_none_for_servers():
    import threading

    from course_lib.db import drop_fresh_database, fresh_engine, thread_safe_connect_args

    assert thread_safe_connect_args("sqlite:///x.db") == {"check_same_thread": False}
    assert thread_safe_connect_args("postgresql+psycopg://u@h/db") == {}
    engine, path = fresh_engine()
    try:
        with engine.connect() as conn:  # a pooled connection made here is used from another thread next
            conn.execute(text("SELECT 1"))
        seen: list[int] = []
        def use() -> None:
            with engine.connect() as conn:
                seen.append(conn.execute(text("SELECT 1")).scalar())

        worker = threading.Thread(target=use)
        worker.start()
        worker.join()
        assert seen == [1]
    finally:
        drop_fresh_database(engine, path)


def test_lesson_05s_big_tables_leave_the_id_sequences_ready():
    """Lesson 05 builds its tables inside the database with explicit ids: the next row added without one fits."""
    from course_lib.lessons.l05_indexes import make_posts_db

    with make_posts_db(30, 2) as db, db.session() as session:
        user = User(name="New", email="new@example.com", country="FR", is_active=True, created_at=datetime(2025, 1, 1))
        session.add(user)
        session.flush()
        session.add(Post(user_id=user.id, title="t", body="b", likes=0, created_at=datetime(2025, 1, 1)))
        session.flush()
        assert user.id == 31 and session.scalar(select(func.max(Post.id))) == 61
        session.rollback()


def test_a_postgresql_url_without_its_driver_says_how_to_install_it(monkeypatch):
    """The PostgreSQL drivers are an extra: a DATABASE_URL that needs a missing one gets a sentence, not a traceback."""
    import importlib.util

    from course_lib import db

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "asyncpg" else real(name, *a))
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[postgresql\]'"):
        db.require_driver("postgresql+asyncpg://user@127.0.0.1/x")
    db.require_driver("sqlite:///x.db")  # SQLite's driver is Python's own
    db.require_driver("postgresql+psycopg://user@127.0.0.1/x")  # installed with the test extra
