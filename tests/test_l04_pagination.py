"""Lesson 04: the items table, the demo apps' behaviour (exact counts), and both graders with right and wrong answers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import time
from datetime import datetime
from typing import Annotated, Any

import pytest
from answers.l04_pagination import add_gzip
from answers.l04_pagination import make_app as make_keyset_reference
from fastapi import Depends, FastAPI, HTTPException, Query
from sqlalchemy import and_, func, or_, select, text, tuple_
from sqlalchemy.orm import Session
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware

from course_lib.client import app_client
from course_lib.db import dialect
from course_lib.grading import grade
from course_lib.lessons.l04_pagination import (
    Item,
    ItemOut,
    add_items,
    bench,
    decode_cursor,
    depth_profile,
    encode_cursor,
    explain_page,
    feed_index,
    make_article_app,
    make_catalog_app,
    make_feed_app,
    make_items_db,
    make_keyset_app,
    make_offset_app,
    newest_ids,
    sort_method,
    walk_cursor,
    walk_offset,
    watch_database,
    wire_bytes,
    with_gzip,
)

ON_SQLITE = dialect() == "sqlite"


def run(coro: Any) -> Any:
    """Run a coroutine to completion (tests are plain functions)."""
    return asyncio.run(coro)


# ---------- data and demo apps ----------

def test_items_db_is_deterministic_and_add_items_appends_newer_rows():
    with make_items_db(23) as db:
        assert db.counts == {"items": 23}
        assert newest_ids(db) == list(range(23, 0, -1))
        assert add_items(db, 4) == [24, 25, 26, 27]
        with db.session() as session:
            assert session.scalar(select(func.count()).select_from(Item)) == 27
            stamps = session.scalars(select(Item.created_at).order_by(Item.id)).all()
        assert len(set(stamps)) < len(stamps), "created_at must have ties for the lesson's demonstration"
    with pytest.raises(ValueError):
        make_items_db(-1)


def test_cursor_round_trip_and_garbage():
    item = make_items_db(3)
    with item.session() as session:
        row = session.get(Item, 2)
        assert row is not None
        assert decode_cursor(encode_cursor(row.created_at, row.id)) == (row.created_at, row.id)
    item.close()
    for garbage in ("", "not-a-cursor!", base64.urlsafe_b64encode(b"[1]").decode()):
        with pytest.raises(ValueError):
            decode_cursor(garbage)


def test_items_db_moves_the_id_sequence_past_the_loaded_rows():
    with make_items_db(12) as db, db.session() as session:
        item = Item(title="new", category="books", price_cents=1, created_at=datetime(2025, 1, 1))
        session.add(item)
        session.commit()
        assert item.id == 13  # PostgreSQL: setval after COPY; SQLite: max(rowid) + 1


def test_bulk_load_is_copy_on_postgresql_and_batched_inserts_on_sqlite():
    from course_lib.queries import count_queries

    with make_items_db(0) as db:
        with count_queries(db.engine) as log:
            add_items(db, 6_000)
        with db.engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Item)) == 6_000
            inserts = [sql for sql in log.statements if sql.lstrip().upper().startswith("INSERT")]
            if dialect() == "postgresql":
                assert inserts == []  # COPY goes through psycopg's cursor.copy, not INSERT statements
                # a load of ≥ ANALYZE_AFTER rows refreshed the planner's statistics
                assert conn.exec_driver_sql("SELECT reltuples FROM pg_class WHERE relname = 'items'").scalar() == 6_000
            else:
                assert inserts and len(inserts) <= 2  # executemany batches (SQLAlchemy logs one per batch)
        assert newest_ids(db)[:3] == [6_000, 5_999, 5_998]


def test_article_idiom_lets_a_negative_limit_through_and_the_annotated_cap_does_not():
    async def go() -> tuple[int, bytes, list[int]]:
        with make_items_db(300) as db:
            async with app_client(make_article_app(db), raise_app_exceptions=False) as article, \
                    app_client(make_offset_app(db)) as capped:
                negative = await article.get("/items", params={"limit": -1})
                codes = [(await capped.get("/items", params={"limit": v})).status_code for v in (-1, 0, 101, 100)]
                return negative.status_code, negative.content, codes

    status, body, codes = run(go())
    if dialect() == "sqlite":
        assert status == 200 and len(json.loads(body)) == 300  # LIMIT -1 means "no limit"
    else:
        assert status == 500  # PostgreSQL: LIMIT must not be negative
    assert codes == [422, 422, 422, 200]


def test_offset_over_ties_repeats_rows_on_postgresql_and_the_tiebreaker_never_does():
    async def go(order_by: list[Any]) -> list[int]:
        with make_items_db(1_000) as db:
            async with app_client(make_offset_app(db, order_by=order_by)) as client:
                return await walk_offset(client, limit=12)

    loose = run(go([Item.created_at.desc()]))
    exact = run(go([Item.created_at.desc(), Item.id.desc()]))
    assert exact == list(range(1_000, 0, -1))
    assert len(loose) == 1_000
    if dialect() == "postgresql":
        assert len(set(loose)) < 1_000, "PostgreSQL's top-N heapsort reorders ties between pages"
    else:
        # SQLite returns tied rows in rowid order on every page: the accident the lesson warns about
        assert sorted(loose) == sorted(exact)


CANNED_PG_PLAN = [{"Plan": {"Node Type": "Limit", "Plans": [{
    "Node Type": "Sort", "Parent Relationship": "Outer", "Sort Key": ["items.created_at DESC"],
    "Sort Method": "top-N heapsort", "Sort Space Used": 33, "Plans": [{"Node Type": "Seq Scan",
                                                                      "Relation Name": "items"}]}]}}]


def test_sort_method_reads_postgresql_plans():
    assert sort_method(CANNED_PG_PLAN) == "top-N heapsort"
    assert sort_method(CANNED_PG_PLAN[0]) == "top-N heapsort"
    assert sort_method([{"Plan": {"Node Type": "Limit", "Plans": [{"Node Type": "Index Scan Backward"}]}}]) is None
    assert sort_method([{"Plan": {"Node Type": "Sort", "Sort Method": "quicksort"}}]) == "quicksort"
    assert sort_method(None) is None and sort_method("text") is None


def test_explain_page_on_the_live_database():
    with make_items_db(1_000) as db:
        loose = explain_page(db, [Item.created_at.desc()], offset=360)
    if dialect() == "postgresql":
        assert loose == "Sort Method: top-N heapsort"
    else:
        assert loose == "SCAN items; USE TEMP B-TREE FOR ORDER BY"


def test_bench_rows_name_their_database_and_hold_the_tie_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    import course_lib.lessons.l04_pagination as lesson

    monkeypatch.setattr(lesson, "KEYSET_DEEP_ROWS", 200_000)  # the bench itself builds 1M rows (~10-30 s)
    rows = {r.effect: r for r in bench()}
    levels = {r.effect.split("] ", 1)[1].split(" at depth")[0]: r.level for r in rows.values() if "] " in r.effect}
    assert levels["OFFSET vs keyset, the SQL alone (raw driver)"] == "SQL"
    assert levels["OFFSET vs keyset, GET page of 20"] == "endpoint"
    name = dialect()
    serialization = [effect for effect in rows if "to JSON" in effect]  # from memory: no database to name
    assert len(serialization) == 1 and rows[serialization[0]].level == "endpoint"
    assert all(effect.startswith(f"[{name}] ") for effect in rows if effect not in serialization)
    assert rows[f"[{name}] same walk by (created_at, id): distinct seen"].value == 1_000
    loose = rows[f"[{name}] OFFSET walk of 1,000 items by created_at only (5 per second): distinct seen"].value
    assert (loose < 1_000) if name == "postgresql" else (loose == 1_000)
    assert rows[f"[{name}] OFFSET: deepest page / first page (GET)"].value >= 1.5


def test_cursor_on_a_non_unique_column_loses_rows_and_the_tiebreaker_does_not():
    async def go(tiebreaker: bool) -> list[int]:
        with make_items_db(1_000) as db:
            async with app_client(make_feed_app(db, tiebreaker=tiebreaker)) as client:
                return await walk_cursor(client, limit=12)

    lossy, exact = run(go(False)), run(go(True))
    assert len(lossy) == len(set(lossy)) == 801
    assert exact == list(range(1_000, 0, -1))


def test_offset_repeats_rows_under_inserts_and_keyset_does_not():
    async def go(make_app: Any, walk: Any) -> list[int]:
        with make_items_db(120) as db:
            async with app_client(make_app(db)) as client:
                return await walk(client, limit=10, between=lambda: add_items(db, 3))

    offset = run(go(make_offset_app, walk_offset))
    keyset = run(go(make_keyset_app, walk_cursor))
    assert len(offset) - len(set(offset)) == 49
    assert keyset == list(range(120, 0, -1))


def test_deep_offset_is_slower_than_keyset_at_depth():
    with make_items_db(300_000) as db:
        profile = run(depth_profile(db, [0, 299_980], n=7))
    # interleaved medians; research saw ~30x at this depth on an idle machine: 2x is a wide margin for noise
    assert profile["offset"][1] / profile["keyset"][1] >= 2
    assert profile["offset"][1] / profile["offset"][0] >= 1.5


def test_gzip_shrinks_the_export_and_leaves_small_responses_alone():
    async def go() -> dict[str, tuple[int, int, str]]:
        with make_items_db(10_000) as db:
            async with app_client(with_gzip(make_catalog_app(db))) as client:
                return {u: await wire_bytes(client, u) for u in ("/items/export", "/items?limit=8")}

    sizes = run(go())
    wire, size, encoding = sizes["/items/export"]
    assert encoding == "gzip" and size / wire >= 5
    assert sizes["/items?limit=8"][2] == "identity"
    assert sizes["/items?limit=8"][0] == sizes["/items?limit=8"][1]


# ---------- 04.keyset: right answers ----------

def test_keyset_reference_passes():
    result = grade("04.keyset", make_keyset_reference)
    assert result.passed, result.message
    assert result.figures["last_page_vs_small_table"] <= 3 and result.figures["first_page_vs_small_table"] <= 3


def make_opaque_keyset_app(db: Any) -> FastAPI:
    """Right, written another way: opaque base64 cursor, limit + 1 rows to know if there is more, plain dicts."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: int = Query(20, ge=1, le=100), cursor: str | None = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        stmt = select(Item).order_by(Item.id.desc()).limit(limit + 1)
        if cursor:
            try:
                last = int(base64.urlsafe_b64decode(cursor.encode()).decode())
            except ValueError as error:
                raise HTTPException(400, "bad cursor") from error
            stmt = stmt.where(Item.id < last)
        rows = session.scalars(stmt).all()
        page, more = rows[:limit], len(rows) > limit
        token = base64.urlsafe_b64encode(str(page[-1].id).encode()).decode() if more else None
        return {"items": [ItemOut.model_validate(r).model_dump(mode="json") for r in page], "next_cursor": token}

    return app


def test_a_position_kept_in_the_server_fails_when_two_clients_page_at_once():
    """A keyset walk whose position lives in the process (the cursor a constant token) is safe for one reader only."""
    last: dict[str, int] = {}

    def make_server_cursor_app(db: Any) -> FastAPI:
        app = FastAPI()
        get_db = db.dependency()

        @app.get("/items")
        def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None,
                  session: Session = Depends(get_db)) -> dict[str, Any]:
            if cursor is None:
                last.pop("id", None)
            elif cursor != "next":
                raise HTTPException(400, "bad cursor")
            stmt = select(Item).order_by(Item.id.desc()).limit(limit)
            if "id" in last:
                stmt = stmt.where(Item.id < last["id"])
            rows = session.scalars(stmt).all()
            if rows:
                last["id"] = rows[-1].id
            return {"items": [{"id": r.id, "title": r.title} for r in rows],
                    "next_cursor": "next" if len(rows) == limit else None}

        return app

    result = grade("04.keyset", make_server_cursor_app, record=False)
    assert not result.passed and "two clients walked 250 items at once" in result.message, result.message
    assert "put it in the cursor" in result.message


def test_keyset_right_answer_written_differently_passes():
    result = grade("04.keyset", make_opaque_keyset_app)
    assert result.passed, result.message


def make_text_sql_keyset_app(db: Any) -> FastAPI:
    """Right, written another way: Core `text()` on `db.engine`, a plain string cursor, limit + 1 rows."""
    app = FastAPI()
    page_sql = text("SELECT id, title FROM items WHERE id < :before ORDER BY id DESC LIMIT :n")

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None) -> dict[str, Any]:
        if cursor is not None and not cursor.isdigit():
            raise HTTPException(400, "bad cursor")
        before = int(cursor) if cursor is not None else 2**62
        with db.engine.connect() as conn:
            rows = conn.execute(page_sql, {"before": before, "n": limit + 1}).all()
        page = rows[:limit]
        return {"items": [{"id": r.id, "title": r.title} for r in page],
                "next_cursor": str(page[-1].id) if len(rows) > limit else None}

    return app


def make_composite_keyset_app(db: Any, *, expanded: bool = False) -> FastAPI:
    """Right, written another way: ordered by (created_at, id) with a base64 JSON cursor, compared as a tuple or
    OR-expanded (behind a seekable `created_at <=`), and the index that ordering needs created on the learner's own database (never on Item.__table__)."""
    with db.engine.begin() as conn:
        conn.execute(text("CREATE INDEX IF NOT EXISTS ix_items_created_id ON items (created_at, id)"))
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        stmt = select(Item).order_by(Item.created_at.desc(), Item.id.desc()).limit(limit)
        if cursor is not None:
            try:
                stamp, last = json.loads(base64.urlsafe_b64decode(cursor.encode()))
                when = datetime.fromisoformat(stamp)
            except ValueError as error:
                raise HTTPException(400, "bad cursor") from error
            if expanded:  # the leading `created_at <= when` lets the index seek; a bare OR would scan from the top
                stmt = stmt.where(Item.created_at <= when,
                                  or_(Item.created_at < when, and_(Item.created_at == when, Item.id < last)))
            else:
                stmt = stmt.where(tuple_(Item.created_at, Item.id) < tuple_(when, last))
        rows = session.scalars(stmt).all()
        token = (base64.urlsafe_b64encode(json.dumps([rows[-1].created_at.isoformat(), rows[-1].id]).encode())
                 .decode() if len(rows) == limit else None)
        return {"items": [ItemOut.model_validate(r).model_dump(mode="json") for r in rows], "next_cursor": token}

    return app


def make_raw_sqlite_keyset_app(db: Any) -> FastAPI:
    """Right on SQLite, written another way: its own sqlite3 connection to db.path (the grader still sees it)."""
    app = FastAPI()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20,
              cursor: Annotated[int | None, Query(ge=1)] = None) -> dict[str, Any]:
        with contextlib.closing(sqlite3.connect(db.path)) as conn:
            rows = conn.execute("SELECT id, title FROM items WHERE id < ? ORDER BY id DESC LIMIT ?",
                                (cursor or 2**62, limit)).fetchall()
        return {"items": [{"id": i, "title": t} for i, t in rows],
                "next_cursor": rows[-1][0] if len(rows) == limit else None}

    return app


RIGHT_KEYSETS = [make_text_sql_keyset_app, make_composite_keyset_app,
                 lambda db: make_composite_keyset_app(db, expanded=True), make_keyset_app]
RIGHT_IDS = ["core-text-plain-cursor", "tuple-comparison-base64", "or-expanded-base64", "the-lesson-s-demo-app"]
if dialect() == "sqlite":
    RIGHT_KEYSETS.append(make_raw_sqlite_keyset_app)
    RIGHT_IDS.append("raw-sqlite3")


@pytest.mark.parametrize("answer", RIGHT_KEYSETS, ids=RIGHT_IDS)
def test_keyset_right_answers_written_other_ways_pass(answer: Any):
    result = grade("04.keyset", answer)
    assert result.passed, result.message
    assert result.figures["last_page_vs_small_table"] <= 3


# ---------- 04.keyset: wrong answers ----------

def make_offset_cursor_app(db: Any) -> FastAPI:
    """Wrong: the 'cursor' is just the next offset, so inserts shift it."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: Annotated[int, Query(ge=0)] = 0,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        rows = session.scalars(select(Item).order_by(Item.id.desc()).offset(cursor).limit(limit)).all()
        return {"items": [{"id": r.id, "title": r.title} for r in rows],
                "next_cursor": cursor + limit if len(rows) == limit else None}

    return app


def make_uncapped_app(db: Any) -> FastAPI:
    """Wrong: correct keyset, but `limit` has no bounds."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: int = 20, cursor: int | None = None, session: Session = Depends(get_db)) -> dict[str, Any]:
        stmt = select(Item).order_by(Item.id.desc()).limit(limit)
        if cursor is not None:
            stmt = stmt.where(Item.id < cursor)
        rows = session.scalars(stmt).all()
        return {"items": [{"id": r.id, "title": r.title} for r in rows],
                "next_cursor": rows[-1].id if rows and len(rows) == limit else None}

    return app


def make_load_all_app(db: Any) -> FastAPI:
    """Wrong: stable and complete, but loads every row and slices in Python."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: Annotated[int | None, Query(ge=1)] = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        rows = [r for r in session.scalars(select(Item).order_by(Item.id.desc())).all()
                if cursor is None or r.id < cursor]
        page = rows[:limit]
        return {"items": [{"id": r.id, "title": r.title} for r in page],
                "next_cursor": page[-1].id if len(rows) > limit else None}

    return app


def make_count_then_offset_app(db: Any) -> FastAPI:
    """Wrong: the cursor is an id (stable under inserts) but is turned into an OFFSET by counting the rows above it."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: Annotated[int | None, Query(ge=1)] = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        skip = 0 if cursor is None else session.scalar(
            select(func.count()).select_from(Item).where(Item.id >= cursor)) or 0
        rows = session.scalars(select(Item).order_by(Item.id.desc()).offset(skip).limit(limit)).all()
        return {"items": [{"id": r.id, "title": r.title} for r in rows],
                "next_cursor": rows[-1].id if len(rows) == limit else None}

    return app


def make_oldest_first_app(db: Any) -> FastAPI:
    """Wrong: keyset, but oldest first."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: Annotated[int | None, Query(ge=0)] = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        stmt = select(Item).order_by(Item.id).limit(limit)
        if cursor is not None:
            stmt = stmt.where(Item.id > cursor)
        rows = session.scalars(stmt).all()
        return {"items": [{"id": r.id, "title": r.title} for r in rows],
                "next_cursor": rows[-1].id if len(rows) == limit else None}

    return app


def make_keyset_variant_app(db: Any, *, default_limit: int | None = 20, parse_cursor: bool = False,
                            title_field: str = "title") -> FastAPI:
    """Keyset pages, newest first, with one thing wrong: no default limit, a hand-parsed cursor, a renamed field."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int | None, Query(ge=1, le=100)] = default_limit, cursor: str | None = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        stmt = select(Item).order_by(Item.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        if cursor is not None:
            after = int(cursor) if parse_cursor else int(cursor) if cursor.isdigit() else None
            if after is None:
                raise HTTPException(400, "bad cursor")
            stmt = stmt.where(Item.id < after)
        rows = session.scalars(stmt).all()
        return {"items": [{"id": r.id, title_field: r.title} for r in rows],
                "next_cursor": rows[-1].id if limit is not None and len(rows) == limit else None}

    return app


def _snapshot_cursor(top: int, skip: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"top": top, "skip": skip}).encode()).decode()


def make_snapshot_offset_app(db: Any, *, how: str = "offset") -> FastAPI:
    """Wrong: OFFSET in disguise. The opaque cursor holds the newest id at the first page (so inserts do not shift
    it) and a row number; every page reads and drops the rows before it: OFFSET, ROW_NUMBER(), or a Python scan."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        if cursor is None:
            top, skip = session.scalar(select(func.max(Item.id))) or 0, 0
        else:
            try:
                state = json.loads(base64.urlsafe_b64decode(cursor.encode()))
                top, skip = int(state["top"]), int(state["skip"])
            except (ValueError, KeyError, TypeError) as error:
                raise HTTPException(400, "bad cursor") from error
        if how == "offset":
            rows = [(r.id, r.title) for r in session.scalars(
                select(Item).where(Item.id <= top).order_by(Item.id.desc()).offset(skip).limit(limit))]
        elif how == "row_number":
            rows = [tuple(r) for r in session.execute(text(
                "SELECT id, title FROM (SELECT id, title, ROW_NUMBER() OVER (ORDER BY id DESC) AS n FROM items "
                "WHERE id <= :top) AS numbered WHERE n > :skip AND n <= :stop ORDER BY n"),
                {"top": top, "skip": skip, "stop": skip + limit})]
        else:  # "scan": stream rows newest first and throw away the first `skip` in Python
            rows = []
            stream = session.execute(select(Item.id, Item.title).where(Item.id <= top).order_by(Item.id.desc())
                                     .execution_options(yield_per=500))
            for position, row in enumerate(stream):
                if position >= skip + limit:
                    break
                if position >= skip:
                    rows.append(tuple(row))
        return {"items": [{"id": i, "title": t} for i, t in rows],
                "next_cursor": _snapshot_cursor(top, skip + limit) if len(rows) == limit else None}

    return app


def make_raw_offset_app(db: Any, *, legacy: bool = False) -> FastAPI:
    """Wrong (SQLite): its own sqlite3 connection, the id cursor turned into OFFSET (or `LIMIT skip, count`)."""
    app = FastAPI()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20,
              cursor: Annotated[int | None, Query(ge=1)] = None) -> dict[str, Any]:
        with contextlib.closing(sqlite3.connect(db.path)) as conn:
            skip = 0 if cursor is None else conn.execute("SELECT count(*) FROM items WHERE id >= ?",
                                                         (cursor,)).fetchone()[0]
            sql = ("SELECT id, title FROM items ORDER BY id DESC LIMIT ?, ?" if legacy else
                   "SELECT id, title FROM items ORDER BY id DESC LIMIT ? OFFSET ?")
            rows = conn.execute(sql, (skip, limit) if legacy else (limit, skip)).fetchall()
        return {"items": [{"id": i, "title": t} for i, t in rows],
                "next_cursor": rows[-1][0] if len(rows) == limit else None}

    return app


def make_below_cursor_slice_app(db: Any) -> FastAPI:
    """Wrong: keyset WHERE, but no LIMIT in SQL: every row below the cursor is fetched, then sliced in Python."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: Annotated[int | None, Query(ge=1)] = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        stmt = select(Item.id, Item.title).order_by(Item.id.desc())
        if cursor is not None:
            stmt = stmt.where(Item.id < cursor)
        rows = session.execute(stmt).all()[:limit]
        return {"items": [{"id": i, "title": t} for i, t in rows],
                "next_cursor": rows[-1][0] if len(rows) == limit else None}

    return app


def make_memory_snapshot_app(db: Any) -> FastAPI:
    """Wrong: reads the whole table once when the app is built and pages through that copy (no SQL per page)."""
    with db.session() as session:
        rows = [(r.id, r.title) for r in session.scalars(select(Item).order_by(Item.id.desc()))]
    app = FastAPI()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20,
              cursor: Annotated[int | None, Query(ge=1)] = None) -> dict[str, Any]:
        page = [r for r in rows if cursor is None or r[0] < cursor][:limit]
        return {"items": [{"id": i, "title": t} for i, t in page],
                "next_cursor": page[-1][0] if len(page) == limit else None}

    return app


DISGUISES: list[tuple[Any, str]] = [
    (make_snapshot_offset_app, "statement(s) with OFFSET"),
    # SQLite numbers every row of the table; PostgreSQL stops numbering at the page, so only depth gives it away
    (lambda db: make_snapshot_offset_app(db, how="row_number"), "20,000-row table" if ON_SQLITE else "rows deep"),
    # SQLite steps the stream only as far as the page; PostgreSQL's re-run of the unbounded SELECT reads it all
    (lambda db: make_snapshot_offset_app(db, how="scan"), "rows deep" if ON_SQLITE else "20,000-row table"),
    (make_below_cursor_slice_app, "20,000-row table"),
    (make_memory_snapshot_app, "not a copy taken when the app started"),
]
DISGUISE_IDS = ["snapshot-offset", "snapshot-row-number", "snapshot-python-scan", "below-cursor-no-limit",
                "memory-snapshot"]
if dialect() == "sqlite":
    DISGUISES += [(make_raw_offset_app, "statement(s) with OFFSET"),
                  (lambda db: make_raw_offset_app(db, legacy=True), "statement(s) with OFFSET")]
    DISGUISE_IDS += ["raw-sqlite3-offset", "raw-sqlite3-limit-skip-count"]


@pytest.mark.parametrize("answer, measured", DISGUISES, ids=DISGUISE_IDS)
def test_keyset_offset_in_disguise_fails_and_says_why(answer: Any, measured: str):
    result = grade("04.keyset", answer)
    assert not result.passed
    assert measured in result.message, result.message
    assert result.hint


@pytest.mark.parametrize("answer, measured", [
    (lambda db: make_keyset_variant_app(db, default_limit=None), "without limit gave 250 items"),
    (lambda db: make_keyset_variant_app(db, parse_cursor=True), "a malformed cursor is the client's mistake"),
    (lambda db: make_keyset_variant_app(db, title_field="name"), "return the item's own fields"),
], ids=["no-default-limit", "cursor-crashes", "renamed-field"])
def test_keyset_wrong_details_fail_and_say_what(answer: Any, measured: str):
    result = grade("04.keyset", answer)
    assert not result.passed and measured in result.message, result.message


def test_keyset_variant_itself_passes_the_walks():
    """The variant builder with nothing wrong is a right answer, so each failure above is its one flaw."""
    assert grade("04.keyset", make_keyset_variant_app).passed


@pytest.mark.parametrize("answer, measured", [
    (make_offset_cursor_app, "came twice"),
    (make_uncapped_app, "GET /items?limit=101 answered 200, expected 422"),
    (make_load_all_app, "20,000-row table"),
    (make_count_then_offset_app, "statement(s) with OFFSET"),
    (make_oldest_first_app, "not newest first"),
    (lambda db: make_feed_app(db, tiebreaker=False), "never came"),
], ids=["offset-cursor", "uncapped", "load-all", "count-then-offset", "oldest-first", "non-unique-cursor"])
def test_keyset_wrong_answers_fail_and_say_what_was_measured(answer: Any, measured: str):
    result = grade("04.keyset", answer)
    assert not result.passed
    assert measured in result.message, result.message
    assert result.hint


def test_keyset_checker_survives_odd_answers():
    def raises(db: Any) -> FastAPI:
        raise RuntimeError("boom")

    def not_done(db: Any) -> FastAPI:
        raise NotImplementedError()

    cases = [(None, "None"), (42, "expected a function"), (raises, "RuntimeError: boom"),
             (lambda db: None, "not a FastAPI app"), (not_done, "NotImplementedError")]
    for answer, expected in cases:
        result = grade("04.keyset", answer)
        assert not result.passed and expected in result.message, result.message


def test_keyset_checker_gives_up_on_a_hanging_answer_within_its_limit():
    hang_s = 5

    def hangs(db: Any) -> FastAPI:
        time.sleep(hang_s)
        return FastAPI()

    start = time.perf_counter()
    result = grade("04.keyset", hangs, timeout=1)
    assert not result.passed and "did not finish within 1 s" in result.message
    assert time.perf_counter() - start < hang_s  # it did not wait for the answer


# ---------- 04.gzip ----------

XZ = (*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/x-xz")


reference_gzip = add_gzip  # the solution (sources/answers/l04_pagination.py, spliced into solutions/04)


def path_dispatch_gzip(app: FastAPI) -> Any:
    """Right, written another way: a function-style ASGI middleware sends the archive around the compressor."""
    compressed = GZipMiddleware(app, minimum_size=1_000, compresslevel=1)

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        target = app if scope["type"] == "http" and scope["path"] == "/items/archive" else compressed
        await target(scope, receive, send)

    return asgi


def test_gzip_reference_passes():
    result = grade("04.gzip", reference_gzip)
    assert result.passed, result.message
    assert result.figures["export_ratio"] >= 5


@pytest.mark.parametrize("answer", [
    lambda app: GZipMiddleware(app, minimum_size=1_050, compresslevel=9, exclude_content_types=XZ),
    path_dispatch_gzip,
], ids=["wrapped-instance", "function-style-dispatch"])
def test_gzip_right_answers_written_differently_pass(answer: Any):
    result = grade("04.gzip", answer)
    assert result.passed, result.message


def default_gzip(app: FastAPI) -> FastAPI:
    """Wrong: Starlette's defaults compress responses smaller than one packet."""
    app.add_middleware(GZipMiddleware)
    return app


@pytest.mark.parametrize("answer, measured", [
    (default_gzip, "GET /items?limit=8 (939 bytes, under the rule's 1,024) was sent with Content-Encoding gzip"),
    (with_gzip, "GET /items?limit=9 is 1,056 bytes of JSON, at least the 1,024 of the rule"),  # the lesson's cell
    (lambda app: GZipMiddleware(app, minimum_size=1_024), "already compressed) was sent with Content-Encoding gzip"),
    (lambda app: app, "Content-Encoding identity"),
    (lambda app: GZipMiddleware(app, minimum_size=1_000, compresslevel=0, exclude_content_types=XZ), "expected ≥ 5×"),
    (lambda app: GZipMiddleware(app, minimum_size=50_000, exclude_content_types=XZ),
     "GET /items?limit=100 is 11,752 bytes of JSON"),
    (lambda app: app.add_middleware(GZipMiddleware, minimum_size=2_000), "add_middleware(...)` returns None"),
    (lambda app: GZipMiddleware, "returned the class GZipMiddleware itself, not an app"),
    (lambda app: (lambda request: request), "did not serve requests as an ASGI app"),
], ids=["defaults", "lesson-cell-copied", "archive-compressed", "no-gzip", "level-0", "threshold-too-high",
        "returns-none", "returns-the-class", "returns-a-non-asgi-callable"])
def test_gzip_wrong_answers_fail_and_say_what_was_measured(answer: Any, measured: str):
    result = grade("04.gzip", answer)
    assert not result.passed
    assert measured in result.message, result.message
    assert "Lifespan" not in result.message and "checker could not use" not in result.message


def test_gzip_checker_survives_odd_answers():
    def raises(app: Any) -> Any:
        raise KeyError("x")

    for answer, expected in [(None, "None"), ("gzip", "expected a function"), (raises, "KeyError")]:
        result = grade("04.gzip", answer)
        assert not result.passed and expected in result.message, result.message


# ---------- reruns (issue 14) ----------

def test_feed_index_cell_runs_twice_and_leaves_the_shared_table_alone():
    """The lesson's index cell, twice in one process: no collision, Item.__table__ untouched, later tables bare."""
    from sqlalchemy import inspect

    for _ in range(2):
        with make_items_db(200) as db:
            with feed_index(db) as name:
                assert [ix["name"] for ix in inspect(db.engine).get_indexes("items")] == [name]
                assert "USING INDEX " + name in explain_feed(db) if dialect() == "sqlite" else True
            assert inspect(db.engine).get_indexes("items") == []
        assert Item.__table__.indexes == set()
    with make_items_db(10) as later:
        assert inspect(later.engine).get_indexes("items") == []  # the "before" timings see no stray index


def explain_feed(db: Any) -> str:
    """SQLite's plan for the first page of the (created_at, id) feed."""
    with db.engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN SELECT * FROM items ORDER BY created_at DESC, id DESC "
                                    "LIMIT 20").all()
    return "; ".join(row[-1] for row in rows)


def test_watch_database_sees_raw_sqlite3_and_sqlalchemy_and_lets_go_after():
    """Every statement is seen, whoever opens the connection; after the block nothing reports to it any more."""
    connect = sqlite3.connect
    with make_items_db(50) as db, watch_database() as watch:
        watch.observe(db)
        with db.engine.connect() as conn:
            conn.execute(select(Item.id).order_by(Item.id.desc()).limit(5).offset(10)).all()
        raw = sqlite3.connect(db.path) if db.path else None
        if raw is not None:
            mark = watch.mark()
            raw.execute("SELECT id FROM items ORDER BY id DESC LIMIT 3, 5").fetchall()
            raw.execute("SELECT count(*) FROM items WHERE title LIKE '%a%'").fetchall()  # reads all 50 rows
            assert watch.work_since(mark) > 0 and len(watch.since(mark)) == 2
    assert any("OFFSET" in sql for sql in watch.statements)
    if raw is not None:
        assert any("LIMIT 3, 5" in sql for sql in watch.statements)
        seen, steps = len(watch.statements), watch.steps
        raw.execute("SELECT count(*) FROM items WHERE title LIKE '%e%'").fetchall()
        raw.close()
        assert len(watch.statements) == seen and watch.steps == steps
    assert sqlite3.connect is connect and sqlite3.dbapi2.connect is connect
