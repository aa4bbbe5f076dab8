# %% [markdown]
# # 00 · Welcome to the FastAPI Performance Lab
#
# **Teaching:** 15 min · **Exercise:** 10 min
#
# **Questions**
# - How does this course *prove* a performance claim instead of asserting it?
# - How do I count the queries an endpoint runs, and time a request?
# - How are the exercises graded, and where do I see my progress?
#
# **Objectives**
# - Build a fresh demo database and a small FastAPI app, in-process.
# - Count SQL statements with `count_queries` and time requests with `measure` and `compare`.
# - Read a plot of timings, move a slider, and run a graded warm-up exercise.
#
# The rule of this course: **nothing is claimed that is not measured in the cell above it.**
# Your machine's numbers will differ from anyone else's; the *ratios* and *counts* are what carry over.

# %% [markdown]
# ## One import
#
# Every lesson starts with the same line. `course_lib` is the course's small toolkit: demo
# databases, a query counter, an in-process HTTP client, timers, plots, a real-server runner and the
# graders. Its code is in `course_lib/`, one short, documented module per job.

# %%
from course_lib import *

# %% [markdown]
# ## A fresh database
#
# `make_demo_db` builds a new SQLite database in a temporary file, filled with deterministic fake
# data: users, each with posts. Same arguments, same data, every run. Nothing is shared between runs
# or between learners.

# %%
db = make_demo_db(users=50, posts_per_user=5)
db

# %% [markdown]
# ## Counting queries
#
# `count_queries(engine)` listens to SQLAlchemy's cursor events and records every statement the
# database runs inside the `with` block. Below, we load the users, then touch each user's `posts`.
# Watch what that costs. (Counts are exact, so this cell's output is checked by the test suite.)

# %%
# NBVAL_CHECK_OUTPUT
from sqlalchemy import select

with db.session() as session, count_queries(db.engine) as queries:
    users = session.scalars(select(User)).all()
    total_posts = sum(len(user.posts) for user in users)

print(f"users: {len(users)}, posts: {total_posts}, queries: {queries.count}")

# %% [markdown]
# One query for the users, then one more *per user* for their posts. That is the N+1 pattern;
# lesson 02 is all about it. Showing the log itself gives the SQL and the time each statement took:

# %%
queries

# %% [markdown]
# ## An app, in-process
#
# The lessons run FastAPI apps *inside the notebook*: `app_client(app)` starts the app's lifespan
# (startup and shutdown really run) and gives an `httpx.AsyncClient` wired straight to it, no
# network, no port. Jupyter lets us `await` at the top level of a cell.
#
# The tour app, `make_tour_app(db)`, lists users and reads one user.

# %%
from course_lib.lessons.l00_welcome import make_tour_app

app = make_tour_app(db)
async with app_client(app) as client:
    one = await client.get("/users/1")
    missing = await client.get("/users/999")
print(one.status_code, one.json())
print(missing.status_code, missing.json())


# %% [markdown]
# ## Timing a request
#
# `measure(fn, n)` calls `fn` a few times to warm up, then `n` times with a stopwatch, and reports
# the median, 95th and 99th percentiles. Medians and percentiles, not a single run: one request's time
# is mostly noise.

# %%
async with app_client(app) as client:
    one_user = await measure(lambda: client.get("/users/1"), n=100, label="GET /users/1")
one_user


# %% [markdown]
# ## Comparing two things fairly
#
# `compare` times several variants *interleaved* (a, b, a, b, …) in one run, so that whatever else
# your machine is doing slows them alike, and reports the ratio of the first to the last. Here: one
# request that lists all 50 users, against one request for a single user.

# %%
async with app_client(app) as client:
    listing = await compare(
        {
            "GET /users (50 users)": lambda: client.get("/users"),
            "GET /users/1": lambda: client.get("/users/1"),
        },
        n=60,
    )
listing

# %% [markdown]
# A picture of the same samples: each box spans the middle half of the requests, the line in it is
# the median.

# %%
plot_timings(listing, title="Listing 50 users vs reading one, in-process")

# %% [markdown]
# Prose built from the measurement itself, so it can never disagree with it:

# %%
fast, slow = listing["GET /users/1"], listing["GET /users (50 users)"]
say(
    f"On this machine, listing 50 users took **{slow.median_ms:.2f} ms** (median) and reading one "
    f"user **{fast.median_ms:.2f} ms**: the list is **{listing.ratio:.1f}×** slower. Bigger answers "
    "cost more: lesson 04 (pagination) is about never returning an unbounded list."
)


# %% [markdown]
# ## A live panel
#
# Where a learner would rather look than read, lessons give you a slider. This one re-runs the N+1
# loop from above with a *simulated network round trip* added to every statement, as if the database
# were on another machine. Move it and watch the time grow with the number of queries.

# %%
def n_plus_one_time(latency_ms: float) -> str:
    with db.session() as session, count_queries(db.engine, latency_ms=latency_ms) as q:
        for user in session.scalars(select(User)):
            len(user.posts)
    return q.summary()


live_panel(n_plus_one_time, description="round trip (ms)", min=0, max=5, step=1, value=1)

# %% [markdown]
# ## How exercises work
#
# Each lesson has an exercise notebook in `exercises/` with the same name (this one:
# `exercises/00_welcome.ipynb`). You write your answer in the cell marked `# YOUR CODE HERE`, then
# run the cell below it, which calls `check("<exercise id>", your_answer)`.
#
# - The grader **runs** your answer: fresh databases of several sizes, real requests, query counts,
#   status codes, timing *ratios*. It never reads your source code, so any correct solution passes and
#   a hard-coded one fails.
# - A wrong answer gets what was measured and a **hint**; a second failure gives a stronger hint.
#   `hint("00.first-endpoint")` shows the next hint without grading.
# - Your results are remembered. From a terminal, in the course folder:
#
#   ```
#   .venv/bin/python -m course_lib progress        # where you are, what is next
#   .venv/bin/python -m course_lib grade           # run and grade every exercise notebook
#   .venv/bin/python -m course_lib reset 00_welcome  # restore an exercise notebook (yours is backed up)
#   ```
#
# Here is what a failing check looks like. This answer forgets the 404 for an unknown user
# (`grade` returns the result; `check`, used in exercise notebooks, raises it as an error):

# %%
from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session


def make_app_without_404(db):
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/users/{user_id}")
    def read_user(user_id: int, session: Session = Depends(get_db)):
        user = session.get(User, user_id)
        return {"id": user.id, "name": user.name, "post_count": len(user.posts)} if user else {}

    return app


grade("00.first-endpoint", make_app_without_404, record=False)  # a demonstration: not saved as your progress

# %% [markdown]
# Now open **`exercises/00_welcome.ipynb`** and make it pass.
#
# ## Key points
# - Every claim in this course comes from a measurement in the cell above it, on your machine.
# - `count_queries` counts and lists the SQL an engine runs; counts are exact and repeatable.
# - `measure` gives medians and percentiles; `compare` interleaves variants and gives a ratio.
# - Exercises are graded by running your code; hints teach, and progress is visible from a terminal.
