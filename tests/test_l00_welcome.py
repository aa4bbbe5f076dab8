"""Lesson 00's grader (00.first-endpoint): right answers written several ways pass; wrong ones fail saying what
was measured; one Session per request, seen from outside (every statement attributed to its request)."""

from __future__ import annotations

from typing import Any

import pytest
from answers.l00_welcome import make_app
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from course_lib import Post, User, grade
from course_lib.lessons.l00_welcome import make_tour_app

ID = "00.first-endpoint"


def with_count_query_and_async_route(db):
    app = FastAPI()

    @app.get("/users/{user_id}")
    async def read_user(user_id: int) -> Any:
        with db.session() as session:
            row = session.execute(
                select(User.id, User.name, func.count(Post.id))
                .outerjoin(Post, Post.user_id == User.id)
                .where(User.id == user_id)
                .group_by(User.id)
            ).first()
        if row is None:
            return JSONResponse({"detail": "no such user"}, status_code=404)
        return {"id": row[0], "name": row[1], "post_count": row[2]}

    return app


@pytest.mark.parametrize(("answer", "queries"), [(make_app, 2), (with_count_query_and_async_route, 1)])
def test_right_answers_pass(answer, queries):
    result = grade(ID, answer)
    assert result.passed, result.message
    assert result.figures["max_queries"] == queries


# ---------- wrong answers ----------

def _reference_endpoint(db):
    """The reference's GET /users/{user_id} function (answers.l00_welcome), for wrong answers that change one thing."""
    return next(route.endpoint for route in make_app(db).routes if getattr(route, "path", "") == "/users/{user_id}")


def no_404(db):
    reference = _reference_endpoint(db)
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/users/{user_id}")
    def read_user(user_id: int, session: Session = Depends(get_db)) -> dict:
        try:
            return reference(user_id, session)
        except HTTPException:
            return {}  # an unknown user answers 200

    return app


def hard_coded_count(db):
    reference = _reference_endpoint(db)
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/users/{user_id}")
    def read_user(user_id: int, session: Session = Depends(get_db)) -> dict:
        return {**reference(user_id, session), "post_count": 3}

    return app


def one_query_per_post(db):
    reference = _reference_endpoint(db)
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/users/{user_id}")
    def read_user(user_id: int, session: Session = Depends(get_db)) -> dict:
        ids = session.scalars(select(Post.id).where(Post.user_id == user_id)).all()
        count = sum(1 for post_id in ids if session.get(Post, post_id) is not None)  # one query per post
        return {**reference(user_id, session), "post_count": count}

    return app


@pytest.mark.parametrize(("answer", "measured"), [
    (no_404, "answered 200"),
    (hard_coded_count, "'post_count': 7"),
    (one_query_per_post, "queries; 2 are enough"),
    (make_tour_app, "expected {"),
])
def test_wrong_answers_fail_with_what_was_measured(answer, measured):
    result = grade(ID, answer)
    assert not result.passed
    assert measured in result.message
    assert result.hint


# ---------- 00: one session per request, seen from outside (issue 12 §1) ----------

def _summary(user) -> dict:
    return {"id": user.id, "name": user.name, "post_count": len(user.posts)}


def with_session_in_route(db):
    app = FastAPI()

    @app.get("/users/{user_id}")
    def read_user(user_id: int) -> dict:
        with Session(db.engine) as session:
            user = session.get(User, user_id)
            if user is None:
                raise HTTPException(status_code=404)
            return _summary(user)

    return app


def sessionmaker_dependency_made_in_factory(db):
    from sqlalchemy.orm import sessionmaker

    factory = sessionmaker(bind=db.engine)  # the factory is shared; each request opens its own session

    def get_session():
        session = factory()
        try:
            yield session
        finally:
            session.close()

    app = FastAPI()

    @app.get("/users/{user_id}")
    def read_user(user_id: int, session: Session = Depends(get_session)) -> dict:
        user = session.get(User, user_id)
        if user is None:
            raise HTTPException(status_code=404)
        return _summary(user)

    return app


def async_route_with_to_thread(db):
    import asyncio

    def lookup(user_id: int):
        with db.session() as session:
            user = session.get(User, user_id)
            return None if user is None else _summary(user)

    app = FastAPI()

    @app.get("/users/{user_id}")
    async def read_user(user_id: int) -> dict:
        found = await asyncio.to_thread(lookup, user_id)
        if found is None:
            raise HTTPException(status_code=404)
        return found

    return app


@pytest.mark.parametrize("answer", [with_session_in_route, sessionmaker_dependency_made_in_factory,
                                    async_route_with_to_thread])
def test_one_session_per_request_written_other_ways_passes(answer):
    result = grade(ID, answer, record=False)
    assert result.passed, result.message
    assert result.figures["requests"] >= 20


def _route_on(app: FastAPI, get_session) -> FastAPI:
    @app.get("/users/{user_id}")
    def read_user(user_id: int) -> dict:
        session = get_session()
        user = session.get(User, user_id)
        if user is None:
            raise HTTPException(status_code=404)
        return _summary(user)

    return app


_MODULE_SESSION: dict = {}


def module_global_session(db):
    _MODULE_SESSION["session"] = db.session()  # one session for the whole module, created once
    return _route_on(FastAPI(), lambda: _MODULE_SESSION["session"])


def session_made_in_factory(db):
    session = db.session()
    return _route_on(FastAPI(), lambda: session)


def session_cached_with_lru_cache(db):
    from functools import lru_cache

    @lru_cache
    def get_session() -> Session:
        return db.session()

    return _route_on(FastAPI(), get_session)


def session_made_in_factory_through_depends(db):
    session = db.session()
    app = FastAPI()

    @app.get("/users/{user_id}")
    async def read_user(user_id: int, s: Session = Depends(lambda: session)) -> dict:
        user = s.get(User, user_id)
        if user is None:
            raise HTTPException(status_code=404)
        return _summary(user)

    return app


def shared_session_closed_after_each_request(db):
    """Closing it at the end of each request does not make one session safe for concurrent requests."""
    session = db.session()

    def get_session():
        try:
            yield session
        finally:
            session.close()

    app = FastAPI()

    @app.get("/users/{user_id}")
    def read_user(user_id: int, s: Session = Depends(get_session)) -> dict:
        user = s.get(User, user_id)
        if user is None:
            raise HTTPException(status_code=404)
        return _summary(user)

    return app


def scoped_session_never_removed(db):
    from sqlalchemy.orm import scoped_session

    return _route_on(FastAPI(), scoped_session(db.Session))  # one per thread, kept forever: threads serve many requests


def shared_connection(db):
    from sqlalchemy import text

    conn = db.engine.connect()
    app = FastAPI()

    @app.get("/users/{user_id}")
    def read_user(user_id: int) -> dict:
        row = conn.execute(text("SELECT id, name FROM users WHERE id = :id"), {"id": user_id}).first()
        if row is None:
            raise HTTPException(status_code=404)
        count = conn.execute(text("SELECT count(*) FROM posts WHERE user_id = :id"), {"id": user_id}).scalar()
        return {"id": row[0], "name": row[1], "post_count": count}

    return app


@pytest.mark.parametrize("answer", [module_global_session, session_made_in_factory, session_cached_with_lru_cache,
                                    session_made_in_factory_through_depends, shared_session_closed_after_each_request,
                                    scoped_session_never_removed])
def test_one_session_shared_by_every_request_fails(answer):
    result = grade(ID, answer, record=False)
    assert not result.passed, repr(result)
    assert "same SQLAlchemy Session object as GET /users/" in result.message, result.message
    assert "not thread-safe" in result.message and "leaks into the next" in result.message


def test_one_connection_shared_by_every_request_fails():
    result = grade(ID, shared_connection, record=False)
    assert not result.passed and "same SQLAlchemy Connection object" in result.message, result.message


def test_answers_cached_across_requests_fail_as_stale():
    """A cache of whole answers never touches a session twice, but answers from an earlier request's state."""
    from functools import lru_cache

    def cached_answers(db):
        @lru_cache
        def summary(user_id: int):
            with db.session() as session:
                user = session.get(User, user_id)
                return None if user is None else _summary(user)

        app = FastAPI()

        @app.get("/users/{user_id}")
        def read_user(user_id: int) -> dict:
            found = summary(user_id)
            if found is None:
                raise HTTPException(status_code=404)
            return found

        return app

    result = grade(ID, cached_answers, record=False)
    assert not result.passed and "after user 1 was renamed" in result.message, result.message
    assert "state kept from an earlier request" in result.message


def test_a_session_left_open_after_the_request_fails():
    """A session per request that is never closed (kept alive, e.g. in a list) holds a pooled connection."""

    def never_closed(db):
        kept = []
        app = FastAPI()

        @app.get("/users/{user_id}")
        def read_user(user_id: int) -> dict:
            session = db.session()
            kept.append(session)
            user = session.get(User, user_id)
            if user is None:
                raise HTTPException(status_code=404)
            return _summary(user)

        return app

    result = grade(ID, never_closed, record=False)
    assert not result.passed and "left its Session open" in result.message, result.message
    assert "pool runs dry" in result.message
