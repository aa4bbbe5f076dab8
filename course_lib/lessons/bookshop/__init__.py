"""The bookshop: a realistic, slow FastAPI app (`app.make_app(database_url)`) on FastAPI, SQLAlchemy and
pydantic-settings alone, with its models, settings and the outbound exchange-rate service it calls."""

from __future__ import annotations

from .database import create_tables, engine_args
from .models import Author, Book, BookshopBase, Review
from .rates import DEMO_API_KEY, RATES, rates_app
from .settings import BookshopSettings

__all__ = [
    "DEMO_API_KEY",
    "RATES",
    "Author",
    "Book",
    "BookshopBase",
    "BookshopSettings",
    "Review",
    "create_tables",
    "engine_args",
    "rates_app",
]
