# %% [markdown]
# # Exercise 09 · Async database access
#
# Work through `notebooks/09_async_db.ipynb` first. Then write your answer in each cell marked
# `# YOUR CODE HERE` and run the `check(...)` cell below it. A failing check tells you what it measured and gives
# a hint; `hint("09.async-endpoint")` gives the next level.

# %%
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import joinedload, selectinload

from course_lib import *


# %% [markdown]
# ## 09.async-endpoint
#
# A blog's front page shows its **most-liked posts**, each with its author and its comments, and readers add
# comments. Write `make_app(engine)`: it receives an **`AsyncEngine`** on the demo database (users → posts →
# comments) and returns a FastAPI app with
#
# - **`GET /posts/top?limit=N`** (default 10): the `N` posts with the most `likes` (ties: lower `id` first), each
#   as `{"id", "title", "likes", "author": {"id", "name"}, "comments": [{"author_name", "body"}, …]}` (comments in
#   `id` order, as `Post.comments` loads them);
# - **`POST /posts/{post_id}/comments`** with a JSON body `{"author_name", "body"}`: stores the comment and
#   answers **201** with `{"id", "post_id", "author_name", "body"}` of the stored row.
#
# The grader runs your app on databases of several sizes (posts with no comments, posts with several) and sees
# every statement that reaches the database, whoever sends it: the same number of statements for 3 posts as for
# 11 (at most 3), all through the engine it gave you (no second engine), and no `MissingGreenlet` on any data.
# Then 10 requests arrive at once, each statement taking a simulated 100 ms round trip: none of them may wait on
# the event loop's own thread.

# %%
class NewComment(BaseModel):
    author_name: str
    body: str


def make_app(engine: AsyncEngine) -> FastAPI:
    ### BEGIN SOLUTION
    ...  # --8<-- "answers/l09_async_db.py:endpoint"
    ### END SOLUTION


# %%
check("09.async-endpoint", make_app)

# %% [markdown]
# ## 09.pool-budget
#
# Your service runs `workers` worker processes against a database that accepts `max_connections`, of which
# `reserved` are kept for administrators (migrations, a console, monitoring). Write `make_engine(url, *, workers,
# max_connections, reserved)`: each worker calls it once and gets its own **`AsyncEngine`** on `url` (an async
# driver's URL). The grader draws a deployment at random and sends each worker bursts of **2 × its share**
# (share = what is left to the app divided by the workers) concurrent requests, each holding a connection for
# 300 ms:
#
# - the connections open at once, over all workers (counted with pool events), never exceed what the database
#   leaves to the app;
# - no request fails, and no request fails with a pool timeout;
# - each worker can hold its whole share at once, so that a burst is served in 2 waves (a request that queues for
#   a connection the database could have given is wasted time);
# - then the database restarts (every pooled connection is dropped) and the next burst must not fail either
#   (nor exceed the limit).

# %%
def make_engine(url: str, *, workers: int, max_connections: int, reserved: int) -> AsyncEngine:
    ### BEGIN SOLUTION
    ...  # --8<-- "answers/l09_async_db.py:budget"
    ### END SOLUTION


# %%
check("09.pool-budget", make_engine)
