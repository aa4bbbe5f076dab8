"""Lesson 00 (welcome): a tiny blog app for the tour, and the graded warm-up exercise."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any
from weakref import WeakKeyDictionary, WeakSet

import httpx
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

from ..client import app_client
from ..db import DemoDB, Post, User, make_demo_db
from ..events import listening
from ..grading import Checking, exercise
from ..queries import count_queries


def make_tour_app(db: DemoDB) -> FastAPI:
    """The welcome tour's app: list users (names only) and read one user."""
    app = FastAPI(title="Welcome tour")
    get_db = db.dependency()

    @app.get("/users")
    def list_users(session: Session = Depends(get_db)) -> list[dict[str, Any]]:
        return [{"id": u.id, "name": u.name} for u in session.scalars(select(User).order_by(User.id))]

    @app.get("/users/{user_id}")
    def read_user(user_id: int, session: Session = Depends(get_db)) -> dict[str, Any]:
        user = session.get(User, user_id)
        if user is None:
            raise HTTPException(status_code=404, detail="user not found")
        return {"id": user.id, "name": user.name}

    return app


def _expected_summary(db: DemoDB, user_id: int) -> dict[str, Any]:
    with db.session() as session:
        user = session.get(User, user_id)
        assert user is not None
        posts = session.scalar(select(func.count()).where(Post.user_id == user_id))
        return {"id": user.id, "name": user.name, "post_count": posts}


_REQUEST: ContextVar[str | None] = ContextVar("lab_request", default=None)
_NOW = datetime(2024, 6, 1)


class SessionSharing:
    """Which request each SQLAlchemy Session and Connection ran statements for, whoever created them.

    Listens on every Session (`do_orm_execute`, `after_begin`) and every Engine (`before_cursor_execute`) while
    active; a request is labelled with `request(label)` around the client call (the label follows the request
    into FastAPI's thread pool). A Session or Connection seen in two requests is shared between requests."""

    def __init__(self) -> None:
        self._owner: WeakKeyDictionary[Any, str] = WeakKeyDictionary()
        self._lock = threading.Lock()
        self.shared: list[tuple[str, str, str]] = []  # (what, first request, later request)
        self._used: dict[str, WeakSet[Any]] = {}  # request → the Sessions and Connections it ran statements on
        self.pending: str | None = None  # the last request, whose Sessions and Connections must be closed by now

    def _seen(self, what: str, obj: Any) -> None:
        label = _REQUEST.get()
        if label is None:  # not inside a graded request (the grader's own queries, the factory, lifespan)
            return
        with self._lock:
            first = self._owner.setdefault(obj, label)
            if first != label:
                self.shared.append((what, first, label))
            self._used.setdefault(label, WeakSet()).add(obj)

    def _on_orm_execute(self, state: ORMExecuteState) -> None:
        self._seen("Session", state.session)

    def _on_begin(self, session: Session, transaction: SessionTransaction, connection: Connection) -> None:
        self._seen("Session", session)

    def _on_cursor(self, conn: Connection, *args: Any) -> None:
        self._seen("Connection", conn)

    def __enter__(self) -> SessionSharing:
        self._hooks = contextlib.ExitStack()
        self._hooks.enter_context(listening(Session, "do_orm_execute", self._on_orm_execute))
        self._hooks.enter_context(listening(Session, "after_begin", self._on_begin))
        self._hooks.enter_context(listening(Engine, "before_cursor_execute", self._on_cursor))
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.close()

    @staticmethod
    @contextmanager
    def request(label: str) -> Iterator[None]:
        """Attribute every statement run while this block is active (here or in threads it starts) to `label`."""
        token = _REQUEST.set(label)
        try:
            yield
        finally:
            _REQUEST.reset(token)

    def left_open(self, label: str) -> list[str]:
        """What request `label` left open after its response: a Session still in a transaction, a Connection
        not closed (each holds a pooled database connection until someone closes it, or the garbage collector)."""
        with self._lock:
            used = list(self._used.get(label, ()))
        sessions = [o for o in used if isinstance(o, Session) and o.in_transaction()]
        connections = [o for o in used if isinstance(o, Connection) and not o.closed]
        return ["Session"] * len(sessions) + ["Connection"] * len(connections)  # a Session's own connection too

    def first_sharing(self) -> tuple[str, str, str] | None:
        """The first Session or Connection that served two requests, if any."""
        with self._lock:
            return self.shared[0] if self.shared else None


_SHARED_WHY = ("A Session is a unit of work for ONE request: it is not thread-safe, and FastAPI runs `def` "
               "endpoints on several threads at once, so concurrent requests would interleave their statements "
               "and transactions on it; and whatever one request leaves in it (loaded objects, a pending or "
               "failed transaction) leaks into the next. Open a new session in each request and close it at "
               "the end (a `yield` dependency, or `with db.session() as session:` inside the route).")


def _expect_not_shared(checking: Checking, sharing: SessionSharing, label: str | None = None) -> None:
    """Fail, saying why, if a Session or Connection has served two requests so far, or if the request before
    `label` left one open (checked one request late, so that a shared one is named as shared, not as open)."""
    found = sharing.first_sharing()
    if found is not None:
        what, first, later = found
        checking.fail(f"{later} ran its SQL on the same SQLAlchemy {what} object as {first}, an earlier request: "
                      f"one {what} shared between requests. {_SHARED_WHY}")
    previous, sharing.pending = sharing.pending, label
    left = sharing.left_open(previous) if previous else []
    if left:
        checking.fail(f"{previous} returned its response but left its {left[0]} open (still in a transaction, holding "
                      "one of the pool's few database connections until the garbage collector gets to it; under "
                      "load the pool runs dry and requests wait, then fail). Close it at the end of every request: "
                      "`with db.session() as session:`, or a `yield` dependency.")


async def _get(client: httpx.AsyncClient, path: str, label: str) -> httpx.Response:
    """GET `path`, attributing every statement it runs to the request `label`."""
    with SessionSharing.request(label):
        return await client.get(path)


@exercise(
    "00.first-endpoint",
    title="Your first measured endpoint",
    expects="a function make_app(db) that returns a FastAPI app with GET /users/{user_id}",
    hints=(
        "Look at what one request needs: the user's id and name, how many posts they have, and a 404 when the id "
        "does not exist. Each request should open its own database session and close it when it is done; "
        "the tour's `make_tour_app` above shows the pattern.",
        "Tools: `db.dependency()` gives a FastAPI dependency that opens one session per request "
        "(`session: Session = Depends(get_db)`); `session.get(User, user_id)` reads one user or returns None; "
        "`HTTPException(status_code=404)` answers Not Found; `len(user.posts)` or a `func.count()` query counts "
        "the posts (at most 2 queries in all).",
        "Shape: `get_db = db.dependency()` then `@app.get('/users/{user_id}')` / `def read_user(user_id: int, "
        "session: Session = Depends(get_db)):` / `user = …` / `if user is None: raise …` / "
        "`return {'id': …, 'name': …, 'post_count': …}`.",
    ),
    timeout=60,
)
async def check_first_endpoint(make_app: Any, checking: Checking) -> str:
    """Several fresh databases: right bodies, 404s, ≤ 2 queries a request, fresh data, one session per request.

    Every statement is attributed to the request that ran it (Session and Engine events): a Session or
    Connection used by two requests (a module-level session, one made in the factory, a cached one) fails."""
    most_queries = 0
    requests = 0
    with SessionSharing() as sharing:
        for users, posts in ((4, 3), (30, 7)):
            with make_demo_db(users=users, posts_per_user=posts, seed=users) as db:
                app = checking.build_app(make_app, db)
                async with app_client(app) as client:
                    for user_id in (1, users // 2 + 1, users):
                        requests += 1
                        with count_queries(db.engine) as queries:
                            label = f"GET /users/{user_id} (request {requests})"
                            response = await _get(client, f"/users/{user_id}", label)
                        _expect_not_shared(checking, sharing, label)
                        checking.expect(response.status_code == 200,
                                        f"GET /users/{user_id} answered {response.status_code}, expected 200 "
                                        f"(the database has {users} users). Body: {response.text[:200]}")
                        expected = _expected_summary(db, user_id)
                        checking.expect(response.json() == expected,
                                        f"GET /users/{user_id} returned {response.json()}, expected {expected}")
                        most_queries = max(most_queries, queries.count)
                        checking.expect(queries.count <= 2,
                                        f"GET /users/{user_id} ran {queries.count} queries; 2 are enough "
                                        "(one for the user, one for the posts or their count).")
                    for missing in (users + 1, 10_000):
                        requests += 1
                        label = f"GET /users/{missing} (request {requests})"
                        response = await _get(client, f"/users/{missing}", label)
                        _expect_not_shared(checking, sharing, label)
                        checking.expect(response.status_code == 404,
                                        f"GET /users/{missing} (no such user) answered {response.status_code}; "
                                        "a missing resource should be 404 Not Found.")
                    if users == 4:
                        continue  # the freshness and burst checks run on the larger database
                    # the database changes between two requests: a session that outlived its request answers stale
                    with db.engine.begin() as conn:
                        conn.execute(update(User).where(User.id == 1).values(name="Renamed Since"))
                        conn.execute(insert(Post).values(user_id=1, title="new", body="new", likes=0,
                                                         created_at=_NOW))
                    requests += 1
                    label = f"GET /users/1 (request {requests})"
                    response = await _get(client, "/users/1", label)
                    _expect_not_shared(checking, sharing, label)
                    expected = _expected_summary(db, 1)
                    checking.expect(response.status_code == 200 and response.json() == expected,
                                    f"after user 1 was renamed and given one more post (committed by another "
                                    f"connection), GET /users/1 returned {response.text[:200]}, expected {expected}: "
                                    "your app answered from state kept from an earlier request (a session or "
                                    "cache that outlives the request). " + _SHARED_WHY)
                    # a burst of concurrent requests, as a server sees them
                    ids = list(range(1, users + 1))[:12]
                    labels = [f"GET /users/{i} (concurrent request {n + 1} of {len(ids)})" for n, i in enumerate(ids)]
                    try:
                        async with asyncio.timeout(20):
                            answers = await asyncio.gather(*(_get(client, f"/users/{i}", label)
                                                             for i, label in zip(ids, labels, strict=True)))
                    except TimeoutError:
                        checking.fail(f"{len(ids)} concurrent GET /users/… did not all answer within 20 s.")
                    _expect_not_shared(checking, sharing)
                    for label in labels:
                        sharing.pending = label
                        _expect_not_shared(checking, sharing)  # each request of the burst closed its session
                    for user_id, answer in zip(ids, answers, strict=True):
                        expected = _expected_summary(db, user_id)
                        checking.expect(answer.status_code == 200 and answer.json() == expected,
                                        f"with {len(ids)} concurrent requests, GET /users/{user_id} returned "
                                        f"{answer.status_code} {answer.text[:200]}, expected {expected}.")
                    requests += len(ids)
        _expect_not_shared(checking, sharing)  # the last request's session is closed too
    checking.record("max_queries", most_queries)
    checking.record("requests", requests)
    return "right bodies on 2 database sizes, 404 for unknown users, a session per request"


hello_app = FastAPI(title="Hello")


@hello_app.get("/")
async def hello() -> dict[str, str]:
    """The smallest endpoint: used to measure the request machinery and the load generator's ceiling."""
    return {"hello": "lab"}
