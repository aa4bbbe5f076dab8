"""The bookshop API, as shipped (slow) and with any set of the capstone's fixes switched on.

`make_app(database_url)` is the original: realistic, and wrong in many of the ways the article's checklist
names. `make_app(database_url, fixes=ALL_FIXES)` is the fixed app. The lesson switches fixes on step by
step; each fix is a few lines below, guarded by `if "<fix>" in fixes`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session, selectinload, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import Book, BookshopSettings, Review, engine_args, rates_app

__all__ = ["make_app", "ALL_FIXES", "FIXES", "STEPS"]

FIXES: dict[str, str] = {
    "threadpool": "DB routes are `def` (run in the threadpool), not `async def` around blocking calls",
    "eager": "eager loading (selectinload) and one grouped COUNT instead of lazy loads per book",
    "indexes": "indexes on reviews.book_id, books.author_id and books.isbn",
    "pagination": "`limit` capped: Query(20, ge=1, le=100)",
    "gzip": "GZipMiddleware for responses over 1 KB",
    "asgi-middleware": "the timing header from a pure ASGI middleware instead of @app.middleware('http')",
    "health": "/health runs SELECT 1 and answers 503 when the database is down",
    "cache": "60 s in-process cache for /stats and for the exchange rates",
    "outbound": "one shared httpx client with a 2 s timeout; API key in a header, never logged",
}
ALL_FIXES = frozenset(FIXES)
STEPS: list[tuple[str, frozenset[str]]] = [
    ("original", frozenset()),
    ("1 · no blocking", frozenset({"threadpool"})),
    ("2 · queries", frozenset({"threadpool", "eager", "indexes"})),
    ("3 · payload & ops", frozenset({"threadpool", "eager", "indexes", "pagination", "gzip",
                                     "asgi-middleware", "health"})),
    ("4 · cache & outbound", ALL_FIXES),
]
logger = logging.getLogger("bookshop")


class TimingHeader:
    """Pure ASGI middleware: adds X-Process-Time (ms) to every HTTP response without wrapping the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed = f"{(time.perf_counter() - start) * 1000:.2f}".encode()
                message["headers"] = [*message.get("headers", []), (b"x-process-time", elapsed)]
            await send(message)

        await self.app(scope, receive, send_with_header)


class TTLCache:
    """A tiny in-process cache: `get_or_set(key, compute)` recomputes once `ttl` seconds have passed."""

    def __init__(self, ttl: float) -> None:
        self.ttl, self.items = ttl, {}  # type: ignore[var-annotated]

    def get(self, key: str) -> Any | None:
        """The cached value, or None when missing or expired."""
        hit = self.items.get(key)
        return hit[1] if hit and hit[0] > time.monotonic() else None

    def set(self, key: str, value: Any) -> None:
        """Keep `value` for `ttl` seconds."""
        self.items[key] = (time.monotonic() + self.ttl, value)


def _book_summary(book: Book, author: str, review_count: int) -> dict[str, Any]:
    return {"id": book.id, "title": book.title, "author": author, "year": book.year,
            "price": book.price_cents / 100, "review_count": review_count}


def make_app(database_url: str, fixes: Iterable[str] = ()) -> FastAPI:
    """The bookshop API on `database_url`, with the given fixes (names from FIXES) switched on."""
    fixes = frozenset(fixes)
    unknown = fixes - ALL_FIXES
    if unknown:
        raise ValueError(f"unknown fixes {sorted(unknown)}; known: {sorted(ALL_FIXES)}")
    settings = BookshopSettings()
    engine = create_engine(database_url, **engine_args(database_url))
    SessionLocal = sessionmaker(engine, expire_on_commit=False)
    cache = TTLCache(ttl=60)
    shared: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if "indexes" in fixes:
            with engine.begin() as conn:
                for ddl in ("CREATE INDEX IF NOT EXISTS ix_reviews_book_id ON reviews (book_id)",
                            "CREATE INDEX IF NOT EXISTS ix_books_author_id ON books (author_id)",
                            "CREATE INDEX IF NOT EXISTS ix_books_isbn ON books (isbn)"):
                    conn.execute(text(ddl))
        if "outbound" in fixes:
            shared["rates"] = httpx.AsyncClient(transport=httpx.ASGITransport(app=rates_app),
                                                base_url="http://rates.example", timeout=httpx.Timeout(2.0),
                                                headers={"X-API-Key": settings.rates_api_key.get_secret_value()})
        yield
        for client in shared.values():
            await client.aclose()
        engine.dispose()

    app = FastAPI(title="Bookshop", lifespan=lifespan)
    app.state.engine, app.state.settings = engine, settings

    def get_db() -> Iterator[Session]:
        with SessionLocal() as session:
            yield session

    def route(fn: Callable[..., Any]) -> Callable[..., Any]:
        """As shipped every route is `async def` around blocking SQLAlchemy calls; "threadpool" makes them `def`."""
        if "threadpool" in fixes:
            return fn

        async def blocking(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)  # runs ON the event loop: every query blocks every other request

        blocking.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
        blocking.__name__ = fn.__name__
        return blocking

    if "gzip" in fixes:
        app.add_middleware(GZipMiddleware, minimum_size=1000, compresslevel=5)
    if "asgi-middleware" in fixes:
        app.add_middleware(TimingHeader)
    else:
        @app.middleware("http")
        async def process_time(request: Any, call_next: Any) -> Any:
            start = time.perf_counter()
            response = await call_next(request)
            response.headers["X-Process-Time"] = f"{(time.perf_counter() - start) * 1000:.2f}"
            return response

    limit_query = Query(20, ge=1, le=100) if "pagination" in fixes else Query(20, ge=1)

    def list_books(skip: int = Query(0, ge=0), limit: int = limit_query,
                   session: Session = Depends(get_db)) -> list[dict[str, Any]]:
        """A page of books with author name and review count."""
        statement = select(Book).order_by(Book.id).offset(skip).limit(limit)
        if "eager" not in fixes:
            return [_book_summary(b, b.author.name, len(b.reviews)) for b in session.scalars(statement)]
        books = session.scalars(statement.options(selectinload(Book.author))).all()
        counts = dict(session.execute(
            select(Review.book_id, func.count()).where(Review.book_id.in_([b.id for b in books]))
            .group_by(Review.book_id)).all())
        return [_book_summary(b, b.author.name, counts.get(b.id, 0)) for b in books]

    def read_book(book_id: int, session: Session = Depends(get_db)) -> dict[str, Any]:
        """One book with its author and reviews."""
        options = [selectinload(Book.author), selectinload(Book.reviews)] if "eager" in fixes else []
        book = session.get(Book, book_id, options=options)
        if book is None:
            raise HTTPException(status_code=404, detail="book not found")
        return {"id": book.id, "title": book.title, "isbn": book.isbn, "year": book.year,
                "price": book.price_cents / 100, "author": {"id": book.author.id, "name": book.author.name},
                "reviews": [{"rating": r.rating, "body": r.body} for r in book.reviews]}

    def book_by_isbn(isbn: str, session: Session = Depends(get_db)) -> dict[str, Any]:
        """Look a book up by ISBN."""
        book = session.scalars(select(Book).where(Book.isbn == isbn)).first()
        if book is None:
            raise HTTPException(status_code=404, detail="no book with that ISBN")
        return {"id": book.id, "title": book.title, "isbn": book.isbn}

    def compute_stats(session: Session) -> dict[str, Any]:
        books = session.scalar(select(func.count()).select_from(Book))
        reviews, average = session.execute(select(func.count(), func.avg(Review.rating))).one()
        top = session.execute(
            select(Review.book_id, func.avg(Review.rating).label("avg"), func.count().label("n"))
            .group_by(Review.book_id).order_by(text("avg DESC"), text("n DESC"), Review.book_id).limit(5)).all()
        # float(): PostgreSQL's avg() is NUMERIC (a Decimal in Python, a string in JSON), SQLite's a REAL
        return {"books": books, "reviews": reviews, "average_rating": round(float(average or 0), 3),
                "top_books": [{"id": t.book_id, "average": round(float(t.avg), 3), "reviews": t.n} for t in top]}

    def stats(session: Session = Depends(get_db)) -> dict[str, Any]:
        """Catalogue statistics: counts, average rating, the five best-rated books (a full aggregate)."""
        if "cache" not in fixes:
            return compute_stats(session)
        cached = cache.get("stats")
        if cached is None:
            cached = compute_stats(session)
            cache.set("stats", cached)
        return cached

    app.get("/books")(route(list_books))
    app.get("/books/isbn/{isbn}")(route(book_by_isbn))
    app.get("/books/{book_id}")(route(read_book))
    app.get("/stats")(route(stats))

    async def fetch_rates() -> dict[str, float]:
        if "cache" in fixes and (cached := cache.get("rates")) is not None:
            return cached
        if "outbound" in fixes:
            logger.info("fetching exchange rates from %s", shared["rates"].base_url)
            response = await shared["rates"].get("/rates", params={"base": "USD"})
        else:
            url = f"http://rates.example/rates?base=USD&api_key={settings.rates_api_key.get_secret_value()}"
            logger.info("fetching exchange rates: GET %s", url)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=rates_app), timeout=None) as client:
                response = await client.get(url)
        response.raise_for_status()
        rates: dict[str, float] = response.json()
        if "cache" in fixes:
            cache.set("rates", rates)
        return rates

    @app.get("/books/{book_id}/price")
    async def price(book_id: int, currency: Literal["USD", "EUR", "GBP", "JPY"] = "USD") -> dict[str, Any]:
        """A book's price in another currency, from the exchange-rate API."""
        def lookup() -> int | None:
            with SessionLocal() as session:
                return session.scalar(select(Book.price_cents).where(Book.id == book_id))

        cents = await run_in_threadpool(lookup) if "threadpool" in fixes else lookup()
        if cents is None:
            raise HTTPException(status_code=404, detail="book not found")
        rates = await fetch_rates()
        return {"book_id": book_id, "currency": currency, "price": round(cents / 100 * rates[currency], 2)}

    if "health" in fixes:
        def ping() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        @app.get("/health")
        async def health() -> Any:
            """Healthy only if the database answers within a second (lesson 06); the reason stays in the log."""
            try:
                await asyncio.wait_for(asyncio.to_thread(ping), timeout=1.0)
            except Exception as error:  # unreachable, failing or too slow: all mean "not ready"
                logger.warning("health: database check failed: %s", type(error).__name__)
                return JSONResponse({"status": "unavailable"}, status_code=503)
            return {"status": "ok"}
    else:
        @app.get("/health")
        async def health() -> dict[str, str]:
            """Says ok without looking at anything."""
            return {"status": "ok"}

    return app
