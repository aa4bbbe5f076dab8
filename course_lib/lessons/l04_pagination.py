"""Lesson 04 (pagination + gzip): an items table built fast, list endpoints (unbounded, offset, keyset), graders."""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import json
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, HTTPException, Query
from pydantic import BaseModel, ConfigDict
from sqlalchemy import DateTime, String, func, insert, select, tuple_
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from starlette.middleware.gzip import GZipMiddleware

from ..bench import BenchRow
from ..client import app_client
from ..db import DemoDB, dialect, fresh_engine
from ..grading import Checking, exercise
from ..timing import Comparison, compare, compare_sync

LESSON = "04_pagination"

__all__ = [
    "Item", "ItemOut", "Page", "make_items_db", "add_items", "newest_ids",
    "make_unbounded_app", "make_article_app", "make_offset_app", "make_keyset_app", "make_feed_app",
    "make_catalog_app", "encode_cursor", "decode_cursor", "walk_offset", "walk_cursor", "wire_bytes",
    "depth_profile", "page_query_times", "with_gzip", "gzip_cost", "sort_method", "explain_page", "bench",
]


# ---------- data ----------

class PageBase(DeclarativeBase):
    """Declarative base of this lesson's own table (kept apart from the blog demo models)."""


class Item(PageBase):
    """A catalogue item; `created_at` is deliberately NOT unique: several items share each second."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(120))
    category: Mapped[str] = mapped_column(String(20))
    price_cents: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(DateTime)

    def __repr__(self) -> str:
        return f"Item(id={self.id}, created_at={self.created_at:%H:%M:%S})"


_CATEGORIES = ("books", "games", "music", "garden", "kitchen", "toys", "tools")
_ADJECTIVES = ("red", "small", "quiet", "fast", "wooden", "vintage", "solar", "folding", "smart", "classic")
_NOUNS = ("lamp", "kettle", "chair", "puzzle", "guitar", "drill", "novel", "board game", "teapot", "shovel")
_EPOCH = datetime(2024, 1, 1)
TIES = 5  # items created in the same second


def _item_row(i: int) -> dict[str, Any]:
    """The deterministic row of item `i` (cheap to compute, so a million rows build quickly)."""
    return {
        "id": i,
        "title": f"{_ADJECTIVES[i * 7 % 10].capitalize()} {_NOUNS[i * 3 % 10]} no. {i}",
        "category": _CATEGORIES[i * 7919 % len(_CATEGORIES)],
        "price_cents": i * 7919 % 10_000 + 99,
        "created_at": _EPOCH + timedelta(seconds=i // TIES),
    }


def _insert_items(engine: Any, first: int, last: int, batch: int = 50_000) -> None:
    """Insert items `first..last`: COPY on PostgreSQL (psycopg 3), executemany batches of Core inserts elsewhere."""
    if last < first:
        return
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        _copy_items(engine, first, last)
    else:
        with engine.begin() as conn:
            for start in range(first, last + 1, batch):
                conn.execute(insert(Item.__table__),
                             [_item_row(i) for i in range(start, min(last, start + batch - 1) + 1)])
    if engine.dialect.name == "postgresql":
        _after_bulk_load(engine, analyze=last - first + 1 >= ANALYZE_AFTER)


ANALYZE_AFTER = 5_000  # rows: a bulk load this large refreshes PostgreSQL's planner statistics (ANALYZE)
ITEM_COLUMNS = ("id", "title", "category", "price_cents", "created_at")


def _copy_items(engine: Any, first: int, last: int) -> None:
    """Stream items `first..last` into PostgreSQL with `COPY items FROM STDIN` (psycopg 3's `cursor.copy`)."""
    with engine.begin() as conn:
        raw = conn.connection.driver_connection  # the psycopg.Connection under SQLAlchemy's pool
        with raw.cursor() as cursor, cursor.copy(f"COPY items ({', '.join(ITEM_COLUMNS)}) FROM STDIN") as copy:
            for i in range(first, last + 1):
                row = _item_row(i)
                copy.write_row(tuple(row[column] for column in ITEM_COLUMNS))


def _after_bulk_load(engine: Any, analyze: bool) -> None:
    """PostgreSQL: move the id sequence past the explicit ids; after a large load, ANALYZE for the planner."""
    with engine.begin() as conn:
        conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('items', 'id'), "
                             "coalesce(max(id), 0) + 1, false) FROM items")
    if analyze:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE items")


def make_items_db(rows: int = 10_000) -> DemoDB:
    """A fresh database (SQLite, or PostgreSQL when `DATABASE_URL` is set) with `rows` items (ids 1..rows,
    `TIES` items per second), bulk-loaded: executemany batches, or COPY on PostgreSQL."""
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        raise ValueError("make_items_db: rows must be a non-negative int")
    engine, path = fresh_engine()
    PageBase.metadata.create_all(engine)
    _insert_items(engine, 1, rows)
    return DemoDB(engine=engine, Session=sessionmaker(engine, expire_on_commit=False), path=path,
                  counts={"items": rows})


def add_items(db: DemoDB, count: int) -> list[int]:
    """Insert `count` new items, newer than every existing one (as users keep posting); return their ids."""
    with db.engine.connect() as conn:
        top = conn.scalar(select(func.max(Item.id))) or 0
    _insert_items(db.engine, top + 1, top + count)
    db.counts["items"] = db.counts.get("items", 0) + count
    return list(range(top + 1, top + count + 1))


def newest_ids(db: DemoDB) -> list[int]:
    """Every item id, newest first: what a complete walk over the feed must return."""
    with db.engine.connect() as conn:
        return list(conn.scalars(select(Item.id).order_by(Item.id.desc())))


# ---------- response models ----------

class ItemOut(BaseModel):
    """One item as the API returns it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    category: str
    price_cents: int
    created_at: datetime


class Page(BaseModel):
    """A page of items and the opaque cursor of the next page (None on the last page)."""

    items: list[ItemOut]
    next_cursor: str | None


# ---------- apps ----------

def make_unbounded_app(db: DemoDB) -> FastAPI:
    """The anti-pattern: GET /items returns every row, newest first."""
    app = FastAPI(title="Unbounded list")
    get_db = db.dependency()

    @app.get("/items")
    def list_items(session: Session = Depends(get_db)) -> list[ItemOut]:
        return session.scalars(select(Item).order_by(Item.id.desc())).all()  # type: ignore[return-value]

    return app


def make_article_app(db: DemoDB) -> FastAPI:
    """The source article's idiom, in 2.0 style: `skip: int = 0, limit: int = Query(default=20, le=100)` (no lower bounds)."""
    app = FastAPI(title="Article's pagination")
    get_db = db.dependency()

    @app.get("/items")
    def list_items(skip: int = 0, limit: int = Query(default=20, le=100),
                   session: Session = Depends(get_db)) -> list[ItemOut]:
        stmt = select(Item).order_by(Item.id.desc()).offset(skip).limit(limit)
        return session.scalars(stmt).all()  # type: ignore[return-value]

    return app


def make_offset_app(db: DemoDB, order_by: Any = None) -> FastAPI:
    """GET /items?limit=&offset= with `Annotated[int, Query(ge=1, le=100)]`; ordered newest first by default."""
    app = FastAPI(title="Offset pagination")
    get_db = db.dependency()
    ordering = (Item.id.desc(),) if order_by is None else tuple(order_by)

    @app.get("/items")
    def list_items(
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0)] = 0,
        session: Session = Depends(get_db),
    ) -> list[ItemOut]:
        stmt = select(Item).order_by(*ordering).offset(offset).limit(limit)
        return session.scalars(stmt).all()  # type: ignore[return-value]

    return app


def make_keyset_app(db: DemoDB) -> FastAPI:
    """GET /items?limit=&cursor= : keyset pagination on the primary key, newest first; the cursor is the last id seen."""
    app = FastAPI(title="Keyset pagination")
    get_db = db.dependency()

    @app.get("/items")
    def list_items(
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[int | None, Query(ge=1)] = None,
        session: Session = Depends(get_db),
    ) -> Page:
        stmt = select(Item).order_by(Item.id.desc()).limit(limit)
        if cursor is not None:
            stmt = stmt.where(Item.id < cursor)
        items = session.scalars(stmt).all()
        more = len(items) == limit
        return Page(items=items, next_cursor=str(items[-1].id) if more else None)  # type: ignore[arg-type]

    return app


def encode_cursor(created_at: datetime, item_id: int) -> str:
    """An opaque, URL-safe cursor for the composite key (created_at, id)."""
    raw = json.dumps([created_at.isoformat(), item_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """Read a cursor made by `encode_cursor`; ValueError if it was not."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, item_id = json.loads(text)
        return datetime.fromisoformat(stamp), int(item_id)
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError) as error:
        raise ValueError(f"not a cursor: {cursor!r}") from error


def make_feed_app(db: DemoDB, *, tiebreaker: bool = True) -> FastAPI:
    """GET /items: keyset on `created_at` (newest first); without the id tiebreaker, items sharing a second are lost."""
    app = FastAPI(title="Feed by time")
    get_db = db.dependency()

    @app.get("/items")
    def list_items(
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: str | None = None,
        session: Session = Depends(get_db),
    ) -> Page:
        if tiebreaker:
            stmt = select(Item).order_by(Item.created_at.desc(), Item.id.desc()).limit(limit)
        else:
            stmt = select(Item).order_by(Item.created_at.desc()).limit(limit)
        if cursor is not None:
            try:
                stamp, last_id = decode_cursor(cursor)
            except ValueError as error:
                raise HTTPException(status_code=400, detail=str(error)) from error
            if tiebreaker:
                stmt = stmt.where(tuple_(Item.created_at, Item.id) < tuple_(stamp, last_id))
            else:
                stmt = stmt.where(Item.created_at < stamp)
        items = session.scalars(stmt).all()
        more = len(items) == limit
        last = items[-1] if items else None
        return Page(items=items,  # type: ignore[arg-type]
                    next_cursor=encode_cursor(last.created_at, last.id) if more and last else None)

    return app


def make_catalog_app(db: DemoDB) -> FastAPI:
    """The gzip exercise's app: GET /items/export (every row, large), GET /items?limit= (a page), GET /health (tiny)."""
    app = FastAPI(title="Catalogue")
    get_db = db.dependency()

    @app.get("/items/export")
    def export(session: Session = Depends(get_db)) -> list[ItemOut]:
        return session.scalars(select(Item).order_by(Item.id)).all()  # type: ignore[return-value]

    @app.get("/items")
    def page(limit: Annotated[int, Query(ge=1, le=100)] = 20, session: Session = Depends(get_db)) -> list[ItemOut]:
        return session.scalars(select(Item).order_by(Item.id.desc()).limit(limit)).all()  # type: ignore[return-value]

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def with_gzip(app: Any, minimum_size: int = 1400, compresslevel: int = 6) -> Any:
    """The lesson's answer to "compress large responses": Starlette's GZipMiddleware with chosen settings."""
    app.add_middleware(GZipMiddleware, minimum_size=minimum_size, compresslevel=compresslevel)
    return app


# ---------- measuring helpers ----------

async def wire_bytes(client: httpx.AsyncClient, url: str, *, gzip_ok: bool = True) -> tuple[int, int, str]:
    """GET `url`: (bytes on the wire, bytes once decoded, Content-Encoding or "identity")."""
    headers = {"Accept-Encoding": "gzip" if gzip_ok else "identity"}
    async with client.stream("GET", url, headers=headers) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        encoding = response.headers.get("content-encoding", "identity")
    body = gzip.decompress(raw) if encoding == "gzip" else raw
    return len(raw), len(body), encoding


async def walk_offset(client: httpx.AsyncClient, limit: int = 20, *, path: str = "/items",
                      between: Callable[[], Any] | None = None, max_pages: int = 100_000) -> list[int]:
    """Follow offset pages until an empty one; call `between()` after each page; return the ids seen in order."""
    seen: list[int] = []
    offset = 0
    for _ in range(max_pages):
        response = await client.get(path, params={"limit": limit, "offset": offset})
        response.raise_for_status()
        page = response.json()
        if not page:
            break
        seen += [item["id"] for item in page]
        offset += limit
        if between is not None:
            between()
    return seen


async def walk_cursor(client: httpx.AsyncClient, limit: int = 20, *, path: str = "/items",
                      between: Callable[[], Any] | None = None, max_pages: int = 100_000) -> list[int]:
    """Follow `next_cursor` until it is null; call `between()` after each page; return the ids seen in order."""
    seen: list[int] = []
    cursor: str | None = None
    for _ in range(max_pages):
        params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor is not None else {})
        response = await client.get(path, params=params)
        response.raise_for_status()
        page = response.json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        if between is not None:
            between()
    return seen


async def depth_profile(db: DemoDB, depths: Sequence[int], *, limit: int = 20, n: int = 7) -> dict[str, list[float]]:
    """Median ms of one page at each depth (rows skipped), offset vs keyset, measured interleaved per depth."""
    total = db.counts["items"]
    offset_ms, keyset_ms = [], []
    async with app_client(make_offset_app(db)) as offset_client, app_client(make_keyset_app(db)) as keyset_client:
        for _ in range(5):  # first requests pay one-off costs (imports, schema building, cold cache): not depth
            await offset_client.get("/items", params={"limit": limit})
            await keyset_client.get("/items", params={"limit": limit})
        for depth in depths:
            cursor = total - depth + 1  # ids are 1..total: the page after `depth` rows starts below this id
            result = await compare({
                "offset": lambda d=depth: offset_client.get("/items", params={"limit": limit, "offset": d}),
                "keyset": lambda c=cursor: keyset_client.get("/items", params={"limit": limit, "cursor": c}),
            }, n=n, warmup=1)
            offset_ms.append(result["offset"].median_ms)
            keyset_ms.append(result["keyset"].median_ms)
    return {"offset": offset_ms, "keyset": keyset_ms}


def page_query_times(db: DemoDB, depth: int, *, limit: int = 20, n: int = 5) -> Comparison:
    """One page's SQL at `depth` rows deep, OFFSET vs keyset, timed interleaved at the ORM level (no HTTP)."""
    total = db.counts["items"]
    depth = max(0, min(int(depth), max(total - limit, 0)))
    with db.session() as session:
        return compare_sync({
            f"OFFSET {depth:,}": lambda: session.scalars(
                select(Item).order_by(Item.id.desc()).offset(depth).limit(limit)).all(),
            f"keyset id < {total - depth + 1:,}": lambda: session.scalars(
                select(Item).where(Item.id < total - depth + 1).order_by(Item.id.desc()).limit(limit)).all(),
        }, n=n, warmup=1)


def sort_method(document: Any) -> str | None:
    """The first "Sort Method" in a PostgreSQL `EXPLAIN (ANALYZE, FORMAT JSON)` document (e.g. "top-N heapsort")."""
    stack = [document]
    while stack:
        node = stack.pop(0)
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if isinstance(node.get("Sort Method"), str):
                return node["Sort Method"]
            stack.extend(value for key, value in node.items() if key in ("Plan", "Plans"))
    return None


def explain_page(db: DemoDB, order_by: Sequence[Any], offset: int, limit: int = 12) -> str:
    """How the database runs one OFFSET page: PostgreSQL's sort node (EXPLAIN ANALYZE), or SQLite's plan lines."""
    stmt = select(Item).order_by(*order_by).offset(offset).limit(limit)
    sql = str(stmt.compile(db.engine, compile_kwargs={"literal_binds": True}))
    with db.engine.connect() as conn:
        if db.engine.dialect.name == "postgresql":
            document = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}").scalar()
            method = sort_method(document)
            return f"Sort Method: {method}" if method else "no sort (an index gave the order)"
        if db.engine.dialect.name == "sqlite":
            return "; ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    raise NotImplementedError(f"explain_page knows SQLite and PostgreSQL, not {db.engine.dialect.name}")


# ---------- exercise 04.keyset ----------

async def _get_page(checking: Checking, client: httpx.AsyncClient, limit: int | None,
                    cursor: Any = None) -> tuple[list[dict[str, Any]], Any]:
    """One page from the learner's app: (items, next_cursor), or a Fail that says what came back."""
    params: dict[str, Any] = {}
    if limit is not None:
        params["limit"] = limit
    if cursor is not None:
        params["cursor"] = str(cursor)
    response = await client.get("/items", params=params)
    url = f"GET /items?{httpx.QueryParams(params)}"
    checking.expect(response.status_code == 200,
                    f"{url} answered {response.status_code}, expected 200. Body: {response.text[:200]}")
    try:
        body = response.json()
    except ValueError:
        checking.fail(f"{url} did not answer JSON: {response.text[:120]!r}")
    checking.expect(isinstance(body, dict) and "items" in body and "next_cursor" in body,
                    f"{url} answered {str(body)[:160]}; expected an object "
                    '{"items": [...], "next_cursor": ... or null}')
    items = body["items"]
    checking.expect(isinstance(items, list) and all(isinstance(i, dict) and isinstance(i.get("id"), int) for i in items),
                    f"{url}: 'items' must be a list of objects with an integer 'id', got {str(items)[:160]}")
    return items, body["next_cursor"]


async def _walk(checking: Checking, client: httpx.AsyncClient, limit: int, expected_pages: int,
                between: Callable[[], Any] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Walk the learner's pages by next_cursor; fail if a page is too long or the cursor never ends."""
    seen: list[dict[str, Any]] = []
    cursor: Any = None
    for pages in range(1, expected_pages + 3):
        items, cursor = await _get_page(checking, client, limit, cursor)
        checking.expect(len(items) <= limit, f"asked for limit={limit}, a page had {len(items)} items")
        seen += items
        if cursor is None:
            return seen, pages
        checking.expect(items != [] or pages == 1,
                        f"a page with limit={limit} came back empty but next_cursor was {cursor!r}, not null")
        if between is not None:
            between()
    checking.fail(f"after {expected_pages + 2} pages of limit={limit} (for {len(seen)} items seen) next_cursor "
                  f"was still {cursor!r}: the last page must answer \"next_cursor\": null.")
    raise AssertionError("unreachable")


def _describe_ids(seen: list[int], expected: list[int]) -> str:
    dupes = sorted({i for i in seen if seen.count(i) > 1})
    missing = sorted(set(expected) - set(seen))
    extra = sorted(set(seen) - set(expected))
    parts = []
    if dupes:
        parts.append(f"{len(dupes)} ids came twice (e.g. {dupes[:5]})")
    if missing:
        parts.append(f"{len(missing)} ids never came (e.g. {missing[:5]})")
    if extra:
        parts.append(f"{len(extra)} ids do not exist (e.g. {extra[:5]})")
    if not parts:
        parts.append(f"every id came once but not newest first: got {seen[:8]}…, expected {expected[:8]}…")
    return "; ".join(parts)


async def _check_cap(checking: Checking, client: httpx.AsyncClient) -> None:
    for limit in (101, 1000, 0, -1):
        response = await client.get("/items", params={"limit": limit})
        checking.expect(response.status_code == 422,
                        f"GET /items?limit={limit} answered {response.status_code}, expected 422: the page size must "
                        f"be between 1 and 100 (it returned {len(response.content):,} bytes).")
    items, _ = await _get_page(checking, client, 100)
    checking.expect(len(items) == 100, f"GET /items?limit=100 gave {len(items)} items from 250, expected 100")
    items, _ = await _get_page(checking, client, None)
    checking.expect(1 <= len(items) <= 100,
                    f"GET /items without limit gave {len(items)} items: use a default page size (e.g. 20), at most 100")
    response = await client.get("/items", params={"limit": 5, "cursor": "not-a-cursor!"})
    checking.expect(400 <= response.status_code < 500,
                    f"GET /items?cursor=not-a-cursor! answered {response.status_code}: a malformed cursor is the "
                    "client's mistake, answer 400 or 422 (not 200, not a server error).")


async def _scale_ratio(checking: Checking, make_app: Any, rows: int, n: int) -> float:
    """First page on a `rows`-row table / first page on a 300-row table (medians, measured interleaved)."""
    with make_items_db(rows) as big, make_items_db(300) as small:
        big_app, small_app = checking.build_app(make_app, big), checking.build_app(make_app, small)
        async with app_client(big_app) as big_client, app_client(small_app) as small_client:
            timings = await compare({
                "small": lambda: small_client.get("/items", params={"limit": 20}),
                "big": lambda: big_client.get("/items", params={"limit": 20}),
            }, n=n, warmup=1)
    return timings["big"].median_ms / timings["small"].median_ms


async def _deep_ratio(checking: Checking, make_app: Any, deep_rows: int, n: int) -> float:
    """Deep page / first page of one table, both full pages of 20 (medians, interleaved); the deep cursor is taken
    before `deep_rows` newer items are inserted, which also proves the cursor marks a position in the data."""
    with make_items_db(45) as db:
        app = checking.build_app(make_app, db)
        async with app_client(app) as client:
            _, cursor = await _get_page(checking, client, 20)
            checking.expect(cursor is not None, "on 45 items with limit=20 the first page's next_cursor was null")
            add_items(db, deep_rows)  # the cursor now points below `deep_rows` newer items
            deep, _ = await _get_page(checking, client, 2, cursor)
            checking.expect([i["id"] for i in deep] == [25, 24],
                            f"took a cursor after items 45 … 26; then {deep_rows:,} newer items were inserted; the "
                            f"page at that cursor gave ids {[i['id'] for i in deep]}, expected [25, 24]. A cursor "
                            "must point at a position in the data, not at a row number.")
            timings = await compare({
                "first": lambda: client.get("/items", params={"limit": 20}),
                "deep": lambda: client.get("/items", params={"limit": 20, "cursor": str(cursor)}),
            }, n=n, warmup=1)
    checking.record("first_page_ms", round(timings["first"].median_ms, 2))
    checking.record("deep_page_ms", round(timings["deep"].median_ms, 2))
    return timings["deep"].median_ms / timings["first"].median_ms


KEYSET_DEEP_ROWS = 300_000
KEYSET_SCALE_ROWS = 30_000
KEYSET_MAX_RATIO = 2.5


@exercise(
    "04.keyset",
    title="Keyset pagination with a cap",
    lesson=LESSON,
    expects="a function make_app(db) returning a FastAPI app with GET /items?limit=&cursor= that answers "
            '{"items": [...], "next_cursor": ...}',
    hints=(
        "Order by the primary key, newest first, and filter with the last id of the previous page: "
        "`select(Item).order_by(Item.id.desc()).where(Item.id < cursor).limit(limit)`. The cursor is that last id; "
        "return null when the page is not full. Cap the size with `limit: Annotated[int, Query(ge=1, le=100)] = 20`.",
        "A page that uses OFFSET, or counts the rows before the cursor, slows down with depth; one that loads every "
        "row and slices in Python slows down with the table. Let the database seek: "
        "`cursor: Annotated[int | None, Query(ge=1)] = None`, then `if cursor is not None: stmt = "
        "stmt.where(Item.id < cursor)`, `items = session.scalars(stmt).all()` and "
        "`next_cursor = str(items[-1].id) if len(items) == limit else None`.",
    ),
    timeout=120,
)
async def check_keyset(make_app: Any, checking: Checking) -> str:
    """Walk every page on several sizes (also with inserts between pages), 422 over the cap, flat deep-page latency."""
    checking.require_callable(make_app, "a function make_app(db) that builds and returns a FastAPI app")
    walks = 0
    with make_items_db(250) as db:
        app = checking.build_app(make_app, db)
        async with app_client(app, raise_app_exceptions=False) as client:  # a crash is a 500 to report
            await _check_cap(checking, client)
    for rows, limits in ((0, (20,)), (1, (1, 20)), (45, (7, 45)), (250, (20, 100))):
        with make_items_db(rows) as db:
            expected = newest_ids(db)
            titles = {i: _item_row(i)["title"] for i in expected}
            app = checking.build_app(make_app, db)
            async with app_client(app) as client:
                for limit in limits:
                    items, pages = await _walk(checking, client, limit, -(-rows // limit))
                    ids = [i["id"] for i in items]
                    checking.expect(ids == expected,
                                    f"walking {rows} items with limit={limit} ({pages} pages): {_describe_ids(ids, expected)}")
                    wrong = [i for i in items if i.get("title") != titles[i["id"]]]
                    checking.expect(not wrong, f"item {wrong[0]['id'] if wrong else ''} has title "
                                    f"{wrong[0].get('title') if wrong else ''!r}, expected "
                                    f"{titles[wrong[0]['id']] if wrong else ''!r}: return the item's own fields")
                    walks += 1
    with make_items_db(120) as db:
        expected = newest_ids(db)
        app = checking.build_app(make_app, db)
        async with app_client(app) as client:
            items, _ = await _walk(checking, client, 10, 12 + 10, between=lambda: add_items(db, 3))
        ids = [i["id"] for i in items]
        checking.expect(ids == expected,
                        "walking 120 items with limit=10 while 3 new items were inserted after every page: "
                        f"{_describe_ids(ids, expected)}. New items arrive at the top of a newest-first list and "
                        "shift every row number below them.")
    scale = await _scale_ratio(checking, make_app, KEYSET_SCALE_ROWS, n=7)
    checking.record("big_vs_small_table", round(scale, 2))
    checking.expect(scale <= KEYSET_MAX_RATIO,
                    f"the first page took {scale:.1f}× as long on a {KEYSET_SCALE_ROWS:,}-row table as on a 300-row "
                    f"one (median, interleaved); a page of 20 should cost the same at any table size (within "
                    f"{KEYSET_MAX_RATIO}×). Does the endpoint load every row and slice in Python?")
    deep = await _deep_ratio(checking, make_app, KEYSET_DEEP_ROWS, n=9)
    checking.record("deep_vs_first", round(deep, 2))
    checking.expect(deep <= KEYSET_MAX_RATIO,
                    f"a page {KEYSET_DEEP_ROWS:,} rows deep took {deep:.1f}× as long as the first page (median, "
                    f"measured interleaved); keyset pagination stays within {KEYSET_MAX_RATIO}×. Is the cursor turned "
                    "into an OFFSET or a count of the rows before it?")
    return (f"{walks} complete walks (no duplicates, nothing missing), stable under inserts, 422 over 100, "
            f"deep page {deep:.2f}× the first")


# ---------- exercise 04.gzip ----------

GZIP_MIN_RATIO = 5.0


@exercise(
    "04.gzip",
    title="Compress large responses, leave small ones alone",
    lesson=LESSON,
    expects="a function add_gzip(app) that returns the app (or an ASGI app wrapping it) with gzip compression",
    hints=(
        "Starlette ships the middleware: `from fastapi.middleware.gzip import GZipMiddleware`, then "
        "`app.add_middleware(GZipMiddleware, minimum_size=..., compresslevel=...)` and `return app`. "
        "The default minimum_size (500 bytes) also compresses responses that fit in one network packet.",
        "Pick `minimum_size` above one packet (about 1,400 bytes) and below a page of 100 items (about 12 KB), "
        "e.g. `minimum_size=1400`; the lesson measured what `compresslevel` 1, 6 and 9 cost and save. "
        "`add_middleware` returns None: finish with `return app`.",
    ),
    timeout=90,
)
async def check_gzip(add_gzip: Any, checking: Checking) -> str:
    """Large export shrinks ≥ 5×, a 100-item page is compressed, a ~1 KB page and /health are not; bodies intact."""
    checking.require_callable(add_gzip, "a function add_gzip(app) that returns the app")
    with make_items_db(10_000) as db:
        original = make_catalog_app(db)
        app = checking.call(add_gzip, original)
        checking.expect(app is not None and callable(app),
                        f"add_gzip returned {app!r}, not an app. `app.add_middleware(...)` returns None: "
                        "add the middleware, then `return app`.")
        async with app_client(make_catalog_app(db)) as plain, app_client(app) as client:
            for url in ("/items/export", "/items?limit=100", "/items?limit=8", "/health"):
                reference = (await plain.get(url)).content
                wire, size, encoding = await wire_bytes(client, url)
                decoded = (await client.get(url)).content
                checking.expect(decoded == reference,
                                f"GET {url} with gzip came back as {size:,} bytes that differ from the app's own "
                                f"{len(reference):,}: compression must not change the body.")
                if url == "/items/export":
                    ratio = size / wire
                    checking.record("export_bytes", size)
                    checking.record("export_wire_bytes", wire)
                    checking.record("export_ratio", round(ratio, 1))
                    checking.expect(encoding == "gzip",
                                    f"GET {url} ({size:,} bytes) was sent with Content-Encoding {encoding}, "
                                    "expected gzip (the client sent Accept-Encoding: gzip).")
                    checking.expect(ratio >= GZIP_MIN_RATIO,
                                    f"GET {url}: {size:,} bytes became {wire:,} on the wire, {ratio:.1f}×; expected "
                                    f"≥ {GZIP_MIN_RATIO:g}×. Is the compression level 0?")
                    identity, _, plain_encoding = await wire_bytes(client, url, gzip_ok=False)
                    checking.expect(plain_encoding == "identity" and identity == len(reference),
                                    f"a client that does not accept gzip got Content-Encoding {plain_encoding} "
                                    f"({identity:,} bytes): only compress when the request's Accept-Encoding allows it.")
                elif url == "/items?limit=100":
                    checking.record("page100_bytes", size)
                    checking.expect(encoding == "gzip",
                                    f"GET {url} ({size:,} bytes, about 10 network packets) was not compressed; "
                                    "minimum_size is too high for it.")
                else:
                    checking.record("small_bytes" if "limit" in url else "health_bytes", size)
                    checking.expect(encoding == "identity",
                                    f"GET {url} ({size:,} bytes, less than one network packet) was sent with "
                                    f"Content-Encoding {encoding} as {wire:,} bytes: compressing it costs CPU on "
                                    "both sides and saves no round trip. Raise minimum_size.")
    return "large responses compressed, small ones untouched, bodies identical"


# ---------- benchmark ----------

async def _bench_rows() -> list[BenchRow]:
    rows: list[BenchRow] = []
    name = dialect()
    with make_items_db(1_000) as db:
        async with app_client(make_offset_app(db, order_by=[Item.created_at.desc()])) as client:
            loose = await walk_offset(client, limit=12)
        async with app_client(make_offset_app(db, order_by=[Item.created_at.desc(), Item.id.desc()])) as client:
            exact = await walk_offset(client, limit=12)
    rows.append(BenchRow("04", f"[{name}] OFFSET walk of 1,000 items by created_at only (5 per second): distinct seen",
                         len(set(loose)), "items"))
    rows.append(BenchRow("04", f"[{name}] same walk by (created_at, id): distinct seen", len(set(exact)), "items",
                         "= 1,000", len(set(exact)) == 1_000))
    with make_items_db(10_000) as db:
        async with app_client(make_unbounded_app(db)) as unbounded, app_client(make_keyset_app(db)) as paged:
            result = await compare({"all 10k rows": lambda: unbounded.get("/items"),
                                    "page of 20": lambda: paged.get("/items", params={"limit": 20})}, n=9, warmup=1)
            all_bytes = len((await unbounded.get("/items")).content)
            page_bytes = len((await paged.get("/items", params={"limit": 20})).content)
        rows.append(BenchRow("04", f"[{name}] unbounded list (10k rows) vs page of 20: latency", result.ratio, "×"))
        rows.append(BenchRow("04", f"[{name}] unbounded list (10k rows) vs page of 20: bytes", all_bytes / page_bytes, "×"))
        async with app_client(with_gzip(make_catalog_app(db))) as client:
            wire, size, _ = await wire_bytes(client, "/items/export")
        rows.append(BenchRow("04", f"[{name}] gzip (level 6) on a {size / 1000:,.0f} KB JSON export: bytes ratio",
                             size / wire, "×", f"≥ {GZIP_MIN_RATIO:g}×", size / wire >= GZIP_MIN_RATIO))
    started = time.perf_counter()
    with make_items_db(KEYSET_DEEP_ROWS) as db:
        built_s = time.perf_counter() - started
        depth = KEYSET_DEEP_ROWS - 20
        async with app_client(make_offset_app(db)) as by_offset, app_client(make_keyset_app(db)) as by_key:
            pages = await compare({
                "offset first": lambda: by_offset.get("/items", params={"limit": 20}),
                "keyset first": lambda: by_key.get("/items", params={"limit": 20}),
                "offset deep": lambda: by_offset.get("/items", params={"limit": 20, "offset": depth}),
                "keyset deep": lambda: by_key.get("/items", params={"limit": 20, "cursor": KEYSET_DEEP_ROWS - depth + 1}),
            }, n=9, warmup=3)
        sql = page_query_times(db, depth, n=9)
    med = {label: t.median_ms for label, t in pages.timings.items()}
    rows.append(BenchRow("04", f"[{name}] build the {KEYSET_DEEP_ROWS:,}-row items table "
                               f"({'COPY' if name == 'postgresql' else 'executemany batches'})", built_s, "s"))
    rows.append(BenchRow("04", f"[{name}] OFFSET vs keyset, GET page of 20 at depth {depth:,} ({KEYSET_DEEP_ROWS:,} rows)",
                         med["offset deep"] / med["keyset deep"], "×"))
    rows.append(BenchRow("04", f"[{name}] OFFSET vs keyset, the SQL alone at depth {depth:,}", sql.ratio, "×"))
    rows.append(BenchRow("04", f"[{name}] OFFSET: deepest page / first page (GET)", med["offset deep"] / med["offset first"], "×"))
    keyset_flat = med["keyset deep"] / med["keyset first"]
    rows.append(BenchRow("04", f"[{name}] keyset: deepest page / first page (GET)", keyset_flat, "×",
                         f"≤ {KEYSET_MAX_RATIO}×", keyset_flat <= KEYSET_MAX_RATIO))
    return rows


def bench() -> list[BenchRow]:
    """Headline figures, each row naming its database: table build time, OFFSET over ties, unbounded vs page
    (latency, bytes), gzip bytes ratio, OFFSET vs keyset at depth."""
    return asyncio.run(_bench_rows())


def median_ms(samples: Sequence[float]) -> float:
    """Median of durations in seconds, in milliseconds."""
    return statistics.median(samples) * 1000


def gzip_cost(body: bytes, levels: Sequence[int] = (1, 6, 9), n: int = 7) -> dict[int, tuple[int, float]]:
    """For each gzip level: (compressed bytes, median ms to compress `body`), measured interleaved."""
    samples: dict[int, list[float]] = {level: [] for level in levels}
    sizes: dict[int, int] = {}
    for _ in range(n):
        for level in levels:
            start = time.perf_counter()
            sizes[level] = len(gzip.compress(body, compresslevel=level))
            samples[level].append(time.perf_counter() - start)
    return {level: (sizes[level], median_ms(samples[level])) for level in levels}

