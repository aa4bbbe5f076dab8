"""Reference answer of 05.declare-indexes: spliced into solutions/05_indexes.ipynb by the build, imported by tests."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class ShopBase(DeclarativeBase):
    """The shop's own declarative base (kept apart from the course's demo models)."""


class Order(ShopBase):
    """The shop's orders, with the indexes its three queries need and no other."""

    __tablename__ = "orders"
    # --8<-- [start:answer]
    __table_args__ = (
        Index("ix_orders_store_created", "store_id", "created_at"),  # store feed: filter, then sort
        Index("ix_orders_store_gift", "store_id", "is_gift"),  # gift count: answered from the index alone
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_email: Mapped[str] = mapped_column(String(120), index=True)  # order history: equality lookup
    store_id: Mapped[int]
    is_gift: Mapped[bool]
    total_cents: Mapped[int]
    created_at: Mapped[datetime]
    # --8<-- [end:answer]
