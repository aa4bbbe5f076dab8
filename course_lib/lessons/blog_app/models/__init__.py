"""ORM models. The course's demo schema (users → posts) lives in course_lib.db so every lesson seeds the
same tables; a project of your own defines its models here, one module per aggregate."""

from course_lib.db import Base, Comment, Post, User

__all__ = ["Base", "Comment", "Post", "User"]
