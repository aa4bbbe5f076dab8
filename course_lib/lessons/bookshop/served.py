"""The bookshop as a module-level `app` for a real server, configured by the environment.

Run it from the folder that holds `bookshop/`: `BOOKSHOP_DB_URL=sqlite:///shop.sqlite3 uvicorn bookshop.served:app`
(the tables must exist: `bookshop.create_tables(url)` is the deploy step).
"""

from __future__ import annotations

import os

from .app import make_app


def _database_url() -> str:
    """The database URL from BOOKSHOP_DB_URL; a clear error when it is not set."""
    url = os.environ.get("BOOKSHOP_DB_URL")
    if not url:
        raise RuntimeError("set BOOKSHOP_DB_URL to the bookshop's database URL, e.g. sqlite:///shop.sqlite3")
    return url


app = make_app(_database_url())
