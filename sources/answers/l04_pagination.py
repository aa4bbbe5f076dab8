"""Reference answers of 04.keyset and 04.gzip: spliced into solutions/04_pagination.ipynb by the build, imported by
tests."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Query
from fastapi.middleware.gzip import GZipMiddleware
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES

from course_lib.db import DemoDB
from course_lib.lessons.l04_pagination import Item, ItemOut


class ItemPage(BaseModel):
    """A page of GET /items: the items, newest first, and the cursor of the next page (None on the last)."""

    items: list[ItemOut]
    next_cursor: str | None


def make_app(db: DemoDB) -> FastAPI:
    """GET /items?limit=&cursor=: keyset pages newest first, limit 1 to 100, the cursor the last id seen."""
    app = FastAPI()
    get_db = db.dependency()

    # --8<-- [start:keyset]
    @app.get("/items")
    def list_items(
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: Annotated[int | None, Query(ge=1)] = None,
        session: Session = Depends(get_db),
    ) -> ItemPage:
        stmt = select(Item).order_by(Item.id.desc()).limit(limit)
        if cursor is not None:
            stmt = stmt.where(Item.id < cursor)
        items = session.scalars(stmt).all()
        next_cursor = str(items[-1].id) if len(items) == limit else None
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
