# %% [markdown]
# # Exercise 06 · Untangle the app
#
# Work through `notebooks/06_structure.ipynb` first. Then fill in every cell marked `# YOUR CODE HERE`
# and run the `check(...)` cell after them. A failing check tells you what it measured and gives a hint;
# run it again after a fix.

# %%
import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from course_lib import *
from course_lib.lessons.l06_structure import make_tangled_app

# %% [markdown]
# ## 06.refactor
#
# Here is the tangled app you are refactoring. Everything lives in one function: the engine is made on the
# spot, each handler opens its own session and writes its own SQL, and there is no `/health`.

# %%
print(inspect.getsource(make_tangled_app))


# %% [markdown]
# Split it into the layers of the lesson, in the cells below:
#
# 1. **Service**: plain functions that take a `Session` and know nothing about HTTP (a missing user
#    raises `UserNotFound`, not `HTTPException`).
# 2. **`get_db`**: a `yield` dependency that takes the `Request` and yields a session from
#    `request.app.state.session_factory`. Every route gets its session from it.
# 3. **Router**: thin routes that call the service and turn `UserNotFound` into 404.
# 4. **Health**: `GET /health/live` answers 200 without touching anything; `GET /health` runs `SELECT 1`
#    with a deadline of **at most 0.5 s** and answers 200 `{"status": "ok"}`, or **503** when the database
#    is unreachable or too slow, with no error text, URL or path in the body.
# 5. **`create_app(database_url)`** with a lifespan that makes the engine and the session factory at
#    startup and disposes of the engine at shutdown; it must not connect while starting.
#
# The grader sends a dozen requests to your app and to the tangled one on two fresh databases and wants the
# same answers, each request on a session of its own that is closed when it ends; then overrides `get_db` with
# a test database, gives your app's own database other data (and then makes it unreachable), and calls
# **every** GET route your app has: each must answer from the test database. Last, it calls `/health` with the
# database up, unreachable, and stalling 3 s on every query.

# %%
class UserNotFound(LookupError):
    """No user has this id."""


def list_users(session: Session, limit: int, offset: int) -> list[dict[str, Any]]:
    """One page of users in id order, as {"id", "name"} dicts."""
    ### BEGIN SOLUTION
    ...  # --8<-- "answers/l06_structure.py:list-users"
    ### END SOLUTION


def user_detail(session: Session, user_id: int) -> dict[str, Any]:
    """One user with their post count; raises UserNotFound."""
    ### BEGIN SOLUTION
    ...  # --8<-- "answers/l06_structure.py:user-detail"
    ### END SOLUTION


def user_posts(session: Session, user_id: int) -> list[dict[str, Any]]:
    """A user's posts in id order; raises UserNotFound."""
    ### BEGIN SOLUTION
    ...  # --8<-- "answers/l06_structure.py:user-posts"
    ### END SOLUTION


# %%
def get_db(request: Request) -> Iterator[Session]:
    """One session per request, from the factory the lifespan put on app.state; closed after the response."""
    ### BEGIN SOLUTION
    ...  # --8<-- "answers/l06_structure.py:get-db"
    ### END SOLUTION


SessionDep = Annotated[Session, Depends(get_db)]

# %%
router = APIRouter(prefix="/users")


@router.get("")
def read_users(session: SessionDep, limit: Annotated[int, Query(ge=1, le=100)] = 20,
               offset: Annotated[int, Query(ge=0)] = 0) -> list[dict[str, Any]]:
    ### BEGIN SOLUTION
    ...  # --8<-- "answers/l06_structure.py:read-users"
    ### END SOLUTION


@router.get("/{user_id}")
def read_user(user_id: int, session: SessionDep) -> dict[str, Any]:
    ### BEGIN SOLUTION
    ...  # --8<-- "answers/l06_structure.py:read-user"
    ### END SOLUTION


@router.get("/{user_id}/posts")
def read_user_posts(user_id: int, session: SessionDep) -> list[dict[str, Any]]:
    ### BEGIN SOLUTION
    ...  # --8<-- "answers/l06_structure.py:read-user-posts"
    ### END SOLUTION


# %%
health = APIRouter(prefix="/health")


def ping(engine: Engine) -> None:
    """SELECT 1 on a fresh connection; raises if the database cannot be reached."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


@health.get("/live")
async def live() -> dict[str, str]:
    ### BEGIN SOLUTION
    ...  # --8<-- "answers/l06_structure.py:live"
    ### END SOLUTION


@health.get("")
async def ready(request: Request) -> JSONResponse:
    ### BEGIN SOLUTION
    ...  # --8<-- "answers/l06_structure.py:ready"
    ### END SOLUTION


# %%
def create_app(database_url: str) -> FastAPI:
    """The refactored app: resources made in the lifespan, routes from the routers."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ### BEGIN SOLUTION
        #> # make the engine and the session factory, keep them on app.state
        #> yield  # the app serves requests while the lifespan waits here
        #> # dispose of the engine
        ...  # --8<-- "answers/l06_structure.py:lifespan"
        ### END SOLUTION

    ### BEGIN SOLUTION
    ...  # --8<-- "answers/l06_structure.py:create-app"
    ### END SOLUTION


# %%
check("06.refactor", {"create_app": create_app, "get_db": get_db})

# %% [markdown]
# ## Try it yourself
#
# Your app is an ordinary FastAPI app. Point it at a fresh database, override `get_db` the way a test would,
# and look at `/health` (the check above already measured it with the database down and stalling).

# %%
db = make_demo_db(users=10, posts_per_user=2)
app = create_app(db.url)
async with app_client(app) as client:
    print((await client.get("/users/3")).json(), (await client.get("/health")).status_code)

# %% [markdown]
# Done? `python -m course_lib progress` in a terminal shows this exercise ticked. Next lesson:
# `notebooks/07_settings.ipynb`.
