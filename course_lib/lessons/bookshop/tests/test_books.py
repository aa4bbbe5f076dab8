"""The bookshop's endpoints answer from its database and its exchange-rate service."""

from __future__ import annotations

import importlib

import httpx
import pytest

from .conftest import AUTHORS, BOOKS_PER_AUTHOR, REVIEWS_PER_BOOK

pytestmark = pytest.mark.anyio


async def test_books_are_paged_with_author_and_review_count(client: httpx.AsyncClient) -> None:
    """skip and limit select a page in id order; each book carries its author's name and review count."""
    page = (await client.get("/books", params={"skip": 2, "limit": 3})).json()
    assert [b["id"] for b in page] == [3, 4, 5]
    assert page[2]["author"] == "Author 2" and page[2]["review_count"] == REVIEWS_PER_BOOK
    assert (await client.get("/books", params={"limit": 0})).status_code == 422


async def test_book_detail_and_isbn_lookup(client: httpx.AsyncClient) -> None:
    """A book by id has its reviews; by ISBN it is found; unknown ones are 404."""
    book = (await client.get("/books/5")).json()
    assert book["author"]["id"] == 2 and len(book["reviews"]) == REVIEWS_PER_BOOK
    assert (await client.get(f"/books/isbn/{book['isbn']}")).json()["id"] == 5
    assert (await client.get("/books/999")).status_code == 404
    assert (await client.get("/books/isbn/0000000000000")).status_code == 404


async def test_stats_count_everything(client: httpx.AsyncClient) -> None:
    """/stats counts every book and review."""
    stats = (await client.get("/stats")).json()
    books = AUTHORS * BOOKS_PER_AUTHOR
    assert (stats["books"], stats["reviews"]) == (books, books * REVIEWS_PER_BOOK) and len(stats["top_books"]) == 5


async def test_price_in_another_currency(client: httpx.AsyncClient) -> None:
    """The price is converted with the rate the exchange-rate service returns."""
    from ..rates import RATES

    usd = (await client.get("/books/1/price")).json()["price"]
    eur = (await client.get("/books/1/price", params={"currency": "EUR"})).json()["price"]
    assert eur == round(usd * RATES["EUR"], 2)
    assert (await client.get("/books/1/price", params={"currency": "XXX"})).status_code == 422


def test_served_module_reads_its_database_from_the_environment(database_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`served.app` is built on BOOKSHOP_DB_URL; without it, importing says what to set."""
    package = __name__.rsplit(".", 2)[0]
    monkeypatch.setenv("BOOKSHOP_DB_URL", database_url)
    served = importlib.reload(importlib.import_module(f"{package}.served"))
    assert served.app.state.engine.url.database.endswith("shop.sqlite3")
    monkeypatch.delenv("BOOKSHOP_DB_URL")
    with pytest.raises(RuntimeError, match="BOOKSHOP_DB_URL"):
        importlib.reload(served)
