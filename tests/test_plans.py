"""The course's one query-plan reader (`course_lib.plans`), on real plans of SQLite and PostgreSQL, and its users
(the auditor, lesson 05's grader, lesson 04's plan helpers) agreeing on what a full scan is."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select, text
from sqlalchemy.engine import Engine

from course_lib.auditor import audit, postgres_scanned_tables, sqlite_scanned_tables
from course_lib.db import dialect, drop_fresh_database, fresh_engine, thread_safe_connect_args
from course_lib.lessons import l04_pagination, l05_indexes
from course_lib.plans import (
    EXPLAIN_PREFIX,
    PlanStep,
    QueryPlan,
    explain,
    explain_driver_sql,
    parse_plan,
    parse_postgresql_plan,
    parse_sqlite_plan,
    postgresql_nodes,
)

ROWS = 3_000
DIALECTS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.skipif(
    dialect() != "postgresql", reason="real PostgreSQL plans need DATABASE_URL"))]


def _people() -> Table:
    return Table("people", MetaData(), Column("id", Integer, primary_key=True),
                 Column("email", String(80), nullable=False), Column("name", String(80), nullable=False))


@pytest.fixture(params=DIALECTS, scope="module")
def people(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, Table]]:
    """A `people` table of ROWS rows on each database, with an index on email; statistics and visibility fresh."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('plans') / 'people.sqlite3'}"
        engine, path = create_engine(url, connect_args=thread_safe_connect_args(url)), None
    else:
        engine, path = fresh_engine()
    table = _people()
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": i, "email": f"p{i}@example.com", "name": f"P {i}"}
                                     for i in range(1, ROWS + 1)])
        conn.exec_driver_sql("CREATE INDEX ix_people_email ON people (email)")
    l05_indexes.analyze(engine, "people")  # PostgreSQL: ANALYZE + VACUUM (index-only scans need visibility)
    try:
        yield engine, table
    finally:
        drop_fresh_database(engine, path)


def _forced(engine: Engine, sql: str, **planner: str) -> QueryPlan:
    """The plan of `sql` with PostgreSQL planner switches set for one transaction (to obtain a plan shape)."""
    with engine.begin() as conn:
        for name, value in planner.items():
            conn.exec_driver_sql(f"SET LOCAL {name} = {value}")
        return explain(conn, sql)


def test_an_unindexed_filter_is_a_full_scan(people: tuple[Engine, Table]) -> None:
    engine, table = people
    plan = explain(engine, select(table).where(table.c.name == "P 7"))
    assert plan.scanned_tables == ["people"] and plan.indexes == [] and not plan.uses_index()
    step = plan.full_scans[0]
    assert step.headline == ("SCAN people" if plan.dialect == "sqlite" else "Seq Scan on people")


def test_an_index_search_is_not_a_scan(people: tuple[Engine, Table]) -> None:
    engine, table = people
    plan = explain(engine, select(table).where(table.c.email == "p7@example.com"))
    assert plan.scanned_tables == [] and plan.indexes == ["ix_people_email"] and plan.uses_index("people")
    assert plan.full_scans == [] and plan.searches_index("people")


def test_walking_a_whole_covering_index_is_a_full_scan(people: tuple[Engine, Table]) -> None:
    """The rule the course teaches (lesson 05) and every reader applies: reading every entry of an index, even one
    that answers alone (SQLite's COVERING INDEX, PostgreSQL's Index Only Scan), without a condition, is a scan."""
    engine, table = people
    sql = "SELECT email FROM people WHERE email LIKE '%7%'"
    if engine.dialect.name == "sqlite":
        plan = explain(engine, sql)
        assert str(plan) == "SCAN people USING COVERING INDEX ix_people_email"
    else:
        plan = _forced(engine, sql, enable_seqscan="off", enable_bitmapscan="off")
        step = plan.on("people")[0]
        assert step.detail.startswith("Index Only Scan using ix_people_email on people [Filter:"), step.detail
    step = plan.on("people")[0]
    assert step.covering and step.full_scan and plan.scanned_tables == ["people"]
    assert plan.indexes == ["ix_people_email"] and not plan.uses_index("people")


def test_a_covering_index_search_is_not_a_scan(people: tuple[Engine, Table]) -> None:
    engine, table = people
    sql = "SELECT email FROM people WHERE email = 'p7@example.com'"
    plan = explain(engine, sql) if engine.dialect.name == "sqlite" else _forced(
        engine, sql, enable_seqscan="off", enable_bitmapscan="off", enable_indexscan="off")
    step = plan.on("people")[0]
    assert step.covering and not step.full_scan and plan.uses_index("people"), str(plan)


def test_driver_level_statements_in_their_own_parameter_style(people: tuple[Engine, Table]) -> None:
    engine, _ = people
    marker = "?" if engine.dialect.name == "sqlite" else "%(e)s"
    params: Any = ("p7@example.com",) if engine.dialect.name == "sqlite" else {"e": "p7@example.com"}
    with engine.connect() as conn:
        found = explain_driver_sql(conn, f"SELECT id FROM people WHERE email = {marker}", params)
        scanned = explain_driver_sql(conn, f"SELECT id FROM people WHERE name = {marker}", params)
    assert found.indexes == ["ix_people_email"] and found.scanned_tables == []
    assert scanned.scanned_tables == ["people"] and scanned.sql.endswith(f"name = {marker}")


def test_sorting_is_seen_on_both(people: tuple[Engine, Table]) -> None:
    engine, table = people
    sorted_plan = explain(engine, select(table).where(table.c.email == "p7@example.com").order_by(table.c.name))
    assert sorted_plan.sorts and sorted_plan.searches_index("people") and not sorted_plan.uses_index("people")


@pytest.mark.skipif(dialect() != "postgresql", reason="EXPLAIN ANALYZE documents of PostgreSQL need DATABASE_URL")
def test_postgresql_nodes_walk_a_real_analyze_document(people: tuple[Engine, Table]) -> None:
    engine, _ = people
    if engine.dialect.name != "postgresql":
        pytest.skip("the PostgreSQL leg")
    with engine.connect() as conn:
        document = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM people ORDER BY name "
                                        "LIMIT 5").scalar_one()
    kinds = [node["Node Type"] for node in postgresql_nodes(document)]
    assert kinds[:3] == ["Limit", "Sort", "Seq Scan"], kinds
    assert l04_pagination.sort_method(document) == "top-N heapsort"
    assert [n["Node Type"] for n in postgresql_nodes(str(document).replace("'", '"').replace("True", "true")
                                                     .replace("False", "false"))][:1] == ["Limit"]


# ---------------------------------------------------------------------------------------- the readers agree

def _covering_scan_app(engine: Engine) -> FastAPI:
    app = FastAPI()
    app.state.engine = engine

    @app.get("/people/matching")
    def matching(fragment: str = "7") -> list[str]:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(
                text("SELECT email FROM people WHERE email LIKE :pattern"), {"pattern": f"%{fragment}%"})]

    return app


def test_the_auditor_calls_a_whole_index_walk_a_full_scan(people: tuple[Engine, Table]) -> None:
    """The auditor once passed `SCAN … USING COVERING INDEX` (and PostgreSQL's condition-less Index Only Scan) while
    lesson 05 taught that it reads every entry: both now read plans through `course_lib.plans`."""
    engine, _ = people
    check = asyncio.run(audit(_covering_scan_app(engine), min_scan_rows=1_000))["indexes"]
    assert check.status == "✗", check.evidence
    expected = ("SCAN people USING COVERING INDEX ix_people_email" if engine.dialect.name == "sqlite"
                else "Seq Scan on people")  # PostgreSQL, free to choose, reads the heap: a full scan either way
    assert f"{expected} ({ROWS:,} rows) for: SELECT email FROM people WHERE email LIKE" in check.evidence, check.evidence


@pytest.mark.skipif(dialect() != "postgresql", reason="real PostgreSQL plans need DATABASE_URL")
def test_the_auditor_calls_a_condition_less_index_only_scan_a_full_scan(people: tuple[Engine, Table]) -> None:
    """PostgreSQL's Index Only Scan without an index condition (here the planner is steered to it for the whole
    database) reads every entry of the index: the auditor fails it as lesson 05 does."""
    engine, _ = people
    if engine.dialect.name != "postgresql":
        pytest.skip("the PostgreSQL leg")
    name = engine.url.database

    def steer(how: str) -> None:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for setting in ("enable_seqscan", "enable_bitmapscan"):
                conn.exec_driver_sql(f'ALTER DATABASE "{name}" {how.format(setting)}')
        engine.dispose()  # new connections pick the database's settings up

    steer("SET {} = off")
    try:
        check = asyncio.run(audit(_covering_scan_app(engine), min_scan_rows=1_000))["indexes"]
    finally:
        steer("RESET {}")
    assert check.status == "✗", check.evidence
    assert f"Index Only Scan using ix_people_email on people ({ROWS:,} rows)" in check.evidence, check.evidence


def test_auditor_helpers_and_lesson_05_share_the_parser() -> None:
    covering = [(2, 0, 0, "SCAN users USING COVERING INDEX ix_users_email")]
    assert sqlite_scanned_tables(covering) == l05_indexes.parse_sqlite_plan(covering).scanned_tables == ["users"]
    whole = [{"Plan": {"Node Type": "Index Only Scan", "Relation Name": "users", "Index Name": "ix"}}]
    assert postgres_scanned_tables(whole) == l05_indexes.parse_postgresql_plan(whole).scanned_tables == ["users"]
    assert l05_indexes.QueryPlan is QueryPlan and l05_indexes.PlanStep is PlanStep  # one class, re-exported


# ---------------------------------------------------------------------------------------- odd input

def test_parse_plan_dispatches_and_refuses_unknown_dialects() -> None:
    assert parse_plan("sqlite", [(2, 0, 0, "SCAN t")]).scanned_tables == ["t"]
    assert parse_plan("postgresql", '[{"Plan": {"Node Type": "Seq Scan", "Relation Name": "t"}}]').scanned_tables == ["t"]
    assert set(EXPLAIN_PREFIX) == {"sqlite", "postgresql"}
    with pytest.raises(NotImplementedError, match="no query-plan parser for 'mysql'"):
        parse_plan("mysql", [])


def test_empty_answers_give_empty_plans() -> None:
    assert parse_sqlite_plan([]).steps == () and parse_sqlite_plan(None).steps == ()
    assert parse_postgresql_plan([]).steps == () and parse_postgresql_plan(None).steps == ()
    assert list(postgresql_nodes(None)) == [] and list(postgresql_nodes([])) == []
    assert list(postgresql_nodes("not a plan")) == []


def test_headline_drops_conditions_and_filters() -> None:
    assert PlanStep("SEARCH users USING INDEX ix (email=?)", "search").headline == "SEARCH users USING INDEX ix"
    assert PlanStep("Seq Scan on users [Filter: (x = 1)]", "scan").headline == "Seq Scan on users"
    assert PlanStep("Index Only Scan using ix on t ((a = 1))", "search").headline == "Index Only Scan using ix on t"
