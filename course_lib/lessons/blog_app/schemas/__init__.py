"""Pydantic schemas: the shapes the API accepts and returns (separate from the ORM models)."""

from .users import PostOut, UserDetail, UserSummary

__all__ = ["PostOut", "UserDetail", "UserSummary"]
