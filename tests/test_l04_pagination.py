"""Lesson 04: the items table, the demo apps' behaviour (exact counts), and both graders with right and wrong answers."""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import gzip
import json
import sqlite3
import time
import uuid
from datetime import datetime
from typing import Annotated, Any

import pytest
from answers.l04_pagination import add_gzip
from answers.l04_pagination import make_app as make_keyset_reference
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy import and_, func, or_, select, text, tuple_
from sqlalchemy.orm import Session
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware

from course_lib.client import app_client
from course_lib.db import dialect
from course_lib.grading import grade
from course_lib.lessons.l04_pagination import (
    PRICE_INDEX,
    Item,
    add_items,
    bench,
    cheapest_ids,
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


def test_prices_have_ties_at_every_size_and_a_tie_never_grows_with_the_table():
    with make_items_db(20_000) as db, db.engine.connect() as conn:
        def ties(rows: int) -> list[int]:
            return list(conn.scalars(select(func.count()).select_from(Item).where(Item.id <= rows)
                                     .group_by(Item.price_cents)))

        for rows in (45, 250, 1_000, 20_000):
            per_price = ties(rows)
            assert sum(per_price) == rows and max(per_price) <= 6  # several items per price, never more than 6
            assert sum(n for n in per_price if n > 1) >= rows * 0.6, "most items share their price"
        pairs = conn.execute(select(Item.price_cents, Item.id).order_by(Item.price_cents, Item.id)).all()
        assert [p.id for p in pairs] == cheapest_ids(db)


def test_add_items_with_a_price_and_the_price_index():
    from sqlalchemy import inspect

    with make_items_db(45, price_index=True) as db:
        order = cheapest_ids(db)
        assert [ix["name"] for ix in inspect(db.engine).get_indexes("items")] == [PRICE_INDEX]
        new = add_items(db, 3, price_cents=0)
        assert new == [46, 47, 48] and cheapest_ids(db) == new + order  # cheaper than all: first, ties by id
        add_items(db, 1)  # without a price: the item's own, as before
        with db.session() as session:
            assert session.scalar(select(Item.price_cents).where(Item.id == 49)) >= 99
    assert Item.__table__.indexes == set()
    with make_items_db(10) as plain:
        assert inspect(plain.engine).get_indexes("items") == []  # the lesson's demos: no index unless asked


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


def _split_cursor(cursor: str) -> tuple[int, int]:
    """A "price:id" cursor as two ints; 400 for anything else (the wrong answers below share it)."""
    price, sep, last = cursor.partition(":")
    if not (sep and price.isdigit() and last.isdigit()):
        raise HTTPException(400, "bad cursor")
    return int(price), int(last)


def _rows(rows: Any) -> list[dict[str, Any]]:
    return [{"id": r.id, "title": r.title, "price_cents": r.price_cents} for r in rows]


def make_expanded_keyset_app(db: Any) -> FastAPI:
    """Right, written another way: the pair comparison expanded into ANDs and ORs behind a leading `price >=`
    (so the index seeks), a plain "price:id" cursor checked by a Query pattern (422 on garbage)."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20,
              cursor: Annotated[str | None, Query(pattern=r"^\d+:\d+$")] = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        stmt = select(Item).order_by(Item.price_cents, Item.id).limit(limit)
        if cursor is not None:
            price, last = map(int, cursor.split(":"))
            stmt = stmt.where(Item.price_cents >= price, or_(Item.price_cents > price, Item.id > last))
        rows = session.scalars(stmt).all()
        return {"items": _rows(rows),
                "next_cursor": f"{rows[-1].price_cents}:{rows[-1].id}" if len(rows) == limit else None}

    return app


class PriceCursor(BaseModel):
    price: int
    id: int


def make_core_keyset_app(db: Any) -> FastAPI:
    """Right, written another way: Core `select(items_table)` on `connection.execute`, limit + 1 rows to know if
    there is more, a cursor that is a pydantic model as base64 JSON (ValidationError → 400)."""
    items_table = Item.__table__
    app = FastAPI()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None) -> dict[str, Any]:
        c = items_table.c
        stmt = select(items_table).order_by(c.price_cents, c.id).limit(limit + 1)
        if cursor is not None:
            try:
                after = PriceCursor.model_validate_json(base64.urlsafe_b64decode(cursor.encode()))
            except (ValueError, ValidationError) as error:
                raise HTTPException(400, "bad cursor") from error
            stmt = stmt.where(tuple_(c.price_cents, c.id) > tuple_(after.price, after.id))
        with db.engine.connect() as connection:
            rows = connection.execute(stmt).all()
        page = rows[:limit]
        token = (base64.urlsafe_b64encode(PriceCursor(price=page[-1].price_cents, id=page[-1].id)
                                          .model_dump_json().encode()).decode() if len(rows) > limit else None)
        return {"items": _rows(page), "next_cursor": token}

    return app


def make_text_sql_keyset_app(db: Any) -> FastAPI:
    """Right, written another way: a row-value comparison in `text()` SQL (both databases), JSON cursor unencoded."""
    app = FastAPI()
    page_sql = text("SELECT id, title, price_cents FROM items WHERE (price_cents, id) > (:price, :last) "
                    "ORDER BY price_cents, id LIMIT :n")

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None) -> dict[str, Any]:
        try:
            price, last = json.loads(cursor) if cursor is not None else (-1, 0)
            params = {"price": int(price), "last": int(last), "n": limit}
        except (ValueError, TypeError) as error:
            raise HTTPException(400, "bad cursor") from error
        with db.engine.connect() as conn:
            rows = conn.execute(page_sql, params).all()
        return {"items": _rows(rows),
                "next_cursor": json.dumps([rows[-1].price_cents, rows[-1].id]) if len(rows) == limit else None}

    return app


def make_raw_sqlite_keyset_app(db: Any) -> FastAPI:
    """Right on SQLite, written another way: its own sqlite3 connection to db.path (the grader still sees it)."""
    app = FastAPI()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None) -> dict[str, Any]:
        price, last = _split_cursor(cursor) if cursor is not None else (-1, 0)
        with contextlib.closing(sqlite3.connect(db.path)) as conn:
            rows = conn.execute("SELECT id, title FROM items WHERE (price_cents, id) > (?, ?) "
                                "ORDER BY price_cents, id LIMIT ?", (price, last, limit)).fetchall()
            prices = dict(conn.execute(f"SELECT id, price_cents FROM items WHERE id IN ({','.join('?' * len(rows))})",
                                       [r[0] for r in rows]).fetchall()) if rows else {}
        return {"items": [{"id": i, "title": t} for i, t in rows],
                "next_cursor": f"{prices[rows[-1][0]]}:{rows[-1][0]}" if len(rows) == limit else None}

    return app


RIGHT_KEYSETS = [make_expanded_keyset_app, make_core_keyset_app, make_text_sql_keyset_app]
RIGHT_IDS = ["or-expanded-seekable-price-id-string", "core-table-pydantic-cursor", "text-sql-row-value-json-cursor"]
if ON_SQLITE:
    RIGHT_KEYSETS.append(make_raw_sqlite_keyset_app)
    RIGHT_IDS.append("raw-sqlite3")


@pytest.mark.parametrize("answer", RIGHT_KEYSETS, ids=RIGHT_IDS)
def test_keyset_right_answers_written_other_ways_pass(answer: Any):
    result = grade("04.keyset", answer)
    assert result.passed, result.message
    assert result.figures["last_page_vs_small_table"] <= 3


# ---------- 04.keyset: wrong answers ----------

def make_keyset_variant_app(db: Any, *, default_limit: int | None = 20, le: int | None = 100, ge: int | None = 1,
                            parse_cursor: bool = False, title_field: str = "title", compare: str = "pair",
                            shape: str = "page", last_cursor: bool = True) -> FastAPI:
    """Keyset pages cheapest first, with (at most) one thing wrong: no default limit, no bounds or only `le=100`,
    a cursor parsed without a check (500), a renamed field, the cursor compared on the price alone (`>` or `>=`),
    on the id alone, or as a bare OR; a bare list; a next_cursor on the last page too."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: int | None = Query(default_limit, ge=ge, le=le), cursor: str | None = None,
              session: Session = Depends(get_db)) -> Any:
        stmt = select(Item).order_by(Item.price_cents, Item.id)
        if limit is not None:
            stmt = stmt.limit(limit)
        if cursor is not None:
            price, last = map(int, cursor.split(":")) if parse_cursor else _split_cursor(cursor)
            stmt = stmt.where({
                "pair": lambda: tuple_(Item.price_cents, Item.id) > tuple_(price, last),
                "price>": lambda: Item.price_cents > price,
                "price>=": lambda: Item.price_cents >= price,
                "id": lambda: Item.id > last,
                "bare-or": lambda: or_(Item.price_cents > price, and_(Item.price_cents == price, Item.id > last)),
            }[compare]())
        rows = session.scalars(stmt).all()
        found = [{"id": r.id, title_field: r.title} for r in rows]
        if shape == "list":
            return found
        next_cursor = f"{rows[-1].price_cents}:{rows[-1].id}" if rows and len(rows) == limit else None
        if not last_cursor:  # never null: on the last page, the last item's key (or the cursor it was given)
            next_cursor = f"{rows[-1].price_cents}:{rows[-1].id}" if rows else cursor or "0:0"
        return {"items": found, "next_cursor": next_cursor}

    return app


def test_bare_counts_finds_only_a_count_of_the_whole_table():
    from course_lib.lessons.l04_pagination import _bare_counts

    bare = "SELECT count(*) AS count_1 FROM items"
    statements = [bare, "SELECT count(*) FROM items WHERE price_cents > 500",
                  "SELECT id FROM items WHERE (price_cents, id) > (500, 3) ORDER BY price_cents, id LIMIT 20", "BEGIN"]
    assert _bare_counts(statements) == ([bare] if ON_SQLITE else [])


def test_padding_bodies_are_json_of_the_exact_size():
    from course_lib.lessons.l04_pagination import PADDING_MIN, padding_body

    for size in (PADDING_MIN, 13, 1_023, 1_024, 5_000):
        body = padding_body(size)
        assert len(body) == size and isinstance(json.loads(body)["pad"], str)
    assert padding_body(1_023) != padding_body(1_024)[:1_023]


def test_keyset_variant_itself_passes_the_walks():
    """The variant builder with nothing wrong is a right answer, so each failure below is its one flaw."""
    result = grade("04.keyset", make_keyset_variant_app)
    assert result.passed, result.message


@pytest.mark.parametrize("compare, seen", [("price>", "were skipped"), ("price>=", "came again")],
                         ids=["price-only-greater", "price-only-greater-or-equal"])
def test_a_cursor_on_the_price_alone_fails_on_the_ties(compare: str, seen: str):
    result = grade("04.keyset", lambda db: make_keyset_variant_app(db, compare=compare))
    assert not result.passed
    assert seen in result.message and "a cursor that keeps only the price" in result.message, result.message
    assert "The cursor must carry the id too" in result.message


def make_offset_cursor_app(db: Any) -> FastAPI:
    """Wrong: the 'cursor' is just the next offset, so cheaper items inserted between pages shift it."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: Annotated[int, Query(ge=0)] = 0,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        rows = session.scalars(select(Item).order_by(Item.price_cents, Item.id).offset(cursor).limit(limit)).all()
        return {"items": _rows(rows), "next_cursor": cursor + limit if len(rows) == limit else None}

    return app


def make_load_all_app(db: Any) -> FastAPI:
    """Wrong: stable and complete, but loads every row and slices in Python."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        after = _split_cursor(cursor) if cursor is not None else (-1, 0)
        rows = [r for r in session.scalars(select(Item).order_by(Item.price_cents, Item.id)).all()
                if (r.price_cents, r.id) > after]
        page = rows[:limit]
        return {"items": _rows(page),
                "next_cursor": f"{page[-1].price_cents}:{page[-1].id}" if len(rows) > limit else None}

    return app


def make_count_then_offset_app(db: Any) -> FastAPI:
    """Wrong: the cursor is the pair (stable under inserts) but is turned into an OFFSET by counting the rows up to
    it on every page."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        skip = 0
        if cursor is not None:
            price, last = _split_cursor(cursor)
            skip = session.scalar(select(func.count()).select_from(Item)
                                  .where(tuple_(Item.price_cents, Item.id) <= tuple_(price, last))) or 0
        rows = session.scalars(select(Item).order_by(Item.price_cents, Item.id).offset(skip).limit(limit)).all()
        return {"items": _rows(rows),
                "next_cursor": f"{rows[-1].price_cents}:{rows[-1].id}" if len(rows) == limit else None}

    return app


def make_counted_seek_app(db: Any) -> FastAPI:
    """Wrong: a seek, but every page also counts the rows before the cursor (for a "position" field)."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        price, last = _split_cursor(cursor) if cursor is not None else (-1, 0)
        before = session.scalar(select(func.count()).select_from(Item)
                                .where(tuple_(Item.price_cents, Item.id) <= tuple_(price, last)))
        rows = session.scalars(select(Item).where(tuple_(Item.price_cents, Item.id) > tuple_(price, last))
                               .order_by(Item.price_cents, Item.id).limit(limit)).all()
        return {"items": _rows(rows), "position": before,
                "next_cursor": f"{rows[-1].price_cents}:{rows[-1].id}" if len(rows) == limit else None}

    return app


def make_server_position_app(db: Any) -> FastAPI:
    """Wrong: the position lives in the process (the cursor a constant token): safe for one reader only."""
    last: dict[str, tuple[int, int]] = {}
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        if cursor is None:
            last.pop("key", None)
        elif cursor != "next":
            raise HTTPException(400, "bad cursor")
        stmt = select(Item).order_by(Item.price_cents, Item.id).limit(limit)
        if "key" in last:
            stmt = stmt.where(tuple_(Item.price_cents, Item.id) > tuple_(*last["key"]))
        rows = session.scalars(stmt).all()
        if rows:
            last["key"] = (rows[-1].price_cents, rows[-1].id)
        return {"items": _rows(rows), "next_cursor": "next" if len(rows) == limit else None}

    return app


def make_memory_snapshot_app(db: Any) -> FastAPI:
    """Wrong: reads the whole table once when the app is built and pages through that copy (no SQL per page)."""
    with db.session() as session:
        rows = _rows(session.scalars(select(Item).order_by(Item.price_cents, Item.id)))
    app = FastAPI()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None) -> dict[str, Any]:
        after = _split_cursor(cursor) if cursor is not None else (-1, 0)
        page = [r for r in rows if (r["price_cents"], r["id"]) > after][:limit]
        return {"items": page,
                "next_cursor": f"{page[-1]['price_cents']}:{page[-1]['id']}" if len(page) == limit else None}

    return app


def make_server_token_app(db: Any) -> FastAPI:
    """Wrong: the cursor is a random token mapped to (price, id) in a dict of this process: another worker (or a
    restart) does not know it."""
    positions: dict[str, tuple[int, int]] = {}
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        stmt = select(Item).order_by(Item.price_cents, Item.id).limit(limit)
        if cursor is not None:
            if cursor not in positions:
                raise HTTPException(400, "unknown cursor")
            stmt = stmt.where(tuple_(Item.price_cents, Item.id) > tuple_(*positions[cursor]))
        rows = session.scalars(stmt).all()
        token = None
        if len(rows) == limit:
            token = uuid.uuid4().hex
            positions[token] = (rows[-1].price_cents, rows[-1].id)
        return {"items": _rows(rows), "next_cursor": token}

    return app


def make_price_slack_app(db: Any, slack: int = 10) -> FastAPI:
    """Wrong: WHERE price_cents >= p (the index seeks), LIMIT limit + slack, the ties already seen dropped in
    Python: right only while fewer than `slack` items of the cursor's price came before it."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        stmt = select(Item).order_by(Item.price_cents, Item.id)
        after = _split_cursor(cursor) if cursor is not None else None
        if after is not None:
            stmt = stmt.where(Item.price_cents >= after[0])
        rows = [r for r in session.scalars(stmt.limit(limit + slack)) if after is None or (r.price_cents, r.id) > after]
        page = rows[:limit]
        return {"items": _rows(page),
                "next_cursor": f"{page[-1].price_cents}:{page[-1].id}" if len(page) == limit else None}

    return app


def make_price_created_id_app(db: Any) -> FastAPI:
    """Wrong: ties broken by created_at, then id (right only where created_at grows with id)."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        stmt = select(Item).order_by(Item.price_cents, Item.created_at, Item.id).limit(limit)
        if cursor is not None:
            try:
                price, stamp, last = json.loads(base64.urlsafe_b64decode(cursor))
                key = (int(price), datetime.fromisoformat(stamp), int(last))
            except (ValueError, TypeError) as error:
                raise HTTPException(400, "bad cursor") from error
            stmt = stmt.where(tuple_(Item.price_cents, Item.created_at, Item.id) > tuple_(*key))
        rows = session.scalars(stmt).all()
        token = None
        if len(rows) == limit:
            r = rows[-1]
            token = base64.urlsafe_b64encode(json.dumps([r.price_cents, r.created_at.isoformat(), r.id]).encode()).decode()
        return {"items": _rows(rows), "next_cursor": token}

    return app


def make_cached_order_app(db: Any) -> FastAPI:
    """Wrong: the order (every (price_cents, id)) cached in the process, rebuilt only when max(id) changes; each
    page reads its rows fresh by id. A repriced item keeps its old place, a deleted one leaves a short page."""
    state: dict[str, Any] = {"top": object(), "keys": []}
    app = FastAPI()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None) -> dict[str, Any]:
        after = _split_cursor(cursor) if cursor is not None else None
        with db.engine.connect() as conn:
            top = conn.scalar(select(func.max(Item.id)))
            if top != state["top"]:
                state["keys"] = [tuple(r) for r in conn.execute(select(Item.price_cents, Item.id)
                                                                .order_by(Item.price_cents, Item.id))]
                state["top"] = top
            keys = state["keys"]
            start = bisect.bisect_right(keys, after) if after is not None else 0
            wanted = [i for _, i in keys[start:start + limit]]
            found = {r.id: r for r in conn.execute(select(Item.id, Item.title, Item.price_cents)
                                                   .where(Item.id.in_(wanted)))} if wanted else {}
        page = [found[i] for i in wanted if i in found]
        return {"items": _rows(page),
                "next_cursor": f"{page[-1].price_cents}:{page[-1].id}" if len(page) == limit else None}

    return app


def make_except_valueerror_app(db: Any) -> FastAPI:
    """Wrong: a base64 JSON cursor decoded under `except ValueError` only: base64 of null, 5 or true is a TypeError
    when unpacked (500)."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        stmt = select(Item).order_by(Item.price_cents, Item.id).limit(limit)
        if cursor is not None:
            try:
                price, last = json.loads(base64.urlsafe_b64decode(cursor))
            except ValueError as error:
                raise HTTPException(400, "bad cursor") from error
            stmt = stmt.where(tuple_(Item.price_cents, Item.id) > tuple_(price, last))
        rows = session.scalars(stmt).all()
        token = (base64.urlsafe_b64encode(json.dumps([rows[-1].price_cents, rows[-1].id]).encode()).decode()
                 if len(rows) == limit else None)
        return {"items": _rows(rows), "next_cursor": token}

    return app


def make_total_app(db: Any) -> FastAPI:
    """Wrong: a right keyset page plus "total", a bare `SELECT count(*) FROM items` on every page (SQLite runs it
    as one VM instruction, OP_Count, that walks the whole b-tree: a step count cannot see it)."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        stmt = select(Item).order_by(Item.price_cents, Item.id).limit(limit)
        if cursor is not None:
            stmt = stmt.where(tuple_(Item.price_cents, Item.id) > tuple_(*_split_cursor(cursor)))
        rows = session.scalars(stmt).all()
        return {"items": _rows(rows), "total": session.scalar(select(func.count()).select_from(Item)),
                "next_cursor": f"{rows[-1].price_cents}:{rows[-1].id}" if len(rows) == limit else None}

    return app


WRONG_ON_SQLITE = [(make_total_app, "count the whole table")] if ON_SQLITE else []
WRONG_ON_SQLITE_IDS = ["bare-count-total-on-every-page"] if ON_SQLITE else []


@pytest.mark.parametrize("answer, measured", [
    (make_keyset_app, "every id came once but not cheapest first"),  # the lesson's demo, copied
    (lambda db: make_keyset_variant_app(db, compare="id"), "the condition on the cursor must follow the same order"),
    (make_offset_cursor_app, "came twice"),
    (make_load_all_app, "20,000-row table"),
    (make_count_then_offset_app, "statement(s) with OFFSET"),
    (make_counted_seek_app, "a count"),
    (make_server_position_app, "two clients walked 250 items at once"),
    (make_memory_snapshot_app, "not a copy taken when the app started"),
    (lambda db: make_keyset_variant_app(db, compare="bare-or"), "such as a bare OR"),
    (lambda db: make_keyset_variant_app(db, le=None, ge=None), "GET /items?limit=101 answered 200, expected 422"),
    (lambda db: make_keyset_variant_app(db, ge=None), "GET /items?limit=0 answered 200, expected 422"),
    (lambda db: make_keyset_variant_app(db, last_cursor=False), "came back empty but next_cursor was"),
    (lambda db: make_keyset_variant_app(db, shape="list"), "expected an object"),
    (lambda db: make_keyset_variant_app(db, parse_cursor=True), "a malformed cursor is the client's mistake"),
    (lambda db: make_keyset_variant_app(db, default_limit=None), "without limit gave 250 items"),
    (lambda db: make_keyset_variant_app(db, title_field="name"), "return the item's own fields"),
    (make_server_token_app, "with the cursor instance A gave"),
    (make_price_slack_app, "a tie longer than a page"),
    (lambda db: make_price_slack_app(db, slack=100), "a tie longer than a page"),
    (make_price_created_id_app, "every id came once but not cheapest first"),
    (make_cached_order_app, "not an order kept in the process"),
    (make_except_valueerror_app, "(base64 of JSON null) answered 500"),
    *WRONG_ON_SQLITE,
], ids=["newest-first-lesson-copy", "id-only-cursor", "offset-cursor", "load-all", "count-then-offset",
        "count-per-page", "position-in-a-server-variable", "memory-snapshot", "bare-or", "uncapped", "only-le-100",
        "next-cursor-never-null", "bare-list", "cursor-crashes", "no-default-limit", "renamed-field",
        "cursor-token-kept-in-the-process", "price-seek-with-fixed-slack", "price-seek-with-slack-100", "ties-by-created-at-then-id",
        "order-cached-until-max-id-changes", "cursor-decoded-under-except-valueerror-only", *WRONG_ON_SQLITE_IDS])
def test_keyset_wrong_answers_fail_and_say_what_was_measured(answer: Any, measured: str):
    result = grade("04.keyset", answer)
    assert not result.passed
    assert measured in result.message, result.message
    assert result.hint


def _snapshot_cursor(top: int, skip: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"top": top, "skip": skip}).encode()).decode()


def make_snapshot_offset_app(db: Any, *, how: str = "offset") -> FastAPI:
    """Wrong: OFFSET in disguise. The opaque cursor holds the highest id at the first page (items inserted later are
    left out, so they do not shift it) and a row number; every page reads and drops the rows before it: OFFSET,
    ROW_NUMBER(), or a Python scan."""
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
        ordered = select(Item.id, Item.title).where(Item.id <= top).order_by(Item.price_cents, Item.id)
        if how == "offset":
            rows = [tuple(r) for r in session.execute(ordered.offset(skip).limit(limit))]
        elif how == "row_number":
            rows = [tuple(r) for r in session.execute(text(
                "SELECT id, title FROM (SELECT id, title, ROW_NUMBER() OVER (ORDER BY price_cents, id) AS n "
                "FROM items WHERE id <= :top) AS numbered WHERE n > :skip AND n <= :stop ORDER BY n"),
                {"top": top, "skip": skip, "stop": skip + limit})]
        else:  # "scan": stream rows in order and throw away the first `skip` in Python
            rows = []
            for position, row in enumerate(session.execute(ordered.execution_options(yield_per=500))):
                if position >= skip + limit:
                    break
                if position >= skip:
                    rows.append(tuple(row))
        return {"items": [{"id": i, "title": t} for i, t in rows],
                "next_cursor": _snapshot_cursor(top, skip + limit) if len(rows) == limit else None}

    return app


def make_raw_offset_app(db: Any, *, legacy: bool = False) -> FastAPI:
    """Wrong (SQLite): its own sqlite3 connection, the "price:id" cursor turned into OFFSET (or `LIMIT skip, count`)
    by counting the rows up to it."""
    app = FastAPI()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None) -> dict[str, Any]:
        after = _split_cursor(cursor) if cursor is not None else (-1, 0)
        with contextlib.closing(sqlite3.connect(db.path)) as conn:
            skip = conn.execute("SELECT count(*) FROM items WHERE (price_cents, id) <= (?, ?)", after).fetchone()[0]
            sql = ("SELECT id, title, price_cents FROM items ORDER BY price_cents, id LIMIT ?, ?" if legacy else
                   "SELECT id, title, price_cents FROM items ORDER BY price_cents, id LIMIT ? OFFSET ?")
            rows = conn.execute(sql, (skip, limit) if legacy else (limit, skip)).fetchall()
        return {"items": [{"id": i, "title": t} for i, t, _ in rows],
                "next_cursor": f"{rows[-1][2]}:{rows[-1][0]}" if len(rows) == limit else None}

    return app


def make_after_cursor_slice_app(db: Any) -> FastAPI:
    """Wrong: the keyset WHERE, but no LIMIT in SQL: every row after the cursor is fetched, then sliced in Python."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/items")
    def items(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None,
              session: Session = Depends(get_db)) -> dict[str, Any]:
        price, last = _split_cursor(cursor) if cursor is not None else (-1, 0)
        stmt = (select(Item.id, Item.title, Item.price_cents).order_by(Item.price_cents, Item.id)
                .where(tuple_(Item.price_cents, Item.id) > tuple_(price, last)))
        rows = session.execute(stmt).all()[:limit]
        return {"items": [{"id": i, "title": t} for i, t, _ in rows],
                "next_cursor": f"{rows[-1][2]}:{rows[-1][0]}" if len(rows) == limit else None}

    return app


DISGUISES: list[tuple[Any, str]] = [
    (make_snapshot_offset_app, "statement(s) with OFFSET"),
    # SQLite numbers every row of the table; PostgreSQL stops numbering at the page, so only depth gives it away
    (lambda db: make_snapshot_offset_app(db, how="row_number"), "20,000-row table" if ON_SQLITE else "rows deep"),
    # SQLite steps the stream only as far as the page; PostgreSQL's re-run of the unbounded SELECT reads it all
    (lambda db: make_snapshot_offset_app(db, how="scan"), "rows deep" if ON_SQLITE else "20,000-row table"),
    (make_after_cursor_slice_app, "20,000-row table"),
]
DISGUISE_IDS = ["snapshot-offset", "snapshot-row-number", "snapshot-python-scan", "after-cursor-no-limit"]
if ON_SQLITE:
    DISGUISES += [(make_raw_offset_app, "statement(s) with OFFSET"),
                  (lambda db: make_raw_offset_app(db, legacy=True), "statement(s) with OFFSET")]
    DISGUISE_IDS += ["raw-sqlite3-offset", "raw-sqlite3-limit-skip-count"]


@pytest.mark.parametrize("answer, measured", DISGUISES, ids=DISGUISE_IDS)
def test_keyset_offset_in_disguise_fails_and_says_why(answer: Any, measured: str):
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
    compressed = GZipMiddleware(app, minimum_size=1_024, compresslevel=1)

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        target = app if scope["type"] == "http" and scope["path"] == "/items/archive" else compressed
        await target(scope, receive, send)

    return asgi


def http_middleware_gzip(app: FastAPI) -> FastAPI:
    """Right, written another way: an `@app.middleware("http")` function that gzips bodies of 1,024 bytes or more
    itself (state in the call, not on an object), leaving xz alone and honouring Accept-Encoding."""
    @app.middleware("http")
    async def gz(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        body = b"".join([chunk async for chunk in response.body_iterator])
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        if ("gzip" in request.headers.get("accept-encoding", "") and len(body) >= 1_024
                and not response.headers.get("content-type", "").startswith("application/x-xz")):
            headers["content-encoding"] = "gzip"
            body = gzip.compress(body, compresslevel=6)
        return Response(body, status_code=response.status_code, headers=headers)

    return app


class SharedStateGzip:
    """Wrong (safe one request at a time): a hand-written gzip middleware that keeps the response being built on
    `self`; requests in flight together overwrite each other's start message and body chunks."""

    def __init__(self, app: Any, minimum_size: int = 1_024) -> None:
        self.app, self.minimum_size = app, minimum_size
        self.start: dict[str, Any] = {}
        self.chunks: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accepts = b"gzip" in dict(scope["headers"]).get(b"accept-encoding", b"")
        self.chunks = []

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.start = message
                return
            self.chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await asyncio.sleep(0)  # any await: another request runs meanwhile
            body = b"".join(self.chunks)
            headers = [(k, v) for k, v in self.start["headers"] if k.lower() != b"content-length"]
            if (accepts and len(body) >= self.minimum_size
                    and not dict(self.start["headers"]).get(b"content-type", b"").startswith(b"application/x-xz")):
                body = gzip.compress(body)
                headers.append((b"content-encoding", b"gzip"))
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**self.start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)


def test_gzip_reference_passes():
    result = grade("04.gzip", reference_gzip)
    assert result.passed, result.message
    assert result.figures["export_ratio"] >= 5


@pytest.mark.parametrize("answer", [
    lambda app: GZipMiddleware(app, minimum_size=1_024, compresslevel=9, exclude_content_types=XZ),
    path_dispatch_gzip,
    http_middleware_gzip,
], ids=["wrapped-instance", "function-style-dispatch", "http-middleware-function"])
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
    (lambda app: GZipMiddleware(app, minimum_size=1_000, exclude_content_types=XZ),
     "GET /padding?size=1023 (1,023 bytes, under the rule's 1,024) was sent with Content-Encoding gzip"),
    (lambda app: GZipMiddleware(app, minimum_size=940, exclude_content_types=XZ),
     "GET /padding?size=1023 (1,023 bytes, under the rule's 1,024) was sent with Content-Encoding gzip"),
    (lambda app: GZipMiddleware(app, minimum_size=1_025, exclude_content_types=XZ),
     "GET /padding?size=1024 is 1,024 bytes of JSON, at least the 1,024 of the rule"),
    (lambda app: GZipMiddleware(app, minimum_size=1_056, exclude_content_types=XZ),
     "GET /padding?size=1024 is 1,024 bytes of JSON, at least the 1,024 of the rule"),
    (SharedStateGzip, "requests running at the same time got mixed up"),
], ids=["defaults", "lesson-cell-copied", "archive-compressed", "no-gzip", "level-0", "threshold-too-high",
        "returns-none", "returns-the-class", "returns-a-non-asgi-callable", "threshold-1000", "threshold-940",
        "threshold-1025", "threshold-1056", "state-on-self-mixed-by-concurrent-requests"])
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
