# %% [markdown]
# # Exercise 00 · Your first measured endpoint
#
# Work through `notebooks/00_welcome.ipynb` first. Then write your answer in the cell marked
# `# YOUR CODE HERE` and run the `check(...)` cell below it. A failing check tells you what it
# measured and gives a hint; run it again after a fix.

# %%
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy.orm import Session

from course_lib import *


# %% [markdown]
# ## 00.first-endpoint
#
# Write `make_app(db)`: it returns a FastAPI app with **`GET /users/{user_id}`** answering
# `{"id": …, "name": …, "post_count": …}` for that user.
#
# - An unknown `user_id` answers **404**.
# - At most **2 queries** per request.
# - Every request uses **its own session**, opened for it and closed after it: the grader attributes each
#   SQL statement to the request that ran it (also under a burst of concurrent requests), and changes the
#   database between two requests to see that the next answer is fresh.
#
# `db` is a `DemoDB`: `db.dependency()` gives you a `get_db` dependency that opens one session per
# request. The models are `User` (with `.posts`) and `Post`. The grader builds fresh databases of
# two sizes, calls your `make_app`, sends real requests and counts the queries.

# %%
def make_app(db: DemoDB) -> FastAPI:
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/users/{user_id}")
    def read_user(user_id: int, session: Session = Depends(get_db)) -> dict:
        ### BEGIN SOLUTION
        ...  # --8<-- "answers/l00_welcome.py:answer"
        ### END SOLUTION

    return app


# %%
check("00.first-endpoint", make_app)

# %% [markdown]
# ## Try it yourself
#
# Your app is an ordinary FastAPI app: poke it, count its queries, time it.

# %%
db = make_demo_db(users=10, posts_per_user=4)
async with app_client(make_app(db)) as client:
    with count_queries(db.engine) as queries:
        response = await client.get("/users/3")
print(response.status_code, response.json(), queries.summary())

# %% [markdown]
# Done? `python -m course_lib progress` in a terminal shows this exercise ticked. Next lesson:
# `notebooks/01_workers.ipynb`.
