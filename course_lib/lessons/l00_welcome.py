"""Lesson 00 (welcome): a tiny blog app for the tour, and the graded warm-up exercise."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..client import app_client
from ..db import DemoDB, Post, User, make_demo_db
from ..grading import Checking, exercise
from ..queries import count_queries

LESSON = "00_welcome"


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


@exercise(
    "00.first-endpoint",
    title="Your first measured endpoint",
    lesson=LESSON,
    expects="a function make_app(db) that returns a FastAPI app with GET /users/{user_id}",
    hints=(
        "Read one user with `session.get(User, user_id)`; when it returns None, "
        "`raise HTTPException(status_code=404)`. Count posts with `len(user.posts)` or a COUNT query.",
        "Inside make_app: `get_db = db.dependency()`, then `@app.get('/users/{user_id}')` "
        "`def read_user(user_id: int, session: Session = Depends(get_db)):` … and finish with "
        "`return {'id': user.id, 'name': user.name, 'post_count': len(user.posts)}`.",
    ),
    timeout=60,
)
async def check_first_endpoint(make_app: Any, checking: Checking) -> str:
    """Several fresh databases: right body for known users, 404 for unknown ones, at most 2 queries a request."""
    most_queries = 0
    for users, posts in ((4, 3), (30, 7)):
        with make_demo_db(users=users, posts_per_user=posts, seed=users) as db:
            app = checking.build_app(make_app, db)
            async with app_client(app) as client:
                for user_id in (1, users // 2 + 1, users):
                    with count_queries(db.engine) as queries:
                        response = await client.get(f"/users/{user_id}")
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
                    response = await client.get(f"/users/{missing}")
                    checking.expect(response.status_code == 404,
                                    f"GET /users/{missing} (no such user) answered {response.status_code}; "
                                    "a missing resource should be 404 Not Found.")
    checking.record("max_queries", most_queries)
    return "right bodies on 2 database sizes, 404 for unknown users"


hello_app = FastAPI(title="Hello")


@hello_app.get("/")
async def hello() -> dict[str, str]:
    """The smallest endpoint: used to measure the request machinery and the load generator's ceiling."""
    return {"hello": "lab"}
