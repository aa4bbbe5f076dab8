"""Lesson 05 (indexes): plan parser, fast table builders, measured effects, and the grader with right and wrong answers."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from answers.l05_indexes import Order as Reference
from sqlalchemy import Index, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from course_lib.db import Post, User, dialect
from course_lib.grading import Result, grade
from course_lib.lessons.l05_indexes import (
    EXPLAINERS,
    WRITE_COST_INDEXES,
    add_index,
    bench,
    clone_db,
    composite_ratio,
    drop_indexes,
    email_of,
    explain,
    index_ddl,
    insert_batches,
    lookup_ratio,
    make_posts_db,
    make_users_db,
    parse_postgresql_plan,
    parse_sqlite_plan,
    table_indexes,
    write_cost_ratio,
)

EX = "05.declare-indexes"
ON_SQLITE = dialect() == "sqlite"


# ---------------------------------------------------------------------------------------------- plan parser

def _rows(*details: str) -> list[tuple[int, int, int, str]]:
    return [(i + 2, 0, 0, d) for i, d in enumerate(details)]


@pytest.mark.parametrize(("detail", "access", "table", "index", "covering", "automatic"), [
    ("SCAN users", "scan", "users", None, False, False),
    ("SCAN TABLE users", "scan", "users", None, False, False),  # SQLite < 3.36 spelling
    ("SCAN users AS u", "scan", "users", None, False, False),
    ("SEARCH users USING INDEX ix_users_email (email=?)", "search", "users", "ix_users_email", False, False),
    ("SEARCH TABLE users USING INDEX ix_users_email (email=?)", "search", "users", "ix_users_email", False, False),
    ("SEARCH orders USING COVERING INDEX ix_s_g (store_id=? AND is_gift=?)", "search", "orders", "ix_s_g", True, False),
    ("SEARCH users USING INTEGER PRIMARY KEY (rowid=?)", "search", "users", "PRIMARY KEY", False, False),
    ("SCAN users USING COVERING INDEX ix_users_email", "scan", "users", "ix_users_email", True, False),
    ("SEARCH p USING AUTOMATIC COVERING INDEX (user_id=?)", "search", "p", None, True, True),
    ("USE TEMP B-TREE FOR ORDER BY", "sort", None, None, False, False),
    ("SCAN CONSTANT ROW", "other", None, None, False, False),
])
def test_parser_reads_each_sqlite_spelling(detail: str, access: str, table: str | None, index: str | None,
                                           covering: bool, automatic: bool) -> None:
    step = parse_sqlite_plan(_rows(detail)).steps[0]
    assert (step.access, step.table, step.index, step.covering, step.automatic) == (
        access, table, index, covering, automatic)


def test_automatic_index_is_not_counted_as_declared() -> None:
    plan = parse_sqlite_plan(_rows("SEARCH p USING AUTOMATIC COVERING INDEX (user_id=?)"))
    assert plan.indexes == [] and not plan.uses_index()


def test_plan_questions_and_tree_text() -> None:
    plan = parse_sqlite_plan([(2, 0, 0, "SEARCH posts USING INDEX ix (user_id=?)"),
                              (9, 0, 0, "USE TEMP B-TREE FOR ORDER BY")])
    assert plan.sorts and plan.indexes == ["ix"] and plan.scanned_tables == []
    assert not plan.uses_index("posts")  # found through the index, but sorted afterwards
    nested = parse_sqlite_plan([(2, 0, 0, "SCAN users"), (5, 2, 0, "CORRELATED SCALAR SUBQUERY 1"),
                                (7, 5, 0, "SEARCH posts USING INDEX ix (user_id=?)")])
    assert str(nested) == "SCAN users\n  CORRELATED SCALAR SUBQUERY 1\n    SEARCH posts USING INDEX ix (user_id=?)"
    assert nested.scanned_tables == ["users"] and nested.uses_index("posts") and not nested.uses_index()
    assert nested.on("posts")[0].uses_declared_index


def test_explain_live_without_and_with_index_and_shared_model_untouched() -> None:
    with make_users_db(2_000) as db:
        query = select(User).where(User.email == email_of(77))
        before = explain(db, query)
        assert before.scanned_tables == ["users"] and before.indexes == [] and before.dialect == dialect()
        assert str(before) == ("SCAN users" if ON_SQLITE else
                               "Seq Scan on users [Filter: (email)::text = 'bob.77@example.com'::text]")
        with clone_db(db) as copy:
            add_index(copy, "users", "email")
            after = explain(copy.engine, query)
            assert str(after) == ("SEARCH users USING INDEX ix_users_email (email=?)" if ON_SQLITE else
                                  "Index Scan using ix_users_email on users "
                                  "((email)::text = 'bob.77@example.com'::text)")
            assert after.uses_index("users") and after.indexes == ["ix_users_email"]
            assert table_indexes(copy.engine, "users") == {"ix_users_email": ["email"]}
            assert table_indexes(db.engine, "users") == {}  # the clone has its own indexes
            with copy.session() as session:
                assert explain(session, query).indexes == ["ix_users_email"]
                assert session.scalars(query).one().id == 77
        assert explain(db, "SELECT * FROM users WHERE email = :e", {"e": "x"}).scanned_tables == ["users"]
    assert User.__table__.indexes == set()  # the course's shared model never gets the lesson's index
    with pytest.raises(TypeError, match="Engine, Connection, Session or DemoDB"):
        explain("sqlite://", query)
    assert list(EXPLAINERS) == ["sqlite", "postgresql"]


def test_builders_counts_and_ddl() -> None:
    # PostgreSQL reads a tiny table end to end rather than through an index: 4,000 posts make the plan meaningful
    with make_posts_db(200, 20, indexes=[("user_id", "created_at")]) as db, db.session() as session:
        assert db.counts == {"users": 200, "posts": 4_000, "comments": 0}
        assert session.scalars(select(User).where(User.id == 30)).one().email == email_of(30)
        assert len(session.get(User, 3).posts) == 20
        plan = explain(db, select(Post).where(Post.user_id == 3).order_by(Post.created_at.desc()).limit(2))
        assert plan.uses_index("posts") and not plan.sorts
        assert index_ddl(db, "users", ("country", "created_at")) == (
            "CREATE INDEX ix_users_country_created_at ON users (country, created_at)")
        session.rollback()  # end the read transaction: on PostgreSQL, DROP INDEX waits for readers of the table
        assert drop_indexes(db, "posts") == ["ix_posts_user_id_created_at"] and table_indexes(db.engine, "posts") == {}


# ---------------------------------------------------------------------------------------------- PostgreSQL plans (canned)

def _pg(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"Plan": plan}]


SEQ = {"Node Type": "Seq Scan", "Parallel Aware": False, "Relation Name": "users", "Alias": "users",
       "Filter": "((email)::text = 'x'::text)"}


def test_postgresql_seq_scan_is_a_full_scan() -> None:
    plan = parse_postgresql_plan(_pg(SEQ))
    assert plan.dialect == "postgresql" and plan.scanned_tables == ["users"] and not plan.uses_index()
    assert str(plan) == "Seq Scan on users [Filter: (email)::text = 'x'::text]"
    gathered = parse_postgresql_plan(_pg({"Node Type": "Gather", "Plans": [{**SEQ, "Parallel Aware": True}]}))
    assert str(gathered) == "Gather\n  Parallel Seq Scan on users [Filter: (email)::text = 'x'::text]"
    assert gathered.scanned_tables == ["users"]


def test_postgresql_index_scans_are_searches() -> None:
    scan = parse_postgresql_plan(_pg({"Node Type": "Index Scan", "Index Name": "ix_users_email",
                                      "Relation Name": "users", "Alias": "users",
                                      "Index Cond": "((email)::text = 'x'::text)"}))
    assert scan.uses_index("users") and scan.indexes == ["ix_users_email"] and not scan.steps[0].covering
    only = parse_postgresql_plan(_pg({"Node Type": "Aggregate", "Strategy": "Plain", "Plans": [
        {"Node Type": "Index Only Scan", "Index Name": "ix_s_g", "Relation Name": "orders", "Alias": "orders",
         "Index Cond": "((store_id = 7) AND (is_gift = true))"}]}))
    assert str(only) == "Aggregate\n  Index Only Scan using ix_s_g on orders ((store_id = 7) AND (is_gift = true))"
    assert only.uses_index("orders") and only.on("orders")[0].covering
    backward = parse_postgresql_plan(_pg({"Node Type": "Limit", "Plans": [
        {"Node Type": "Index Scan", "Scan Direction": "Backward", "Index Name": "ix_p", "Relation Name": "posts",
         "Alias": "posts", "Index Cond": "(user_id = 7)"}]}))
    assert "Index Scan Backward using ix_p on posts (user_id = 7)" in str(backward) and not backward.sorts
    whole = parse_postgresql_plan(_pg({"Node Type": "Index Scan", "Index Name": "posts_pkey",
                                       "Relation Name": "posts", "Alias": "p"}))  # no condition: every entry
    assert whole.scanned_tables == ["posts"] and str(whole) == "Index Scan using posts_pkey on posts p"


def test_postgresql_bitmap_scan_carries_its_index_and_sort_is_detected() -> None:
    plan = parse_postgresql_plan(json.dumps(_pg({"Node Type": "Limit", "Plans": [
        {"Node Type": "Sort", "Sort Key": ["posts.created_at DESC"], "Plans": [
            {"Node Type": "Bitmap Heap Scan", "Relation Name": "posts", "Alias": "posts",
             "Recheck Cond": "(user_id = 7)", "Plans": [
                 {"Node Type": "Bitmap Index Scan", "Index Name": "ix_posts_user_id", "Index Cond": "(user_id = 7)"}]}]}]})))
    assert str(plan) == ("Limit\n  Sort (posts.created_at DESC)\n    Bitmap Heap Scan on posts\n"
                         "      Bitmap Index Scan on ix_posts_user_id (user_id = 7)")
    assert plan.sorts and plan.indexes == ["ix_posts_user_id"] and plan.scanned_tables == []
    assert plan.searches_index("posts") and not plan.uses_index("posts")  # found through the index, then sorted


# ---------------------------------------------------------------------------------------------- measured effects

def test_index_makes_lookup_faster_ratio() -> None:
    # SQLite at 50k (ORM): 21–24× measured. PostgreSQL pays a round trip per query that no index removes: 4.4× at
    # 50k, 10× at 200k (ORM) measured, so it is held to the same margin on 200k users.
    assert lookup_ratio(50_000 if ON_SQLITE else 200_000, samples=9) > 4


def _stored_bytes(db: Any) -> int:
    """What the users table takes: SQLite's database pages, PostgreSQL's table with its indexes."""
    with db.engine.connect() as conn:
        if ON_SQLITE:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
            return int(pages) * int(conn.exec_driver_sql("PRAGMA page_size").scalar())
        return int(conn.exec_driver_sql("SELECT pg_total_relation_size('users')").scalar())


def test_indexes_cost_writes_in_storage_written() -> None:
    """Each index is one more b-tree an INSERT updates: the same 4,000 rows take ~3× the storage with the 4 indexes (the time
    it costs, ~2.5× on this machine kind, is a bench row: timed here, it failed on a loaded test machine)."""
    bare = make_users_db(20_000)
    heavy = clone_db(bare)
    for columns in WRITE_COST_INDEXES:
        add_index(heavy, "users", columns)
    try:
        grew = {}
        for name, db in (("bare", bare), ("heavy", heavy)):
            before = _stored_bytes(db)
            insert_batches(db, 4_000)()
            grew[name] = _stored_bytes(db) - before
        assert grew["bare"] > 0 and grew["heavy"] > 1.5 * grew["bare"], grew
    finally:
        bare.close()
        heavy.close()


def test_write_cost_ratio_is_insert_time_heavy_over_bare(monkeypatch) -> None:
    from course_lib.lessons import l05_indexes
    from course_lib.timing import Comparison, Timing

    timed = {}

    def fake_compare(variants: dict[str, Any], n: int, warmup: int) -> Comparison:
        for label, insert in variants.items():
            insert()  # each variant really inserts its batch
            timed[label] = n
        return Comparison({"0 indexes": Timing("0 indexes", [0.001] * n), "4 indexes": Timing("4 indexes", [0.003] * n)})

    monkeypatch.setattr(l05_indexes, "compare_sync", fake_compare)
    assert write_cost_ratio(base_rows=2_000, batch=500, samples=2) == pytest.approx(3.0)
    assert timed == {"0 indexes": 2, "4 indexes": 2}


# ---------------------------------------------------------------------------------------------- grader

class _Columns:
    """The starter's columns, shared by every answer below (each answer gets its own declarative base)."""

    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[int]
    is_gift: Mapped[bool]
    total_cents: Mapped[int]
    created_at: Mapped[datetime]


def _model(table_args: tuple[Any, ...] = (), email_index: bool = False, email_unique: bool = False,
           tablename: str = "orders", with_email: bool = True) -> type:
    class FreshBase(DeclarativeBase):
        pass

    namespace: dict[str, Any] = {"__tablename__": tablename, "__table_args__": table_args,
                                 "__annotations__": {}}
    if with_email:
        namespace["__annotations__"]["customer_email"] = Mapped[str]
        namespace["customer_email"] = mapped_column(String(120), index=email_index or None,
                                                    unique=email_unique or None)
    return type("Order", (_Columns, FreshBase), namespace)


def _graded(answer: Any) -> Result:
    return grade(EX, answer)


def _reference_plus(*extra: tuple[str, ...], email_index: bool = True) -> type:
    """The reference answer's indexes (fresh objects: an Index belongs to one table) plus `extra` ones."""
    assert Reference.__table__.c.customer_email.index  # the reference's third index, `index=True` on the column
    return _model((*(Index(index.name, *(column.name for column in index.columns)) for index in Reference.__table_args__),
                   *(Index(name, *columns) for name, *columns in extra)), email_index=email_index)


def test_reference_answer_passes() -> None:
    result = _graded(Reference)
    assert result.passed, result.message
    assert result.figures["indexes"] == 3 and result.figures["database"] == dialect()
    assert result.figures["orders"] == (60_000 if ON_SQLITE else 200_000)
    assert all(result.figures[f"{q} speedup"] >= 4 for q in ("order history", "store feed", "gift orders in a store"))


def test_right_answer_written_another_way_passes() -> None:
    # two indexes, both in __table_args__: one covering index serves both store queries
    answer = _model((Index("by_email", "customer_email"),
                     Index("by_store", "store_id", "created_at", "is_gift")))
    result = _graded(answer)
    assert result.passed, result.message
    assert result.figures["indexes"] == 2


def test_no_index_fails_on_the_scan() -> None:
    result = _graded(_model())
    assert not result.passed
    assert "reads the whole orders table" in result.message
    assert ("SCAN orders" if ON_SQLITE else "Seq Scan on orders") in result.message
    assert "Your indexes: none" in result.message and result.hint


def test_single_column_store_index_fails_on_the_sort() -> None:
    result = _graded(_model((Index("ix_store", "store_id"),), email_index=True))
    assert not result.passed
    assert "'store feed'" in result.message and "sorts them itself" in result.message
    assert ("USE TEMP B-TREE" if ON_SQLITE else "Sort (created_at DESC)") in result.message


def test_index_on_the_boolean_fails() -> None:
    result = _graded(_reference_plus(("ix_orders_gift", "is_gift")))
    assert not result.passed
    assert "ix_orders_gift starts with is_gift" in result.message


def test_non_covering_count_fails_on_the_measured_ratio_or_the_plan() -> None:
    answer = _model((Index("ix_orders_store_created", "store_id", "created_at"),), email_index=True)
    result = _graded(answer)
    assert not result.passed
    assert "'gift orders in a store'" in result.message and "faster than with no index" in result.message
    assert "COVERING" in result.message
    if ON_SQLITE:  # SQLite: the plan fails it (the ratio, ≈1.6× on a quiet machine, reached 6.8× under load)
        assert "ix_orders_store_created" in result.message
    else:  # PostgreSQL: a bitmap heap scan, 2.4–6.5× measured: the plan check fails it either way
        assert "Bitmap Heap Scan on orders" in result.message


def test_order_history_may_sort_a_customers_few_orders() -> None:
    # (customer_email, created_at) returns a customer's 3 orders by date: the database sorts 3 rows by id. Only
    # the store feed (ORDER BY … LIMIT 20) must come out of an index in order.
    answer = _model((Index("ix_email_created", "customer_email", "created_at"),
                     Index("ix_orders_store_created", "store_id", "created_at"),
                     Index("ix_orders_store_gift", "store_id", "is_gift")))
    result = _graded(answer)
    assert result.passed, result.message


def test_unique_email_index_fails_with_a_reason() -> None:
    answer = _model((Index("ix_orders_store_created", "store_id", "created_at"),), email_index=True, email_unique=True)
    result = _graded(answer)
    assert not result.passed
    assert ("UNIQUE constraint failed" if ON_SQLITE else "duplicate key value violates unique constraint") in (
        result.message)
    assert "must not be `unique=True`" in result.message and ".." not in result.message


@pytest.mark.parametrize(("extra", "measured"), [
    ([("ix_orders_total", "total_cents")], "ix_orders_total (total_cents) is used by none of"),
    ([("ix_orders_created", "created_at")], "ix_orders_created (created_at) is used by none of"),
    ([("ix_orders_email_created", "customer_email", "created_at"), ("ix_orders_email_total", "customer_email",
                                                                    "total_cents")], "is used by none of"),
    ([("ix_orders_email_again", "customer_email")], "are the same index, both on (customer_email)"),
    ([("ix_orders_store", "store_id")],
     "ix_orders_store (store_id) is the start of ix_orders_store_created (store_id, created_at)"),
    ([("ix_orders_email_store", "customer_email", "store_id")],
     "ix_orders_customer_email (customer_email) is the start of ix_orders_email_store (customer_email, store_id)"),
], ids=["unused-total", "unused-created", "two-email-indexes-one-idle", "duplicate", "prefix-of-composite",
        "prefix-of-another-email-index"])
def test_useless_indexes_fail_and_are_named(extra: list[tuple[str, ...]], measured: str) -> None:
    # the two-email-indexes case has no plain email index: the planner picks one of two, the other is dead weight
    answer = _reference_plus(*extra, email_index=len(extra) == 1)
    result = _graded(answer)
    assert not result.passed
    assert measured in result.message, result.message
    assert "Drop" in result.message and result.hint


def test_right_answer_as_a_table_with_column_index_passes() -> None:
    from sqlalchemy import Boolean, Column, DateTime, Integer, MetaData, Table

    orders = Table("orders", MetaData(),
                   Column("id", Integer, primary_key=True),
                   Column("customer_email", String(120), nullable=False, index=True),
                   Column("store_id", Integer, nullable=False), Column("is_gift", Boolean, nullable=False),
                   Column("total_cents", Integer, nullable=False), Column("created_at", DateTime, nullable=False),
                   Index("feed", "store_id", "created_at"), Index("gifts", "store_id", "is_gift"))
    result = _graded(orders)
    assert result.passed, result.message


def test_covering_index_for_both_store_queries_passes() -> None:
    # one (store_id, created_at, is_gift) index serves the feed in order and counts gifts from the index alone
    answer = _model((Index("ix_orders_store_created_gift", "store_id", "created_at", "is_gift"),), email_index=True)
    result = _graded(answer)
    assert result.passed, result.message


class _NoTable:
    pass


@pytest.mark.parametrize(("answer", "expected"), [
    (None, "the answer is None"),
    (42, "expected a model class"),
    (_NoTable, "expected a model class"),
    ("Order", "expected a model class"),
])
def test_odd_answers_get_clear_messages(answer: Any, expected: str) -> None:
    result = _graded(answer)
    assert not result.passed and expected in result.message


def test_model_with_missing_or_renamed_columns_fails_clearly() -> None:
    result = _graded(_model(with_email=False))
    assert not result.passed and "missing: ['customer_email']" in result.message
    result = _graded(_model(tablename="shop_orders", email_index=True))
    assert not result.passed and "'shop_orders'" in result.message


def test_composite_index_beats_single_column_for_filter_and_sort() -> None:
    # 1,000 posts per author to sort: measured 6.2–6.6× on SQLite, 2.1–2.2× on PostgreSQL (ORM; the round trip
    # is in both sides there). At 200 per author PostgreSQL measured only 1.3×. The plans above are the exact check.
    assert composite_ratio(samples=15, users=100, posts_per_user=1_000) > 1.4


@pytest.mark.skipif(ON_SQLITE, reason="PostgreSQL only: DATABASE_URL names a PostgreSQL server")
def test_postgresql_live_plans_need_statistics_and_clone_keeps_them() -> None:
    with make_posts_db(200, 50, indexes=["user_id"]) as db, clone_db(db) as copy:
        plan = explain(copy, select(Post).where(Post.user_id == 3))
        assert plan.searches_index("posts") and plan.indexes == ["ix_posts_user_id"]
        assert copy.engine.url.database != db.engine.url.database and copy.counts == db.counts
        with copy.session() as session:
            assert len(session.get(User, 3).posts) == 50


def test_bench_rows_name_their_database(monkeypatch: pytest.MonkeyPatch) -> None:
    import course_lib.lessons.l05_indexes as lesson

    monkeypatch.setattr(lesson, "lookup_ratio", lambda *a, **k: 2.0)
    monkeypatch.setattr(lesson, "composite_ratio", lambda *a, **k: 2.0)
    monkeypatch.setattr(lesson, "write_cost_ratio", lambda *a, **k: 2.0)
    rows = bench()
    assert len(rows) == 6 and all(row.effect.startswith(f"[{dialect()}]") for row in rows)
    assert ("raw sqlite3" if ON_SQLITE else "raw psycopg") in rows[0].effect
    assert rows[0].level == "SQL" and rows[0].goal == "≥ 100×" and rows[0].role == "claim"
    assert all(row.role == "info" for row in rows[1:])
