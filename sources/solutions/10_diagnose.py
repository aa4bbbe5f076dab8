# %% [markdown]
# # Exercise 10 · Find the bottleneck
#
# Work through `notebooks/10_diagnose.ipynb` first. Then write your answer in the cell marked `# YOUR CODE HERE` and
# run the `check(...)` cell below it. A failing check tells you what it measured and gives a hint; run it again
# after a fix.
#
# The graders draw **new mystery apps on every run**: one of each kind of bottleneck, in random order, with random
# route names, page sizes and table sizes. 10.diagnose calls your `diagnose` on each and compares your verdict with
# the kind it drew; 10.fix calls your `fix` and measures the app it returns. Nothing can be memorised; everything
# can be measured.

# %%
import re

from course_lib import *
from course_lib.lessons.l10_diagnose import (
    KINDS, Mystery, count_connections, count_encoder_calls, draw_mysteries, profile_request, request_cost,
    slow_callbacks, statement_plans, time_share, top_frames,
)
from course_lib.queries import observe_statements

print("kinds:", ", ".join(KINDS))

# %% [markdown]
# ## 10.diagnose
#
# A `Mystery` is an app you have never seen, with one bottleneck among the kinds above:
#
# - `mystery.make_app(db)` builds the app on a database;
# - `mystery.database(scale)` makes a fresh demo database, `scale` × its base number of users (10 posts each,
#   `1 ≤ scale ≤ 20`; close it, or use it in a `with` block);
# - `mystery.url(db)` is the slow request to examine on that database.
#
# Write **`async def diagnose(mystery)`** returning **`(kind, evidence)`**: `kind` one of `KINDS`, `evidence` a
# sentence with the figure you measured that shows it. The lesson's tools are imported above (`count_queries`,
# `count_connections`, `count_encoder_calls`, `statement_plans`, `request_cost`, `slow_callbacks`, `profile_request`, `time_share`,
# `top_frames`); use any you like, in the order you choose.

# %%
async def diagnose(mystery: Mystery) -> tuple[str, str]:
    ### BEGIN SOLUTION
    #> with mystery.database(1) as db:
    #>     async with app_client(mystery.make_app(db)) as client:
    #>         cost = await request_cost(client, mystery.url(db))
    #> return "n_plus_one", f"a guess: it took {cost.wall_ms:.0f} ms"  # measure, then name it
    ...  # --8<-- "answers/l10_diagnose.py:answer"
    ### END SOLUTION


# %%
check("10.diagnose", diagnose)

# %% [markdown]
# ## 10.fix
#
# Now fix what you found. Write **`async def fix(mystery, db)`** returning a FastAPI app that serves
# `mystery.path` on the database `db` **without the mystery's bottleneck**, answering exactly as the mystery does.
# `print(mystery.source)` shows the mystery's code; `mystery.path` is its route and `mystery.limit` its page size.
#
# The grader draws six new mysteries (one of each kind, shuffled), calls your `fix` on fresh databases and checks:
#
# - **the same answers**: the same status and JSON as the mystery, also after the data changes (nothing kept in
#   the process); for an unbounded list, pages `{"items": [...], "next_cursor": ...}` (at most 100 posts, the
#   next page at `?cursor=`) that hold every post once, in order, to the last;
# - **the measured fix**, on a database 4 × larger, by the signal that named the kind: the statements of one
#   request, the plans of a lookup, whether 10 concurrent requests wait for the rates service side by side (each
#   still asking it once), the connections a warm request opens, the calls of `jsonable_encoder`, the posts one
#   page loads.
#
# A change of schema (an index) is a migration: run it inside `fix`, before you build the app, as a deploy runs
# its migrations before the servers start.

# %%
from fastapi import Depends, FastAPI, HTTPException, Query
from pydantic import BaseModel
from sqlalchemy import select, text
from sqlalchemy.orm import Session, selectinload

from course_lib.db import Post, User
from course_lib.lessons.l10_diagnose import (
    PostDetail, PostOut, RatedPosts, UserOut, UserWithPosts, fetch_exchange_rate,
)

kind, example = draw_mysteries(kinds=("blocking_call",))[0]
print(example.source)

# %%
class PostPage(BaseModel):
    """One page of posts and the cursor of the next (None on the last)."""

    items: list[PostOut]
    next_cursor: str | None


async def fix(mystery: Mystery, db) -> FastAPI:
    ### BEGIN SOLUTION
    #> kind, evidence = await diagnose(mystery)
    #> return mystery.make_app(db)  # the mystery as it is: replace it with the app fixed for `kind`
    ...  # --8<-- "answers/l10_diagnose.py:fix"
    ### END SOLUTION


# %%
check("10.fix", fix)

# %% [markdown]
# ## Try it yourself
#
# Draw a few mysteries and compare your verdicts with what was drawn (the grader does the same, without telling).

# %%
for kind, mystery in draw_mysteries()[:3]:
    said, evidence = await diagnose(mystery)
    print(f"{mystery!r}: drawn {kind!r}, you said {said!r} ({evidence})")

# %% [markdown]
# Done? `python -m course_lib progress` in a terminal shows this exercise ticked.
