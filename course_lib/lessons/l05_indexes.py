"""Lesson 05 (indexes): fast big tables, query plans of SQLite and PostgreSQL parsed into one typed plan (the core's
`course_lib.plans`, re-exported here), and the index exercise."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import (
    Index,
    MetaData,
    Table,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.schema import CreateIndex
from sqlalchemy.sql import Executable

from ..bench_rows import BenchRow
from ..client import app_client
from ..db import (
    Base,
    DemoDB,
    Post,
    User,
    copy_database,
    dialect,
    drop_fresh_database,
    fresh_engine,
    make_demo_db,
    reset_id_sequences,
)
from ..grading import Checking, exercise
from ..plans import EXPLAINERS, PlanStep, QueryPlan, explain, parse_postgresql_plan, parse_sqlite_plan
from ..settings import course_settings
from ..timing import compare, compare_sync

__all__ = [
    "PlanStep", "QueryPlan", "explain", "parse_sqlite_plan", "parse_postgresql_plan", "EXPLAINERS",
    "make_users_db", "make_posts_db", "clone_db", "add_index", "drop_indexes", "index_ddl",
    "email_of", "emails_to_look_up", "insert_users", "make_lookup_app", "table_indexes", "analyze",
    "email_lookup", "held_lookup", "lookup_levels", "insert_batches", "lookup_ratio", "WRITE_COST_INDEXES", "write_cost_ratio", "composite_ratio",
    "SHOP_QUERIES", "shop_queries", "grading_rows", "fill_orders", "make_orders_db", "ShopReport", "inspect_shop_model",
    "bench", "verdict", "driver_name", "TOP_N_QUERIES", "discard",
]


# --------------------------------------------------------------------------------------------------------------
# Big tables, built in SQL inside the database (SQLite: a recursive CTE; PostgreSQL: generate_series), so
# 200k users take well under a second and no Python object is made per row
# --------------------------------------------------------------------------------------------------------------

_FIRST_NAMES = "ada  alan gracelinusguidoken  radiahedy anitabob  "  # ten 5-character slots


def email_of(i: int) -> str:
    """The email of user `i` in a table built by `make_users_db` (so a lesson can look real users up)."""
    slot = (i * 7) % 10
    return f"{_FIRST_NAMES[5 * slot:5 * slot + 5].rstrip()}.{i}@example.com"


_USERS_SQL = """
WITH RECURSIVE seq(i) AS (SELECT :start UNION ALL SELECT i + 1 FROM seq WHERE i < :stop)
INSERT INTO users (id, name, email, country, is_active, created_at)
SELECT i,
       'User ' || i,
       rtrim(substr(:names, 1 + 5 * ((i * 7) % 10), 5)) || '.' || i || '@example.com',
       substr('FRDEUSJPBRINNGGBESCA', 1 + 2 * ((i * 3) % 10), 2),
       (i % 10) != 0,
       datetime(1704067200 + 60 * i, 'unixepoch')
FROM seq
"""

_PG_USERS_SQL = """
INSERT INTO users (id, name, email, country, is_active, created_at)
SELECT i,
       'User ' || i,
       rtrim(substr(CAST(:names AS text), CAST(1 + 5 * ((i * 7) % 10) AS integer), 5)) || '.' || i || '@example.com',
       substr('FRDEUSJPBRINNGGBESCA', CAST(1 + 2 * ((i * 3) % 10) AS integer), 2),
       (i % 10) <> 0,
       timestamp '2024-01-01 00:00:00' + i * interval '1 minute'
FROM generate_series(CAST(:start AS bigint), CAST(:stop AS bigint)) AS i
"""

_POSTS_SQL = """
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :n)
INSERT INTO posts (id, user_id, title, body, likes, created_at)
SELECT i, 1 + (i - 1) % :users, 'Post ' || i, 'Body of post ' || i, (i * 37) % 500,
       datetime(1704067200 + 60 * ((i * 7919) % :n), 'unixepoch')
FROM seq
"""


_PG_POSTS_SQL = """
INSERT INTO posts (id, user_id, title, body, likes, created_at)
SELECT i, 1 + (i - 1) % CAST(:users AS bigint), 'Post ' || i, 'Body of post ' || i, (i * 37) % 500,
       timestamp '2024-01-01 00:00:00' + ((i * 7919) % CAST(:n AS bigint)) * interval '1 minute'
FROM generate_series(1, CAST(:n AS bigint)) AS i
"""


def _sql_for(engine: Engine, sqlite_sql: str, postgresql_sql: str) -> str:
    name = engine.dialect.name
    if name == "sqlite":
        return sqlite_sql
    if name == "postgresql":
        return postgresql_sql
    raise NotImplementedError(f"lesson 05 builds its tables in SQLite or PostgreSQL, not {name!r}")


def analyze(engine: Engine, *tables: str) -> None:
    """PostgreSQL only: ANALYZE then VACUUM after a bulk load, as a deployment would; SQLite: nothing to do.

    ANALYZE gives the planner the table's size and value counts (without them it may ignore an index). VACUUM marks
    pages all-visible, which index-only scans need (else they visit the table for every row). It can only do so once
    the load's commit is flushed to the WAL: with `synchronous_commit = off` (throwaway test clusters) it may not be
    yet, so ANALYZE runs first with synchronous commit on — its own commit flushes the WAL up to and past the load."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("SET synchronous_commit = on")
        try:
            for table in tables:
                conn.exec_driver_sql(f'ANALYZE "{table}"')
                conn.exec_driver_sql(f'VACUUM "{table}"')
        finally:
            conn.exec_driver_sql("RESET synchronous_commit")


def insert_users(db: DemoDB, start: int, count: int) -> None:
    """Insert users `start` … `start + count - 1` in one statement (their emails follow `email_of`)."""
    if count <= 0:
        return
    with db.engine.begin() as conn:
        conn.execute(text(_sql_for(db.engine, _USERS_SQL, _PG_USERS_SQL)),
                     {"start": start, "stop": start + count - 1, "names": _FIRST_NAMES})
    db.counts["users"] = db.counts.get("users", 0) + count


def make_users_db(n: int, indexes: Sequence[str | Sequence[str]] = ()) -> DemoDB:
    """A fresh demo database holding `n` users (no posts), plus the listed indexes on `users`."""
    db = make_demo_db(users=0, posts_per_user=0)
    insert_users(db, 1, n)
    reset_id_sequences(db.engine, "users")  # PostgreSQL: a user added without an id gets n + 1
    analyze(db.engine, "users")
    for columns in indexes:
        add_index(db, "users", columns)
    return db


def make_posts_db(users: int, posts_per_user: int, indexes: Sequence[str | Sequence[str]] = ()) -> DemoDB:
    """A fresh demo database with `users` users and their posts (spread through the table, dates shuffled)."""
    db = make_users_db(users)
    n = users * posts_per_user
    if n:
        with db.engine.begin() as conn:
            conn.execute(text(_sql_for(db.engine, _POSTS_SQL, _PG_POSTS_SQL)), {"n": n, "users": users})
        reset_id_sequences(db.engine, "posts")
        analyze(db.engine, "posts")
    db.counts["posts"] = n
    for columns in indexes:
        add_index(db, "posts", columns)
    return db


def clone_db(db: DemoDB) -> DemoDB:
    """A copy of a demo database (SQLite: online backup into a new file; PostgreSQL: CREATE DATABASE … TEMPLATE):
    same rows, same indexes."""
    engine, path = copy_database(db.engine)
    return DemoDB(engine=engine, Session=sessionmaker(engine, expire_on_commit=False), path=path,
                  counts=dict(db.counts))


def _index_for(db: DemoDB, table_name: str, columns: str | Sequence[str], name: str | None) -> Index:
    cols = [columns] if isinstance(columns, str) else list(columns)
    # a private copy of the table: the course's shared models (User, Post) never get the index attached
    table = Base.metadata.tables[table_name].to_metadata(MetaData())
    return Index(name or f"ix_{table_name}_{'_'.join(cols)}", *(table.c[c] for c in cols))


def add_index(db: DemoDB, table_name: str, columns: str | Sequence[str], name: str | None = None) -> float:
    """CREATE INDEX on one or more columns of a demo table; returns the seconds it took."""
    index = _index_for(db, table_name, columns, name)
    start = time.perf_counter()
    index.create(db.engine)
    return time.perf_counter() - start


def index_ddl(db: DemoDB, table_name: str, columns: str | Sequence[str], name: str | None = None) -> str:
    """The CREATE INDEX statement `add_index` would run, as text."""
    return str(CreateIndex(_index_for(db, table_name, columns, name)).compile(db.engine)).strip()


def drop_indexes(db: DemoDB, table_name: str) -> list[str]:
    """Drop every declared index of a table (not the primary key); returns their names."""
    names = [ix["name"] for ix in inspect(db.engine).get_indexes(table_name) if ix["name"]]
    with db.engine.begin() as conn:
        for name in names:
            conn.exec_driver_sql(f'DROP INDEX "{name}"')
    return names


def emails_to_look_up(n_users: int, count: int = 64) -> list[str]:
    """`count` emails of existing users spread over the whole table (a lookup loop cycles through them)."""
    step = max(1, n_users // count)
    return [email_of(1 + (k * step + k * 7) % n_users) for k in range(count)]


def make_lookup_app(db: DemoDB) -> FastAPI:
    """An app with `GET /users/by-email?email=…`, the lookup the lesson times with and without an index."""
    app = FastAPI(title="Lookup by email")
    get_db = db.dependency()

    @app.get("/users/by-email")
    def by_email(email: str, session: Session = Depends(get_db)) -> dict[str, Any]:
        user = session.scalars(select(User).where(User.email == email)).one_or_none()
        if user is None:
            raise HTTPException(status_code=404, detail="no user with that email")
        return {"id": user.id, "name": user.name, "email": user.email}

    return app


# --------------------------------------------------------------------------------------------------------------
# The exercise: an orders table, the queries the shop runs, and a grader that reads their plans
# --------------------------------------------------------------------------------------------------------------

ORDER_COLUMNS = ("id", "customer_email", "store_id", "is_gift", "total_cents", "created_at")
GRADING_ROWS = {"sqlite": 60_000, "postgresql": 200_000}


def grading_rows() -> int:
    """Orders the grader builds: 60k on SQLite; 200k on PostgreSQL, whose every query also pays a round trip over a
    socket (≈0.3 ms here) that no index removes, so the table must be larger for the scan to dominate."""
    return GRADING_ROWS.get(dialect(), GRADING_ROWS["postgresql"])
STORES = 50
CUSTOMERS = 20_000


def shop_queries(orders: Table, email: str = "customer42@example.com", store: int = 7) -> dict[str, Executable]:
    """The three queries the shop's endpoints run against the `orders` table."""
    c = orders.c
    return {
        "order history": select(orders).where(c.customer_email == email).order_by(c.id),
        "store feed": select(orders).where(c.store_id == store).order_by(c.created_at.desc()).limit(20),
        "gift orders in a store": select(func.count()).select_from(orders)
        .where(c.store_id == store, c.is_gift.is_(True)),
    }


SHOP_QUERIES = {
    "order history": "SELECT * FROM orders WHERE customer_email = :email ORDER BY id",
    "store feed": "SELECT * FROM orders WHERE store_id = :store ORDER BY created_at DESC LIMIT 20",
    "gift orders in a store": "SELECT count(*) FROM orders WHERE store_id = :store AND is_gift IS true",
}

_ORDERS_SQL = """
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :n)
INSERT INTO orders (id, customer_email, store_id, is_gift, total_cents, created_at)
SELECT i, 'customer' || ((i * 7919) % :customers) || '@example.com', i % :stores, i % 2,
       100 + (i * 37) % 20000, datetime(1704067200 + 60 * ((i * 104729) % :n), 'unixepoch')
FROM seq
"""


_PG_ORDERS_SQL = """
INSERT INTO orders (id, customer_email, store_id, is_gift, total_cents, created_at)
SELECT i, 'customer' || ((i * 7919) % CAST(:customers AS bigint)) || '@example.com', i % CAST(:stores AS bigint),
       i % 2 = 1, 100 + (i * 37) % 20000,
       timestamp '2024-01-01 00:00:00' + ((i * 104729) % CAST(:n AS bigint)) * interval '1 minute'
FROM generate_series(1, CAST(:n AS bigint)) AS i
"""


def fill_orders(engine: Engine, n: int | None = None) -> None:
    """Fill `orders`: n / CUSTOMERS orders per email (3 on SQLite, 10 on PostgreSQL), STORES stores, half gifts."""
    n = grading_rows() if n is None else n
    with engine.begin() as conn:
        conn.execute(text(_sql_for(engine, _ORDERS_SQL, _PG_ORDERS_SQL)),
                     {"n": n, "customers": CUSTOMERS, "stores": STORES})
    analyze(engine, "orders")


def make_orders_db(table: Table, n: int | None = None) -> tuple[Engine, Table]:
    """A fresh database holding a private copy of `table` (with its indexes), filled with `n` orders."""
    engine, _ = fresh_engine()
    copy = table.to_metadata(MetaData())
    try:
        copy.metadata.create_all(engine)
        fill_orders(engine, n)
    except BaseException:
        discard(engine)
        raise
    return engine, copy


def _plain_orders_table() -> Table:
    from sqlalchemy import Boolean, Column, DateTime, Integer, String

    return Table(
        "orders", MetaData(),
        Column("id", Integer, primary_key=True), Column("customer_email", String(120), nullable=False),
        Column("store_id", Integer, nullable=False), Column("is_gift", Boolean, nullable=False),
        Column("total_cents", Integer, nullable=False), Column("created_at", DateTime, nullable=False),
    )


@dataclass
class ShopReport:
    """What the grader saw for a model: its indexes, each query's plan, and the lookup speed-up."""

    indexes: dict[str, list[str]] = field(default_factory=dict)
    plans: dict[str, QueryPlan] = field(default_factory=dict)
    rows: int = 0


def table_indexes(engine: Engine, table: str) -> dict[str, list[str]]:
    """Every index the database keeps on `table` except the primary key's, declared or implied by a UNIQUE
    constraint, with its columns in order (`inspect(engine).get_indexes`, on any dialect)."""
    kw: dict[str, Any] = {"include_auto_indexes": True} if engine.dialect.name == "sqlite" else {}
    found: dict[str, list[str]] = {}
    for index in inspect(engine).get_indexes(table, **kw):
        columns = index.get("column_names") or []
        found[str(index["name"])] = [c if c is not None else "<expression>" for c in columns]
    return found


def _table_of(model: Any) -> Table:
    table = getattr(model, "__table__", model)
    if not isinstance(table, Table):
        raise TypeError
    return table


def inspect_shop_model(model: Any, n: int | None = None) -> tuple[ShopReport, Engine, Table]:
    """Build the model's table in a fresh database, fill it, and read its indexes and the shop queries' plans."""
    engine, table = make_orders_db(_table_of(model), n)
    report = ShopReport(indexes=table_indexes(engine, "orders"), rows=grading_rows() if n is None else n)
    for name, statement in shop_queries(table).items():
        report.plans[name] = explain(engine, statement)
    return report, engine, table


def _time_query(conn: Connection, table: Table, name: str) -> Callable[[], None]:
    """One shop query to time on an open connection (the query's cost, not the pool's), a different customer and
    store on each call."""
    variants = [shop_queries(table, email=f"customer{(k * 1237) % CUSTOMERS}@example.com", store=k % STORES)[name]
                for k in range(16)]
    turn = [0]

    def run() -> None:
        turn[0] += 1
        conn.execute(variants[turn[0] % len(variants)]).all()

    return run


def discard(engine: Engine) -> None:
    """Dispose of an engine from `make_orders_db` and delete its database now (SQLite file or PostgreSQL database)."""
    path = Path(engine.url.database) if engine.dialect.name == "sqlite" and engine.url.database else None
    drop_fresh_database(engine, path)


def _columns_text(columns: Sequence[str]) -> str:
    return f"({', '.join(columns)})"


def _reject_redundant(checking: Checking, indexes: Mapping[str, list[str]]) -> None:
    """Fail on two indexes with the same columns, or one whose columns start another (the longer one serves both)."""
    names = sorted(indexes)
    for name in names:
        for other in names:
            if other == name:
                continue
            mine, theirs = indexes[name], indexes[other]
            if mine == theirs and name < other:
                checking.fail(f"{name} and {other} are the same index, both on {_columns_text(mine)}: the database "
                              "keeps two copies, pays for both on every insert, and uses one. Drop one of them.")
            if len(mine) < len(theirs) and theirs[: len(mine)] == mine:
                checking.fail(f"{name} {_columns_text(mine)} is the start of {other} {_columns_text(theirs)}: any "
                              f"lookup on {_columns_text(mine)} can use {other} just as well, so {name} only adds "
                              "work to every insert. Drop it.")


USE_VARIANTS = 3  # customers and stores each query is explained with, to see every index it might choose


def _reject_unused(checking: Checking, engine: Engine, table: Table, indexes: Mapping[str, list[str]]) -> None:
    """Fail on a declared index that no shop query's plan uses (explained with several customers and stores)."""
    used: dict[str, set[str]] = {}
    for k in range(USE_VARIANTS):
        variant = shop_queries(table, email=f"customer{(k * 4391 + 42) % CUSTOMERS}@example.com",
                               store=(7 + 13 * k) % STORES)
        for query, statement in variant.items():
            for listed in explain(engine, statement).indexes:
                for index in listed.split(", "):  # a bitmap scan over several indexes lists them all
                    used.setdefault(index, set()).add(query)
    unused = [name for name in indexes if name not in used]
    if unused:
        by_query = "; ".join(f"{q!r} uses {', '.join(sorted(i for i, qs in used.items() if q in qs)) or 'no index'}"
                             for q in SHOP_QUERIES)
        name = unused[0]
        checking.fail(f"{name} {_columns_text(indexes[name])} is used by none of the shop's three queries: their plans "
                      f"(explained for {USE_VARIANTS} customers and stores) never chose it ({by_query}). The workload "
                      "is exactly these queries, so this index is useless: every insert and update still pays to "
                      "maintain it, and it takes disk. Drop it."
                      + (f" Also unused: {', '.join(unused[1:])}." if len(unused) > 1 else ""))


MIN_SPEEDUP = 4.0
COUNT_QUERIES = ("gift orders in a store",)  # reads no row: an index holding its columns answers it (covering)
TOP_N_QUERIES = ("store feed",)  # the shop queries with ORDER BY … LIMIT: a sort there reads every matching row


@exercise(
    "05.declare-indexes",
    title="Index what the shop queries (and nothing useless)",
    expects="a SQLAlchemy model class `Order` (the starter's columns, plus your indexes)",
    hints=(
        "Look at each query's WHERE and ORDER BY, and at its plan: `inspect_shop_model(Order)` prints them for your "
        "model. SCAN means the whole table is read, USE TEMP B-TREE (PostgreSQL: Sort) that rows are sorted after "
        "being found, COVERING INDEX (Index Only Scan) that the index alone answered. Then look at your indexes: "
        "each must be chosen by at least one plan, and none may be the start of another.",
        "One column: `mapped_column(..., index=True)`. Several, in order: `__table_args__ = (Index('name', 'col_a', "
        "'col_b'),)`. Equality columns first, then the ORDER BY column, so rows leave the index already sorted; an "
        "index holding every column a count reads answers it alone. Half the orders are gifts: a column with two "
        "values cannot lead an index. No index `unique=True`: a customer has several orders.",
        "Shape (fill the gaps): the email column's `mapped_column(String(120), ...)` takes one more keyword, and "
        "the class gets a tuple of `Index(<name>, 'store_id', <?>)` entries. Which column follows store_id in "
        "each, how many do you need, and could one index serve both store queries?",
    ),
    timeout=120,
)
def check_declare_indexes(model: Any, checking: Checking) -> str:
    """Plans of the three shop queries (60k orders; 200k on PostgreSQL), no index led by is_gift, none duplicated or
    the start of another, each used by some query's plan, each query's speed-up, and the count answered from an
    index alone."""
    try:
        table = _table_of(model)
    except TypeError:
        checking.fail(f"expected a model class such as `Order` (with a `__table__`), got {type(model).__name__}: "
                      "pass the class itself, e.g. `check('05.declare-indexes', Order)`.")
        raise AssertionError("unreachable") from None  # fail() raises; this line is for type checkers
    missing = [c for c in ORDER_COLUMNS if c not in table.c]
    checking.expect(table.name == "orders" and not missing,
                    f"your model's table is {table.name!r} with columns {list(table.c.keys())}; the grader "
                    f"needs table 'orders' with the starter's columns {list(ORDER_COLUMNS)} "
                    f"(missing: {missing}). Keep the columns, only add indexes.")
    try:
        report, engine, learner_table = inspect_shop_model(model)
    except IntegrityError as error:
        why = ("An email appears on several orders and a store has many: an index there must not be "
               "`unique=True`." if "unique" in str(error.orig).lower() else
               "Keep the starter's columns; a column you add needs a default or `nullable=True`.")
        checking.fail(f"your table refused the shop's data: {str(error.orig).strip().rstrip('.')}. {why}")
        raise AssertionError("unreachable") from None
    except SQLAlchemyError as error:
        checking.fail(f"your table could not be created or filled: {type(error).__name__}: "
                      f"{str(error).splitlines()[0][:200]}")
        raise AssertionError("unreachable") from None
    checking.record("indexes", len(report.indexes))
    checking.record("database", engine.dialect.name)
    checking.record("orders", report.rows)
    listed = ", ".join(f"{n}({', '.join(c)})" for n, c in report.indexes.items()) or "none"
    try:
        for name, plan in report.plans.items():
            checking.expect(not plan.scanned_tables,
                            f"query {name!r} ({SHOP_QUERIES[name]}) reads the whole orders table: plan "
                            f"`{plan}`. Your indexes: {listed}.")
            # a sort matters where the query keeps the first rows (LIMIT): the database must then find *every*
            # matching row and sort them to keep 20, instead of reading 20 index entries in order and stopping.
            # Sorting a customer's 3 orders by id costs nothing (PostgreSQL always plans that sort).
            checking.expect(name not in TOP_N_QUERIES or not plan.sorts,
                            f"query {name!r} ({SHOP_QUERIES[name]}) finds its rows through an index but then "
                            f"sorts them itself: plan `{plan}`. Your indexes: {listed}.")
            checking.expect(plan.searches_index("orders"),
                            f"query {name!r} does not search through an index: plan `{plan}`. Your indexes: {listed}.")
        useless = [n for n, cols in report.indexes.items() if cols and cols[0] == "is_gift"]
        checking.expect(not useless,
                        f"every query uses an index, but {', '.join(useless)} starts with is_gift: a column with two "
                        "values, each on half the orders. It cannot narrow a lookup, and every insert pays to "
                        "maintain it. Drop it (is_gift may *follow* another column in an index).")
        _reject_redundant(checking, report.indexes)
        _reject_unused(checking, engine, learner_table, report.indexes)
        baseline_engine, baseline_table = make_orders_db(_plain_orders_table())
        try:
            with baseline_engine.connect() as plain_conn, engine.connect() as learner_conn:
                timed = {name: compare_sync({"no index": _time_query(plain_conn, baseline_table, name),
                                             "yours": _time_query(learner_conn, learner_table, name)},
                                            n=10, warmup=1) for name in report.plans}
            for name, plan in report.plans.items():
                result = timed[name]
                checking.record(f"{name} speedup", round(result.ratio, 1))
                covering = any(step.covering for step in plan.steps)
                advice = "" if covering else (
                    " The plan uses an index but not a COVERING one (an index-only scan): for each row the index "
                    "finds, the database still "
                    "reads the table row to check the other columns. An index that holds every column the query "
                    "filters on answers it from the index alone.")
                checking.expect(result.ratio >= MIN_SPEEDUP,
                                f"query {name!r} ({SHOP_QUERIES[name]}) uses `{plan}` but ran only "
                                f"{result.ratio:.1f}× faster than with no index ({result['yours'].median_ms:.2f} ms "
                                f"vs {result['no index'].median_ms:.2f} ms, median of 10 on {report.rows:,} "
                                f"orders); expected ≥ {MIN_SPEEDUP:g}×.{advice}")
                # a count reads no row: an index holding every column it filters on answers it alone. SQLite's
                # lookups are cheap enough that the ratio above already fails a non-covering index (≈1.6×), but
                # PostgreSQL's bitmap scan of a store's rows can pass it on a lucky run: the plan decides.
                checking.expect(name not in COUNT_QUERIES or covering,
                                f"query {name!r} ({SHOP_QUERIES[name]}) ran {result.ratio:.1f}× faster than with no "
                                f"index, but through `{plan}`: the index finds the store's rows and the database "
                                f"then reads each row from the table to test is_gift. Expected the count answered "
                                f"from the index alone (SQLite: COVERING INDEX; PostgreSQL: Index Only Scan).{advice}")
        finally:
            discard(baseline_engine)
    finally:
        discard(engine)
    used = sorted({i for p in report.plans.values() for i in p.indexes})
    slowest = min(v for k, v in checking.figures.items() if k.endswith("speedup"))
    return (f"every query searches an index ({', '.join(used)}), every index is used and none is redundant or led "
            f"by is_gift, each query ≥ {slowest:g}× faster "
            f"on {report.rows:,} orders ({checking.figures['database']})")


# --------------------------------------------------------------------------------------------------------------
# Benchmark rows
# --------------------------------------------------------------------------------------------------------------

def email_lookup(db: DemoDB, emails: Sequence[str], raw: bool = False) -> Callable[[], None]:
    """A lookup to time: each call finds the next user of `emails` by email (ORM select, or the raw DB-API driver:
    sqlite3 or psycopg)."""
    turn = [0]
    sql = "SELECT * FROM users WHERE email = " + ("?" if db.engine.dialect.paramstyle == "qmark" else "%s")

    def raw_call() -> None:
        turn[0] += 1
        connection = db.engine.raw_connection()  # from the engine's pool, as the ORM gets it
        try:
            cursor = connection.cursor()
            cursor.execute(sql, (emails[turn[0] % len(emails)],))
            cursor.fetchall()
        finally:
            connection.close()

    def orm_call() -> None:
        turn[0] += 1
        with db.session() as session:  # one session per lookup, as one per request in an app
            session.scalars(select(User).where(User.email == emails[turn[0] % len(emails)])).one()

    return raw_call if raw else orm_call


@contextmanager
def held_lookup(db: DemoDB, emails: Sequence[str]) -> Iterator[Callable[[], None]]:
    """The SQL alone: each call runs the next email's `SELECT … WHERE email = ?` through the raw DB-API driver on one
    connection held for the whole block (as a request holds one), closed after it."""
    turn = [0]
    sql = "SELECT * FROM users WHERE email = " + ("?" if db.engine.dialect.paramstyle == "qmark" else "%s")
    connection = db.engine.raw_connection()
    try:
        cursor = connection.cursor()

        def call() -> None:
            turn[0] += 1
            cursor.execute(sql, (emails[turn[0] % len(emails)],))
            cursor.fetchall()

        yield call
    finally:
        connection.close()


async def lookup_levels(plain: DemoDB, indexed: DemoDB, emails: Sequence[str], n: int = 30) -> str:
    """The email lookup without / with the index, measured now at two levels: the SQL alone (raw driver, one held
    connection) and `GET /users/by-email` in-process, side by side with the fixed cost of a request, as Markdown."""
    from .l02_n_plus_one import levels_markdown, request_floor_ms

    with held_lookup(plain, emails) as scan, held_lookup(indexed, emails) as search:
        sql = compare_sync({"no index": scan, "index": search}, n=n, warmup=3)
    async with app_client(make_lookup_app(plain)) as slow, app_client(make_lookup_app(indexed)) as fast:
        turn = iter(range(10**9))
        http = await compare({
            "no index": lambda: slow.get("/users/by-email", params={"email": emails[next(turn) % len(emails)]}),
            "index": lambda: fast.get("/users/by-email", params={"email": emails[next(turn) % len(emails)]}),
        }, n=n, warmup=3)
    floor_ms = await request_floor_ms()
    return levels_markdown(f"one lookup by email, {plain.counts.get('users', 0):,} users", "no index",
                           "index on email", (sql["no index"].median_ms, sql["index"].median_ms),
                           (http["no index"].median_ms, http["index"].median_ms), floor_ms,
                           sql_label=f"the SQL alone (raw {driver_name()})")


def insert_batches(db: DemoDB, size: int) -> Callable[[], None]:
    """An insert to time: each call adds the next `size` users to `db` in one statement."""
    next_id = [max(db.counts.get("users", 0), 0) + 1]

    def call() -> None:
        insert_users(db, next_id[0], size)
        next_id[0] += size

    return call


def lookup_ratio(n: int, samples: int = 15, raw: bool = False, held: bool = False) -> float:
    """Median email lookup time without / with an index on users.email, on `n` users, interleaved: ORM, raw driver
    (a pooled connection per lookup) or, with `held`, the SQL alone on one held connection (`held_lookup`)."""
    plain = make_users_db(n)
    indexed = clone_db(plain)
    add_index(indexed, "users", "email")
    emails = emails_to_look_up(n)
    try:
        if held:
            with held_lookup(plain, emails) as scan, held_lookup(indexed, emails) as search:
                return compare_sync({"no index": scan, "index": search}, n=samples, warmup=2).ratio
        return compare_sync({"no index": email_lookup(plain, emails, raw),
                             "index": email_lookup(indexed, emails, raw)}, n=samples, warmup=2).ratio
    finally:
        plain.close()
        indexed.close()


WRITE_COST_INDEXES: tuple[str | tuple[str, ...], ...] = ("email", "name", ("country", "created_at"), "created_at")


def write_cost_ratio(base_rows: int = 50_000, batch: int = 5_000, samples: int = 6) -> float:
    """Insert time with 4 indexes on users / with none (batches of `batch` rows into `base_rows`), interleaved."""
    bare = make_users_db(base_rows)
    heavy = clone_db(bare)
    for columns in WRITE_COST_INDEXES:
        add_index(heavy, "users", columns)
    try:
        return 1 / compare_sync({"0 indexes": insert_batches(bare, batch), "4 indexes": insert_batches(heavy, batch)},
                                n=samples, warmup=1).ratio
    finally:
        bare.close()
        heavy.close()


def composite_ratio(samples: int = 30, users: int = 500, posts_per_user: int = 200) -> float:
    """An author's 10 latest posts (500 × 200 posts): index on (user_id) / on (user_id, created_at), interleaved."""
    single = make_posts_db(users, posts_per_user, indexes=["user_id"])
    both = clone_db(single)
    drop_indexes(both, "posts")
    add_index(both, "posts", ("user_id", "created_at"))
    latest = select(Post).where(Post.user_id == 7).order_by(Post.created_at.desc()).limit(10)

    def feed(db: DemoDB) -> Callable[[], None]:
        def call() -> None:
            with db.session() as session:
                session.scalars(latest).all()
        return call

    try:
        return compare_sync({"(user_id)": feed(single), "(user_id, created_at)": feed(both)}, n=samples).ratio
    finally:
        single.close()
        both.close()


def driver_name() -> str:
    """The DB-API driver under the course's engines: 'sqlite3' or, on PostgreSQL, 'psycopg'."""
    return "sqlite3" if dialect() == "sqlite" else make_url(course_settings().database_url or "").get_driver_name()


def bench() -> list[BenchRow]:
    """Headline figures, each row naming its database and level: email lookup without/with an index at 200k users,
    the SQL alone (the claim, ≥ 100×), through the ORM and through the raw driver's pool; 1M raw; the composite index
    and the write cost of 4 indexes. Timed runs go ahead of other programs where the OS allows."""
    from .l01_workers import measuring_priority

    db, raw = dialect(), driver_name()
    with measuring_priority([]):
        sql = lookup_ratio(200_000, 15, raw=True, held=True)
        rows = [
            BenchRow(f"[{db}] email lookup, no index / index, 200k users (the SQL alone: raw {raw}, one connection)",
                     sql, "×", "≥ 100×", sql >= 100, level="SQL"),
            BenchRow(f"[{db}] email lookup, no index / index, 200k users (ORM select)", lookup_ratio(200_000), "×",
                     level="SQL"),
            BenchRow(f"[{db}] email lookup, no index / index, 200k users (raw {raw}, a pooled connection each)",
                     lookup_ratio(200_000, raw=True), "×", level="SQL"),
            BenchRow(f"[{db}] email lookup, no index / index, 1M users (raw {raw})",
                     lookup_ratio(1_000_000, 7, True), "×", level="SQL"),
            BenchRow(f"[{db}] 10 latest posts of an author, index (user_id) / (user_id, created_at), 100k posts (ORM)",
                     composite_ratio(), "×", level="SQL"),
            BenchRow(f"[{db}] insert time, 4 indexes / none (5k-row batches into 50k users)", write_cost_ratio(), "×",
                     level="SQL"),
        ]
    return rows


def verdict(ratio: float) -> str:
    """A measured ratio (before / after) in words: "3.2× faster" or "1.5× slower"."""
    return f"{ratio:.1f}× faster" if ratio >= 1 else f"{1 / ratio:.1f}× slower"
