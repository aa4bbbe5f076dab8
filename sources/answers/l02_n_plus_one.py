"""Reference answers of 02.fix-n-plus-one, 02.nested and 02.raise-on-lazy: spliced into solutions/02_n_plus_one.ipynb
by the build, imported by the tests."""

from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, joinedload, raiseload, selectinload

from course_lib.db import Post, User


def users_with_posts() -> Select[User]:
    """GET /users' statement: users by id, each with their posts, in 2 queries for any number of users."""
    # --8<-- [start:fix-n-plus-one]
    statement = select(User).options(selectinload(User.posts)).order_by(User.id)
    # --8<-- [end:fix-n-plus-one]
    return statement


def users_with_posts_and_comments() -> Select[User]:
    """GET /users/with-comments' statement: users → posts → comments, one query per level."""
    # --8<-- [start:nested]
    statement = (select(User)
                 .options(selectinload(User.posts).selectinload(Post.comments))
                 .order_by(User.id))
    # --8<-- [end:nested]
    return statement


def strict_posts(session: Session) -> list[Post]:
    """Every post by id with its author and comments loaded, and any other relationship raising when read."""
    # --8<-- [start:raise-on-lazy]
    statement = (select(Post)
                 .options(joinedload(Post.author), selectinload(Post.comments), raiseload("*"))
                 .order_by(Post.id))
    return list(session.scalars(statement).all())
    # --8<-- [end:raise-on-lazy]
