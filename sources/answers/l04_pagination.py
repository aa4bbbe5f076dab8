"""Reference answers of 04.keyset and 04.gzip: spliced into solutions/04_pagination.ipynb by the build, imported by
tests."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.middleware.gzip import GZipMiddleware
from pydantic import BaseModel
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES

from course_lib.db import DemoDB
from course_lib.lessons.l04_pagination import Item, ItemOut


class ItemPage(BaseModel):
    """A page of GET /items: the items, cheapest first, and the cursor of the next page (None on the last)."""

    items: list[ItemOut]
    next_cursor: str | None


def make_app(db: DemoDB) -> FastAPI:
    """GET /items?limit=&cursor=: keyset pages cheapest first (price_cents, ties by id), limit 1 to 100, the cursor
    the last item's (price_cents, id), opaque."""
    app = FastAPI()
    get_db = db.dependency()

    # --8<-- [start:keyset]
    def encode(item: Item) -> str:
        """The page's last sort key, (price_cents, id), as an opaque URL-safe string."""
        raw = json.dumps([item.price_cents, item.id]).encode()
        return base64.urlsafe_b64encode(raw).decode()

    def decode(cursor: str) -> tuple[int, int]:
        """The (price_cents, id) inside a cursor made by `encode`; 400 for anything else."""
        try:
            price, last_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
            if type(price) is not int or type(last_id) is not int:
                raise ValueError("not two integers")
        except (binascii.Error, UnicodeError, ValueError, TypeError) as error:
            raise HTTPException(status_code=400, detail="malformed cursor") from error
        return price, last_id

    @app.get("/items")
    def list_items(
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: str | None = None,
        session: Session = Depends(get_db),
    ) -> ItemPage:
        stmt = select(Item).order_by(Item.price_cents, Item.id).limit(limit)
        if cursor is not None:
            price, last_id = decode(cursor)
            stmt = stmt.where(tuple_(Item.price_cents, Item.id) > tuple_(price, last_id))  # seeks the index
        items = session.scalars(stmt).all()
        next_cursor = encode(items[-1]) if len(items) == limit else None
        return ItemPage(items=items, next_cursor=next_cursor)
    # --8<-- [end:keyset]

    return app


def add_gzip(app: FastAPI) -> FastAPI:
    """Compress responses of 1,024 bytes or more, except types that are already compressed."""
    # --8<-- [start:add-gzip]
    app.add_middleware(
        GZipMiddleware,
        minimum_size=1_024,  # the rule's threshold: 1,024 bytes or more are compressed
        compresslevel=6,
        exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/x-xz"),  # already compressed
    )
    # --8<-- [end:add-gzip]
    return app
