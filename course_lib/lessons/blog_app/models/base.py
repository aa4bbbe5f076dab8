"""The declarative base every model of the app derives from (its metadata lists all the app's tables)."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of the blog's models."""
