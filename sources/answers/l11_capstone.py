# Reference answer of 11.capstone, the whole file: spliced into solutions/11_capstone.ipynb by the build, read by the
# tests (they write it to a file and grade it, as a learner's notebook does).
# --8<-- [start:answer]
"""The bookshop, fixed: same API, every finding of the audit and the profile addressed."""

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Annotated, Literal

import httpx
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy import ForeignKey, String, create_engine, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload, sessionmaker

from course_lib.lessons.bookshop import BookshopSettings, rates_app

logger = logging.getLogger("bookshop")


class Base(DeclarativeBase):
    """The bookshop's tables as this app sees them, indexes declared where a WHERE needs one."""


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    title: Mapped[str] = mapped_column(String(200))
    isbn: Mapped[str] = mapped_column(String(13), index=True)  # GET /books/isbn/{isbn}
    price_cents: Mapped[int]
    year: Mapped[int]
    author: Mapped[Author] = relationship()
    reviews: Mapped[list["Review"]] = relationship(order_by="Review.id")


class Review(Base):
    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"), index=True)  # a book's reviews, their counts
    rating: Mapped[int]
    body: Mapped[str] = mapped_column(String(300))


def migrate(database_url: str) -> None:
    """The deploy step, run once before the servers start (what a migration does): the declared indexes."""
    engine = create_engine(database_url)
    try:
        for table in Base.metadata.sorted_tables:
            for index in table.indexes:
                index.create(engine, checkfirst=True)
    finally:
        engine.dispose()


class ProcessTime:
    """Pure ASGI middleware: X-Process-Time header, no BaseHTTPMiddleware."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()

        async def send_timed(message):
            if message["type"] == "http.response.start":
                ms = f"{(time.perf_counter() - start) * 1000:.2f}".encode()
                message["headers"] = [*message.get("headers", []), (b"x-process-time", ms)]
            await send(message)

        await self.app(scope, receive, send_timed)


def make_app(database_url: str) -> FastAPI:
    settings = BookshopSettings()
    # SQLite connections must be allowed to cross threads; PostgreSQL (psycopg) needs no such argument
    sqlite = database_url.startswith("sqlite")
    engine = create_engine(database_url, connect_args={"check_same_thread": False} if sqlite else {})
    SessionLocal = sessionmaker(engine, expire_on_commit=False)
    cache: dict[str, tuple[float, object]] = {}  # key -> (expires at, value)

    def cached(key, compute):
        hit = cache.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        value = compute()
        cache[key] = (time.monotonic() + settings.cache_ttl_s, value)
        return value

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # no DDL, no query: the app starts even when the database is down
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=rates_app), base_url="http://rates.example",
            timeout=httpx.Timeout(2.0), headers={"X-API-Key": settings.rates_api_key.get_secret_value()},
        ) as client:
            app.state.rates_client = client
            yield
        engine.dispose()

    app = FastAPI(title="Bookshop (fixed)", lifespan=lifespan)
    app.state.engine, app.state.settings = engine, settings
    app.add_middleware(GZipMiddleware, minimum_size=1000, compresslevel=5)
    app.add_middleware(ProcessTime)

    def get_db():
        with SessionLocal() as session:
            yield session

    DB = Annotated[Session, Depends(get_db)]

    @app.get("/books")
    def list_books(db: DB, skip: Annotated[int, Query(ge=0)] = 0,
                   limit: Annotated[int, Query(ge=1, le=100)] = 20):
        books = db.scalars(select(Book).options(selectinload(Book.author))
                           .order_by(Book.id).offset(skip).limit(limit)).all()
        counts = dict(db.execute(select(Review.book_id, func.count()).group_by(Review.book_id)
                                 .where(Review.book_id.in_([b.id for b in books]))).all())
        return [{"id": b.id, "title": b.title, "author": b.author.name, "year": b.year,
                 "price": b.price_cents / 100, "review_count": counts.get(b.id, 0)} for b in books]

    @app.get("/books/isbn/{isbn}")
    def book_by_isbn(isbn: str, db: DB):
        book = db.scalars(select(Book).where(Book.isbn == isbn)).first()
        if book is None:
            raise HTTPException(404, "no book with that ISBN")
        return {"id": book.id, "title": book.title, "isbn": book.isbn}

    @app.get("/books/{book_id}")
    def read_book(book_id: int, db: DB):
        book = db.get(Book, book_id, options=[selectinload(Book.author), selectinload(Book.reviews)])
        if book is None:
            raise HTTPException(404, "book not found")
        return {"id": book.id, "title": book.title, "isbn": book.isbn, "year": book.year,
                "price": book.price_cents / 100, "author": {"id": book.author.id, "name": book.author.name},
                "reviews": [{"rating": r.rating, "body": r.body} for r in book.reviews]}

    @app.get("/stats")
    def stats(db: DB):
        def compute():
            books = db.scalar(select(func.count()).select_from(Book))
            reviews, average = db.execute(select(func.count(), func.avg(Review.rating))).one()
            avg, n = func.avg(Review.rating).label("avg"), func.count().label("n")
            top = db.execute(select(Review.book_id, avg, n).group_by(Review.book_id)
                             .order_by(avg.desc(), n.desc(), Review.book_id).limit(5)).all()
            # float(): PostgreSQL's avg() is NUMERIC (a Decimal), SQLite's a REAL (a float)
            return {"books": books, "reviews": reviews, "average_rating": round(float(average or 0), 3),
                    "top_books": [{"id": t.book_id, "average": round(float(t.avg), 3), "reviews": t.n} for t in top]}
        return cached("stats", compute)

    async def exchange_rates():
        hit = cache.get("rates")
        if hit and hit[0] > time.monotonic():
            return hit[1]
        logger.info("fetching exchange rates")
        response = await app.state.rates_client.get("/rates", params={"base": "USD"})
        response.raise_for_status()
        cache["rates"] = (time.monotonic() + settings.cache_ttl_s, response.json())
        return cache["rates"][1]

    @app.get("/books/{book_id}/price")
    async def price(book_id: int, currency: Literal["USD", "EUR", "GBP", "JPY"] = "USD"):
        def lookup():
            with SessionLocal() as db:
                return db.scalar(select(Book.price_cents).where(Book.id == book_id))

        cents = await run_in_threadpool(lookup)
        if cents is None:
            raise HTTPException(404, "book not found")
        rates = await exchange_rates()
        return {"book_id": book_id, "currency": currency, "price": round(cents / 100 * rates[currency], 2)}

    def ping():
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    @app.get("/health")
    async def health():
        # a deadline (lesson 06): a database that hangs must not hang the probe
        try:
            await asyncio.wait_for(asyncio.to_thread(ping), timeout=1.0)
        except Exception as error:  # unreachable, failing or too slow: all mean "not ready"
            logger.warning("health: database check failed: %s", type(error).__name__)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok"}

    return app
# --8<-- [end:answer]
