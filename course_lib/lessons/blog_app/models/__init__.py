"""ORM models, one module per aggregate: users with their posts and comments (`users.py`) on one declarative base.

The tables have the names and columns of the course's demo schema, so a database the course seeds is one this app
reads (and `database.create_tables` makes the same tables for a project of your own)."""

from .base import Base
from .users import Comment, Post, User

__all__ = ["Base", "Comment", "Post", "User"]
