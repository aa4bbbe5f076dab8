"""Demo databases: SQLAlchemy 2.0 typed models and fresh, deterministic, fast-to-build data sets."""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import itertools
import os
import random
import secrets
import shutil
import socket
import sqlite3
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Integer, String, create_engine, func, insert, select, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker
from sqlalchemy.pool import NullPool

from .settings import course_settings

OrmSession = Session  # inside DemoDB, `Session` names its sessionmaker field


__all__ = [
    "Base",
    "User",
    "Post",
    "Comment",
    "DemoDB",
    "make_demo_db",
    "fresh_engine",
    "drop_fresh_database",
    "copy_database",
    "temp_folder",
    "insert_in_batches",
    "bulk_load",
    "reset_id_sequences",
    "dialect",
    "require_driver",
    "thread_safe_connect_args",
]


class Base(AsyncAttrs, DeclarativeBase):
    """Declarative base of the course's demo models."""


class User(Base):
    """A user of the demo blog; `email` deliberately has no index (lesson 05 adds one)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    email: Mapped[str] = mapped_column(String(120))
    country: Mapped[str] = mapped_column(String(2))
    is_active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    posts: Mapped[list[Post]] = relationship(back_populates="author", order_by="Post.id")

    def __repr__(self) -> str:
        return f"User(id={self.id}, name={self.name!r})"


class Post(Base):
    """A blog post written by one user."""

    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(String(2000))
    likes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    author: Mapped[User] = relationship(back_populates="posts")
    comments: Mapped[list[Comment]] = relationship(back_populates="post", order_by="Comment.id")

    def __repr__(self) -> str:
        return f"Post(id={self.id}, user_id={self.user_id})"


class Comment(Base):
    """A comment on a post."""

    __tablename__ = "comments"

    id: Mapped[int] = mapped_column(primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id"))
    author_name: Mapped[str] = mapped_column(String(80))
    body: Mapped[str] = mapped_column(String(500))
    post: Mapped[Post] = relationship(back_populates="comments")

    def __repr__(self) -> str:
        return f"Comment(id={self.id}, post_id={self.post_id})"


_FIRST = ["Ada", "Alan", "Grace", "Linus", "Guido", "Margaret", "Ken", "Barbara", "Dennis", "Frances",
          "Edsger", "Radia", "Tim", "Katherine", "Donald", "Hedy", "John", "Sophie", "Yukihiro", "Anita"]
_LAST = ["Lovelace", "Turing", "Hopper", "Torvalds", "van Rossum", "Hamilton", "Thompson", "Liskov",
         "Ritchie", "Allen", "Dijkstra", "Perlman", "Berners-Lee", "Johnson", "Knuth", "Lamarr",
         "McCarthy", "Wilson", "Matsumoto", "Borg"]
_COUNTRIES = ["FR", "DE", "US", "JP", "BR", "IN", "NG", "GB", "ES", "CA"]
_WORDS = ("fast api async pool index cache query worker latency throughput session engine request "
          "response lifespan gzip health timeout cursor page offset keyset redis sqlite json").split()
_EPOCH = datetime(2024, 1, 1)

_TEMP_DIRS: list[Path] = []
_SERVER_DATABASES: dict[str, URL] = {}  # fresh database name -> URL of the server's maintenance database
_COUNTER = itertools.count(1)


def _cleanup() -> None:
    for path in _TEMP_DIRS:
        shutil.rmtree(path, ignore_errors=True)
    for name in list(_SERVER_DATABASES):
        _drop_server_database(name, at_exit=True)


atexit.register(_cleanup)


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]  # several machines may share a server


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _drop_orphans(conn: Any) -> None:
    """Drop databases this machine made for processes that died without cleaning up (a hard-killed kernel)."""
    for name in conn.exec_driver_sql("SELECT datname FROM pg_database WHERE datname LIKE %(p)s",
                                     {"p": f"lab_{_HOST}_%"}).scalars():
        parts = name.split("_")
        if len(parts) >= 3 and parts[2].isdigit() and not _pid_alive(int(parts[2])):
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fresh_server_database(url: str, echo: bool) -> Engine:
    """CREATE DATABASE with a unique name on the server `url` points at; return an engine on it."""
    admin_url = make_url(url)
    name = f"lab_{_HOST}_{os.getpid()}_{next(_COUNTER)}_{secrets.token_hex(3)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            if not _SERVER_DATABASES:  # whenever this process holds none: tidy up after dead processes
                _drop_orphans(conn)
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        admin.dispose()
    _SERVER_DATABASES[name] = admin_url
    return create_engine(admin_url.set(database=name), echo=echo)


def _drop_server_database(name: str, at_exit: bool = False) -> None:
    """DROP a database this process made; a failure is a warning (the next run's orphan sweep retries it)."""
    admin_url = _SERVER_DATABASES.pop(name, None)
    if admin_url is None:
        return
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except Exception as error:  # the server may already be gone at exit: nothing left to clean
        if not at_exit:
            warnings.warn(f"could not drop the course's database {name}: {type(error).__name__}: {error}; "
                          "it is dropped by the next run on this machine", RuntimeWarning, stacklevel=2)
    finally:
        admin.dispose()


def dialect() -> str:
    """The database the course runs on: 'sqlite' (default) or the dialect of `DATABASE_URL` (e.g. 'postgresql')."""
    url = course_settings().database_url
    return make_url(url).get_backend_name() if url else "sqlite"


def thread_safe_connect_args(database_url: str | URL) -> dict[str, Any]:
    """`connect_args` letting pooled connections move between threads: SQLite needs one, psycopg none."""
    return {"check_same_thread": False} if make_url(database_url).get_backend_name() == "sqlite" else {}


_DRIVER_MODULES = {"psycopg": "psycopg", "asyncpg": "asyncpg", "psycopg2": "psycopg2"}


def require_driver(database_url: str | URL) -> None:
    """Fail with a sentence (not an import traceback) when the URL's database driver is not installed."""
    url = make_url(database_url)
    module = _DRIVER_MODULES.get(url.get_driver_name())
    if module and importlib.util.find_spec(module) is None:
        raise RuntimeError(f"DATABASE_URL points at {url.get_backend_name()} through {module}, which is not installed "
                           "here: install the course's PostgreSQL drivers with `pip install -e '.[postgresql]'`, or "
                           "start the course with `DATABASE_URL=… ./course lab`, which installs them.")


def fresh_engine(echo: bool = False) -> tuple[Engine, Path | None]:
    """An engine on a brand-new, empty database: a SQLite file in its own temporary folder, or, when
    `DATABASE_URL` names a server (PostgreSQL), a new database created on it. Both are removed at exit."""
    url = course_settings().database_url
    if url and make_url(url).get_backend_name() != "sqlite":
        require_driver(url)
        return _fresh_server_database(url, echo), None
    engine, path = _new_sqlite_file()
    engine.echo = echo
    return engine, path


_SWEPT = False


def temp_folder(kind: str = "db") -> Path:
    """A new temporary folder removed at exit; folders left by dead processes (hard-killed kernels) are swept."""
    global _SWEPT
    if not _SWEPT:
        _SWEPT = True
        for old in Path(tempfile.gettempdir()).glob("fastapi-lab-*-*"):
            pid = old.name.split("-")[2]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"fastapi-lab-{os.getpid()}-{kind}-"))
    _TEMP_DIRS.append(folder)
    return folder


def _new_sqlite_file() -> tuple[Engine, Path]:
    path = temp_folder() / "demo.sqlite3"
    url = f"sqlite:///{path}"
    return create_engine(url, connect_args=thread_safe_connect_args(url)), path


def copy_database(source: Engine) -> tuple[Engine, Path | None]:
    """A new database with `source`'s rows and indexes, removed at exit like `fresh_engine`'s: SQLite, an online
    backup into a new file; PostgreSQL, `CREATE DATABASE … TEMPLATE` (planner statistics included)."""
    if source.dialect.name == "sqlite":
        engine, path = _new_sqlite_file()
        raw = source.raw_connection()
        try:
            target = sqlite3.connect(path)
            try:
                raw.driver_connection.backup(target)  # type: ignore[union-attr]
            finally:
                target.close()
        finally:
            raw.close()
        return engine, path
    admin_url = _SERVER_DATABASES.get(source.url.database or "") or source.url.set(database="postgres")
    name = f"lab_{_HOST}_{os.getpid()}_{next(_COUNTER)}_{secrets.token_hex(3)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        for attempt in range(50):
            source.dispose()  # a template must have no other session: close our own idle pooled connections
            try:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{source.url.database}"')
                break
            except OperationalError as error:  # "source database … is being accessed by other users"
                if "being accessed by other users" not in str(error) or attempt == 49:  # e.g. autovacuum
                    raise
                time.sleep(0.1)
    finally:
        admin.dispose()
    _SERVER_DATABASES[name] = admin_url
    return create_engine(source.url.set(database=name)), None


def drop_fresh_database(engine: Engine, path: Path | None = None) -> None:
    """Dispose of an engine from `fresh_engine` and delete its database (file or server database)."""
    engine.dispose()
    if path is not None:
        shutil.rmtree(path.parent, ignore_errors=True)
    elif engine.url.database in _SERVER_DATABASES:
        _drop_server_database(engine.url.database)


@dataclass
class DemoDB:
    """A fresh demo database: its engine, a session factory and the number of rows of each table."""

    engine: Engine
    Session: sessionmaker[OrmSession]  # the lessons' `db.Session()`; OrmSession is SQLAlchemy's Session class
    path: Path | None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The database URL (a file a server subprocess can open too)."""
        return self.engine.url.render_as_string(hide_password=False)

    def session(self) -> OrmSession:
        """Open a new ORM session (use it in a `with` block)."""
        return self.Session()

    def dependency(self) -> Callable[[], Iterator[OrmSession]]:
        """A FastAPI `yield` dependency that opens one session per request and closes it after."""

        def get_db() -> Iterator[OrmSession]:
            with self.Session() as session:
                yield session

        return get_db

    def close(self) -> None:
        """Dispose of the engine's connections and delete the database (its file, or its server database)."""
        drop_fresh_database(self.engine, self.path)

    def __enter__(self) -> DemoDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n:,} {table}" for table, n in self.counts.items())
        return f"DemoDB({sizes}; {self.engine.url.get_backend_name()})"


def _user_rows(n: int, rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for i in range(1, n + 1):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        rows.append({
            "id": i,
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower().replace(' ', '')}.{i}@example.com",
            "country": rng.choice(_COUNTRIES),
            "is_active": rng.random() < 0.9,
            "created_at": _EPOCH + timedelta(minutes=i),
        })
    return rows


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize()


def insert_in_batches(engine: Engine, table: Any, rows: Iterable[dict[str, Any]], batch: int = 20_000) -> int:
    """Insert rows (dicts) into a table in one transaction, `batch` rows per executemany; returns the count."""
    total = 0
    chunk: list[dict[str, Any]] = []
    with engine.begin() as conn:
        for row in rows:
            chunk.append(row)
            if len(chunk) >= batch:
                conn.execute(insert(table), chunk)
                total += len(chunk)
                chunk = []
        if chunk:
            conn.execute(insert(table), chunk)
            total += len(chunk)
    return total


def _copy_rows(engine: Engine, table: Any, rows: Iterable[dict[str, Any]]) -> int:
    """Stream rows (dicts) into a PostgreSQL table with `COPY … FROM STDIN` (psycopg 3's `cursor.copy`)."""
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        return 0
    columns = list(first)
    total = 0
    with engine.begin() as conn:
        raw = conn.connection.driver_connection  # the psycopg.Connection under SQLAlchemy's pool
        names = ", ".join(f'"{c}"' for c in columns)
        with raw.cursor() as cursor, cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:  # type: ignore[union-attr]
            for row in itertools.chain([first], rows):
                copy.write_row(tuple(row[c] for c in columns))
                total += 1
    return total


def reset_id_sequences(engine: Engine, *tables: str) -> None:
    """PostgreSQL: move each table's `id` sequence past the largest id (rows were written with explicit ids, so the
    next INSERT without one must not collide); other databases need nothing (SQLite takes max(rowid) + 1)."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        for table in tables:
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                              f"coalesce(max(id), 0) + 1, false) FROM {table}"))


def bulk_load(engine: Engine, table: Any, rows: Iterable[dict[str, Any]], *, batch: int = 20_000,
              analyze: bool = False) -> int:
    """Load rows (dicts with explicit ids) fast and leave the table ready to use; returns the count.

    PostgreSQL with psycopg: COPY; elsewhere executemany batches of `batch` rows. Then, on PostgreSQL, the id
    sequence moves past the loaded ids and, when `analyze`, ANALYZE refreshes the planner's statistics."""
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        total = _copy_rows(engine, table, rows)
    else:
        total = insert_in_batches(engine, table, rows, batch)
    if engine.dialect.name == "postgresql":
        reset_id_sequences(engine, table.name)
        if analyze:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql(f'ANALYZE "{table.name}"')
    return total


def make_demo_db(
    users: int = 100,
    posts_per_user: int = 10,
    comments_per_post: int = 0,
    *,
    seed: int = 0,
) -> DemoDB:
    """Build a fresh demo database (users → posts → comments) with deterministic fake data, in bulk."""
    if users < 0 or posts_per_user < 0 or comments_per_post < 0:
        raise ValueError("make_demo_db: sizes must be zero or positive")
    engine, path = fresh_engine()
    Base.metadata.create_all(engine)
    rng = random.Random(seed)
    counts = {"users": bulk_load(engine, User.__table__, _user_rows(users, rng))}

    def posts() -> Iterator[dict[str, Any]]:
        post_id = 0
        for user_id in range(1, users + 1):
            for _ in range(posts_per_user):
                post_id += 1
                yield {
                    "id": post_id,
                    "user_id": user_id,
                    "title": _sentence(rng, 5),
                    "body": _sentence(rng, 20),
                    "likes": rng.randrange(500),
                    "created_at": _EPOCH + timedelta(minutes=post_id * 7 % 100_003),
                }

    counts["posts"] = bulk_load(engine, Post.__table__, posts())

    def comments() -> Iterator[dict[str, Any]]:
        comment_id = 0
        for post_id in range(1, counts["posts"] + 1):
            for _ in range(comments_per_post):
                comment_id += 1
                yield {
                    "id": comment_id,
                    "post_id": post_id,
                    "author_name": rng.choice(_FIRST),
                    "body": _sentence(rng, 8),
                }

    counts["comments"] = bulk_load(engine, Comment.__table__, comments())
    return DemoDB(engine=engine, Session=sessionmaker(engine, expire_on_commit=False), path=path, counts=counts)


def row_count(engine: Engine, model: type[Base]) -> int:
    """Count the rows of one model's table."""
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0
