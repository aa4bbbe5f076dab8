"""Reading users and their posts; raises UserNotFound instead of knowing about HTTP status codes."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..models import Post, User
from ..schemas import UserDetail


class UserNotFound(LookupError):
    """No user has this id."""


def list_users(session: Session, *, limit: int, offset: int) -> Sequence[User]:
    """One page of users, in id order."""
    return session.scalars(select(User).order_by(User.id).limit(limit).offset(offset)).all()


def get_user_detail(session: Session, user_id: int) -> UserDetail:
    """One user and their post count, in one query."""
    row = session.execute(
        select(User.id, User.name, User.country, func.count(Post.id))
        .outerjoin(Post, Post.user_id == User.id)
        .where(User.id == user_id)
        .group_by(User.id)
    ).one_or_none()
    if row is None:
        raise UserNotFound(user_id)
    return UserDetail(id=row[0], name=row[1], country=row[2], post_count=row[3])


def list_posts(session: Session, user_id: int) -> Sequence[Post]:
    """A user's posts in id order; UserNotFound when the user does not exist."""
    if session.get(User, user_id) is None:
        raise UserNotFound(user_id)
    return session.scalars(select(Post).where(Post.user_id == user_id).order_by(Post.id)).all()
