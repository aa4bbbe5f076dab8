"""Response schemas of the users endpoints."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class UserSummary(BaseModel):
    """One line of the user list."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str


class UserDetail(UserSummary):
    """One user with the number of posts they wrote."""

    country: str
    post_count: int


class PostOut(BaseModel):
    """One post of a user."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    likes: int
