"""Lesson 10's 10.fix grader: a fixed mystery app must answer as the mystery does (fresh after the data changes) and
measure fixed on the signal of its kind. The reference (diagnose, then fix) passes all six kinds drawn at random;
right answers written other ways pass; wrong ones fail, each saying why, among them ones that look right
(a cache kept in the process, a call removed, a page sliced in Python, an engine made once but never pooled)."""

from __future__ import annotations

import asyncio
import json
import random
import threading

import pytest
from answers.l10_diagnose import PostPage
from answers.l10_diagnose import fix as reference
from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session, joinedload, selectinload
from sqlalchemy.pool import NullPool

from course_lib import grade
from course_lib.db import Post, User, thread_safe_connect_args
from course_lib.lessons import l10_diagnose
from course_lib.lessons.l10_diagnose import (
    KINDS,
    PostDetail,
    PostOut,
    RatedPosts,
    UserOut,
    UserWithPosts,
    draw_mysteries,
    fetch_exchange_rate,
    mystery_source,
)


def _grade_kind(monkeypatch, kind, answer):
    """Grade `answer` on mysteries of one kind only (the grader draws all six; one is enough to test a branch)."""
    drawn = draw_mysteries

    monkeypatch.setattr(l10_diagnose, "draw_mysteries", lambda rng=None, **kw: drawn(rng, kinds=(kind,), **kw))
    return grade("10.fix", answer, record=False)


def _app(mystery, db, handler, **route):
    """A FastAPI app serving `handler` at the mystery's path."""
    app = FastAPI()
    app.get(mystery.path, **route)(handler)
    return app


# --- the reference and the rules ---------------------------------------------------------------------------------

def test_the_reference_fixes_all_six_kinds_drawn_at_random():
    result = grade("10.fix", reference, record=False)
    assert result.passed, result.message
    assert set(result.figures) == set(KINDS)
    assert "→ 2 statements" in result.figures["n_plus_one"] or "→ 3 statements" in result.figures["n_plus_one"]
    assert result.figures["no_pooling"].endswith("→ 0 new connections")


def test_each_mystery_shows_its_code_except_to_diagnose():
    for kind, mystery in draw_mysteries(random.Random(3)):
        assert mystery.source == mystery_source(kind, mystery.path, mystery.limit)
        assert mystery.path in mystery.source and "def make_app(db: DemoDB)" in mystery.source
    _, hidden = draw_mysteries(random.Random(3), show_source=False)[0]
    assert "hidden" in hidden.source and "def " not in hidden.source


def test_the_mystery_unfixed_fails_on_its_own_signal(monkeypatch):
    says = {"n_plus_one": "still sends", "missing_index": "reads a whole table", "blocking_call": "one at a time",
            "no_pooling": "new connection", "slow_serialization": "jsonable_encoder",
            "unbounded_list": "a page is"}
    for kind in KINDS:
        result = _grade_kind(monkeypatch, kind, lambda mystery, db: mystery.make_app(db))
        assert not result.passed and says[kind] in result.message, (kind, result.message)


# --- right answers written other ways ------------------------------------------------------------------------

def _joined_users(mystery, db):
    get_db = db.dependency()

    def handler(session: Session = Depends(get_db)) -> list[UserWithPosts]:
        users = session.scalars(select(User).order_by(User.id).limit(mystery.limit)).all()
        ids = [u.id for u in users]
        loaded = session.scalars(select(User).options(joinedload(User.posts)).where(User.id.in_(ids))
                                 .order_by(User.id)).unique().all()
        return [UserWithPosts.model_validate(u) for u in loaded]
    return _app(mystery, db, handler)


def _threadpool_rate(mystery, db):
    get_db = db.dependency()

    async def handler(session: Session = Depends(get_db)) -> RatedPosts:
        rate = await run_in_threadpool(fetch_exchange_rate)
        posts = session.scalars(select(Post).order_by(Post.id).limit(mystery.limit)).all()
        return RatedPosts(rate=rate, posts=[PostOut.model_validate(p) for p in posts])
    return _app(mystery, db, handler)


def _engine_once(mystery, db):
    engine = create_engine(db.url, connect_args=thread_safe_connect_args(db.url))  # pooled, made once per app

    def handler() -> list[PostOut]:
        with Session(engine) as session:
            return [PostOut.model_validate(p) for p in
                    session.scalars(select(Post).order_by(Post.id).limit(mystery.limit))]
    return _app(mystery, db, handler)


_DETAILS = TypeAdapter(list[PostDetail])


def _dump_json(mystery, db):
    get_db = db.dependency()

    def handler(session: Session = Depends(get_db)) -> Response:
        posts = session.scalars(select(Post).order_by(Post.id).limit(mystery.limit)).all()
        return Response(_DETAILS.dump_json([PostDetail.model_validate(p) for p in posts]),
                        media_type="application/json")
    return _app(mystery, db, handler)


def _offset_pages(mystery, db):
    get_db = db.dependency()

    def handler(cursor: int = 0, session: Session = Depends(get_db)) -> PostPage:
        rows = session.scalars(select(Post).order_by(Post.id).offset(cursor).limit(31)).all()
        return PostPage(items=[PostOut.model_validate(p) for p in rows[:30]],
                        next_cursor=str(cursor + 30) if len(rows) > 30 else None)
    return _app(mystery, db, handler)


def _core_keyset(mystery, db):
    """Keyset pages read with Core (no ORM objects: the grader sees the statements' LIMIT instead)."""
    posts = Post.__table__

    def handler(cursor: int = 0) -> PostPage:
        with db.engine.connect() as conn:
            rows = conn.execute(select(posts.c.id, posts.c.user_id, posts.c.title, posts.c.likes,
                                       posts.c.created_at).where(posts.c.id > cursor).order_by(posts.c.id)
                                .limit(41)).mappings().all()
        page = [PostOut.model_validate(dict(r)) for r in rows[:40]]
        return PostPage(items=page, next_cursor=str(page[-1].id) if len(rows) > 40 else None)
    return _app(mystery, db, handler)


async def _index_async_fix(mystery, db):
    with db.engine.begin() as conn:
        conn.execute(text("CREATE UNIQUE INDEX IF NOT EXISTS users_by_email ON users (email)"))
    get_db = db.dependency()

    def handler(email: str, session: Session = Depends(get_db)) -> UserOut:
        found = session.scalar(select(User).where(User.email == email))
        if found is None:
            raise HTTPException(404)
        return UserOut.model_validate(found)
    return _app(mystery, db, handler)


@pytest.mark.parametrize(("kind", "answer"), [
    ("n_plus_one", _joined_users), ("blocking_call", _threadpool_rate), ("no_pooling", _engine_once),
    ("slow_serialization", _dump_json), ("unbounded_list", _offset_pages), ("missing_index", _index_async_fix),
    ("unbounded_list", _core_keyset),
], ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_right_fixes_written_other_ways_pass(monkeypatch, kind, answer):
    result = _grade_kind(monkeypatch, kind, answer)
    assert result.passed, result.message


# --- wrong answers, among them ones that look right ---------------------------------------------------------------

def _cached_users(mystery, db):
    """Eager loading, and the answer kept in the process after the first request: stale once the data changes."""
    get_db, kept = db.dependency(), {}

    def handler(session: Session = Depends(get_db)) -> list[UserWithPosts]:
        if "users" not in kept:
            users = session.scalars(select(User).options(selectinload(User.posts)).order_by(User.id)
                                    .limit(mystery.limit))
            kept["users"] = [UserWithPosts.model_validate(u) for u in users]
        session.scalar(select(User.id).limit(1))  # one statement per request, to look alive
        return kept["users"]
    return _app(mystery, db, handler)


def _rate_replaced_by_a_sleep(mystery, db):
    """The blocking call swapped for `await asyncio.sleep`: the loop is free, but the rates service is never asked."""
    get_db = db.dependency()

    async def handler(session: Session = Depends(get_db)) -> RatedPosts:
        await asyncio.sleep(0.04)
        posts = session.scalars(select(Post).order_by(Post.id).limit(mystery.limit)).all()
        return RatedPosts(rate=1.08, posts=[PostOut.model_validate(p) for p in posts])
    return _app(mystery, db, handler)


def _rate_fetched_once(mystery, db):
    """The rate fetched at startup and kept: fast, and one call for every request after."""
    get_db, rate = db.dependency(), fetch_exchange_rate()

    async def handler(session: Session = Depends(get_db)) -> RatedPosts:
        posts = session.scalars(select(Post).order_by(Post.id).limit(mystery.limit)).all()
        return RatedPosts(rate=rate, posts=[PostOut.model_validate(p) for p in posts])
    return _app(mystery, db, handler)


def _null_pool_once(mystery, db):
    """One engine for the app (looks pooled), but NullPool: every request still connects."""
    engine = create_engine(db.url, poolclass=NullPool, connect_args=thread_safe_connect_args(db.url))

    def handler() -> list[PostOut]:
        with Session(engine) as session:
            return [PostOut.model_validate(p) for p in
                    session.scalars(select(Post).order_by(Post.id).limit(mystery.limit))]
    return _app(mystery, db, handler)


def _encoded_by_hand(mystery, db):
    """A declared response class, but the content still goes through jsonable_encoder."""
    get_db = db.dependency()

    def handler(session: Session = Depends(get_db)) -> JSONResponse:
        posts = session.scalars(select(Post).order_by(Post.id).limit(mystery.limit)).all()
        return JSONResponse(jsonable_encoder([PostDetail.model_validate(p) for p in posts]))
    return _app(mystery, db, handler)


def _first_100_only(mystery, db):
    """A LIMIT and nothing after: bounded, but the rest of the table cannot be reached."""
    get_db = db.dependency()

    def handler(session: Session = Depends(get_db)) -> PostPage:
        rows = session.scalars(select(Post).order_by(Post.id).limit(100)).all()
        return PostPage(items=[PostOut.model_validate(p) for p in rows], next_cursor=None)
    return _app(mystery, db, handler)


def _sliced_in_python(mystery, db):
    """Pages of 50 with a cursor, cut from the whole table read on every request."""
    get_db = db.dependency()

    def handler(cursor: int = 0, session: Session = Depends(get_db)) -> PostPage:
        rows = session.scalars(select(Post).order_by(Post.id)).all()
        page = [PostOut.model_validate(p) for p in rows[cursor:cursor + 50]]
        return PostPage(items=page, next_cursor=str(cursor + 50) if cursor + 50 < len(rows) else None)
    return _app(mystery, db, handler)


def _dict_of_emails(mystery, db):
    """Every user read once into a dict at startup: no scan per lookup, but the names go stale."""
    with db.session() as session:
        by_email = {u.email: UserOut.model_validate(u) for u in session.scalars(select(User))}
    get_db = db.dependency()

    def handler(email: str, session: Session = Depends(get_db)) -> UserOut:
        session.scalar(select(User.id).where(User.id == 1))
        if email not in by_email:
            raise HTTPException(404, "no such user")
        return by_email[email]
    return _app(mystery, db, handler)


def _every_post_grouped_in_python(mystery, db):
    """Two statements, so no N+1: the page's users, then the whole posts table, grouped per user in Python."""
    get_db = db.dependency()

    def handler(session: Session = Depends(get_db)) -> list[UserWithPosts]:
        users = session.scalars(select(User).order_by(User.id).limit(mystery.limit)).all()
        by_user: dict[int, list] = {}
        for post in session.scalars(select(Post).order_by(Post.id)):
            by_user.setdefault(post.user_id, []).append(post)
        return [UserWithPosts.model_validate({"id": u.id, "name": u.name, "email": u.email,
                                              "posts": by_user.get(u.id, [])}) for u in users]
    return _app(mystery, db, handler)


def _email_to_id_map(mystery, db):
    """No index: every email mapped to its id once, in fix; each lookup then reads the row by primary key (fresh
    names), but an address changed or added later is not in the map."""
    with db.session() as session:
        ids = dict(session.execute(select(User.email, User.id)).all())
    get_db = db.dependency()

    def handler(email: str, session: Session = Depends(get_db)) -> UserOut:
        found = session.get(User, ids[email]) if email in ids else None
        if found is None:
            raise HTTPException(404, "no such user")
        return UserOut.model_validate(found)
    return _app(mystery, db, handler)


def _index_on_the_wrong_column(mystery, db):
    with db.engine.begin() as conn:
        conn.execute(text("CREATE INDEX IF NOT EXISTS users_by_name ON users (name)"))
    return mystery.make_app(db)


def _fields_dropped(mystery, db):
    """Eager loading, and the posts left out of the answer."""
    get_db = db.dependency()

    def handler(session: Session = Depends(get_db)) -> list[UserOut]:
        return [UserOut.model_validate(u) for u in
                session.scalars(select(User).order_by(User.id).limit(mystery.limit))]
    return _app(mystery, db, handler)


def _rates_one_at_a_time(mystery, db):
    """A `def` route (off the loop), but the rates call under a process-wide lock: safe, and one request at a time."""
    get_db, lock = db.dependency(), threading.Lock()

    def handler(session: Session = Depends(get_db)) -> RatedPosts:
        with lock:
            rate = fetch_exchange_rate()
        posts = session.scalars(select(Post).order_by(Post.id).limit(mystery.limit)).all()
        return RatedPosts(rate=rate, posts=[PostOut.model_validate(p) for p in posts])
    return _app(mystery, db, handler)


def _pages_kept(mystery, db):
    """Keyset pages with LIMIT, each kept in the process the first time it is asked for: stale after a write."""
    get_db, kept = db.dependency(), {}

    def handler(cursor: int = 0, session: Session = Depends(get_db)) -> PostPage:
        rows = session.scalars(select(Post).where(Post.id > cursor).order_by(Post.id).limit(51)).all()
        if cursor not in kept:
            page = [PostOut.model_validate(p) for p in rows[:50]]
            kept[cursor] = PostPage(items=page, next_cursor=str(page[-1].id) if len(rows) > 50 else None)
        return kept[cursor]
    return _app(mystery, db, handler)


def _encoded_once(mystery, db):
    """A declared return type, and the serialized answer kept from the first request: fast, and stale."""
    get_db, kept = db.dependency(), []

    def handler(session: Session = Depends(get_db)) -> Response:
        posts = session.scalars(select(Post).order_by(Post.id).limit(mystery.limit)).all()
        if not kept:
            kept.append(_DETAILS.dump_json([PostDetail.model_validate(p) for p in posts]))
        return Response(kept[0], media_type="application/json")
    return _app(mystery, db, handler)


def _core_sliced(mystery, db):
    """Pages of 50 cut in Python from every row read with Core: no ORM objects for the grader to count."""
    posts = Post.__table__

    def handler(cursor: int = 0) -> PostPage:
        with db.engine.connect() as conn:
            rows = conn.execute(select(posts.c.id, posts.c.user_id, posts.c.title, posts.c.likes,
                                       posts.c.created_at).order_by(posts.c.id)).mappings().all()
        page = [PostOut.model_validate(dict(r)) for r in rows[cursor:cursor + 50]]
        return PostPage(items=page, next_cursor=str(cursor + 50) if cursor + 50 < len(rows) else None)
    return _app(mystery, db, handler)


@pytest.mark.parametrize(("kind", "answer", "says"), [
    ("blocking_call", _rates_one_at_a_time, "one at a time"),
    ("unbounded_list", _pages_kept, "after the data changed"),
    ("slow_serialization", _encoded_once, "after the data changed"),
    ("unbounded_list", _core_sliced, "which has no LIMIT"),
    ("n_plus_one", _cached_users, "after the data changed"),
    ("n_plus_one", _fields_dropped, "the mystery answers"),
    ("blocking_call", _rate_replaced_by_a_sleep, "called fetch_exchange_rate 0 times"),
    ("blocking_call", _rate_fetched_once, "called fetch_exchange_rate 0 times"),
    ("no_pooling", _null_pool_once, "new connection"),
    ("slow_serialization", _encoded_by_hand, "jsonable_encoder"),
    ("unbounded_list", _first_100_only, "walking your pages"),
    ("unbounded_list", _sliced_in_python, "read one page (LIMIT)"),
    ("missing_index", _dict_of_emails, "after the data changed"),
    ("missing_index", _email_to_id_map, "answered 200, expected 404"),
    ("n_plus_one", _every_post_grouped_in_python, "the whole table read and sorted out in Python"),
    ("missing_index", _index_on_the_wrong_column, "reads a whole table"),
], ids=lambda v: v if isinstance(v, str) and " " not in v else getattr(v, "__name__", None))
def test_wrong_fixes_fail_and_say_why(monkeypatch, kind, answer, says):
    result = _grade_kind(monkeypatch, kind, answer)
    assert not result.passed and says in result.message, result.message


async def _async_fix_that_raises(mystery, db):
    return {}["no such kind"]


@pytest.mark.parametrize(("answer", "says"), [
    (None, "a function fix(mystery, db)"),
    (lambda mystery, db: None, "not a FastAPI app"),
    (lambda mystery, db: 1 / 0, "ZeroDivisionError"),
    (lambda mystery: None, "TypeError"),
    (_async_fix_that_raises, "KeyError"),
])
def test_bad_answers_fail_with_a_message(monkeypatch, answer, says):
    result = _grade_kind(monkeypatch, "no_pooling", answer)
    assert not result.passed and says in result.message, result.message
    assert "Traceback" not in result.message
    json.dumps(result.figures)  # figures stay plain values
