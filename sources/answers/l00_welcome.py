"""Reference answer of 00.first-endpoint: spliced into solutions/00_welcome.ipynb by the build, imported by tests."""

from __future__ import annotations

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy.orm import Session

from course_lib import DemoDB, User


def make_app(db: DemoDB) -> FastAPI:
    """GET /users/{user_id}: the user and its post count in 2 queries, 404 when unknown, one session per request."""
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/users/{user_id}")
    def read_user(user_id: int, session: Session = Depends(get_db)) -> dict:
        # --8<-- [start:answer]
        user = session.get(User, user_id)
        if user is None:
            raise HTTPException(status_code=404, detail="user not found")
        return {"id": user.id, "name": user.name, "post_count": len(user.posts)}
        # --8<-- [end:answer]

    return app
