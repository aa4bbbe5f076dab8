"""The bookshop's tables: authors → books → reviews (as shipped, no secondary index at all)."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class BookshopBase(DeclarativeBase):
    """Declarative base of the bookshop (its metadata lists its three tables)."""


class Author(BookshopBase):
    """An author; `name` has no index."""

    __tablename__ = "authors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    country: Mapped[str] = mapped_column(String(2))
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(BookshopBase):
    """A book; as shipped neither `author_id` nor `isbn` is indexed."""

    __tablename__ = "books"

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    title: Mapped[str] = mapped_column(String(200))
    isbn: Mapped[str] = mapped_column(String(13))
    price_cents: Mapped[int]
    year: Mapped[int]
    author: Mapped[Author] = relationship(back_populates="books")
    reviews: Mapped[list[Review]] = relationship(back_populates="book", order_by="Review.id")


class Review(BookshopBase):
    """A reader's review of a book; `book_id` has no index as shipped."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(primary_key=True)
    book_id: Mapped[int] = mapped_column(ForeignKey("books.id"))
    rating: Mapped[int]
    body: Mapped[str] = mapped_column(String(300))
    book: Mapped[Book] = relationship(back_populates="reviews")
