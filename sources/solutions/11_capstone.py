# %% [markdown]
# # Exercise 11 · Capstone: fix the bookshop
#
# Work through `notebooks/11_capstone.ipynb` first. You get the original bookshop
# (`course_lib/lessons/bookshop/app.py`, `make_app(database_url)`), the auditor and the tools to measure it.
# What is wrong with it is for you to find: audit it, time and profile its endpoints, and fix what the evidence
# shows. Your answer is a **file** that defines `make_app(database_url) -> FastAPI` and is
#
# 1. **your own app**: written in your file (copy the original's code and change it); an app built from the
#    course's bookshop (re-exported, wrapped, mounted) is refused;
# 2. **the same API**: on a corpus of 21 requests it answers exactly like the original (status codes and
#    JSON bodies; for 422 only the status);
# 3. **audit all ✓**: `audit_bookshop(app)` passes every item (keep `app.state.engine = engine` and
#    `app.state.settings = settings` so the auditor can count queries, read plans, take the database down and
#    know the secret). The caching row is a hint timed in milliseconds, so a busy machine can show `?` there:
#    the grader leaves it to the load test. And a large page (`/books?limit=100`, over the audit's 4 KB bar)
#    travels compressed to a client that sends `Accept-Encoding: gzip`;
# 4. **fresh enough**: whatever you cache stays cached at most `BookshopSettings().cache_ttl_s` seconds (60 by
#    default; the grader sets `BOOKSHOP_CACHE_TTL_S=1`, changes the data behind your app and waits);
# 5. **at least 10× the original's throughput**, measured by the grader in one run: both apps under uvicorn
#    (1 worker, own copy of the database, 1 ms simulated round trip per SQL statement) and the same mixed load
#    (list, detail, ISBN lookup, stats, price), interleaved.
#
# If your app needs the database changed (an index, say), do it the way lesson 06 says, not in the lifespan:
# define `migrate(database_url)` in your file. The grader (and the server it starts) runs it once before your
# app is built, as a deploy runs its migrations before the servers start.
#
# It is a file, not a function in the notebook, because a real server must import it.

# %%
from course_lib import *
from course_lib.lessons.l11_capstone import audit_bookshop, make_bookshop_db, workspace

WORK = workspace()
APP_FILE = WORK / "bookshop_fixed.py"
print("your app file:", APP_FILE)

# %% [markdown]
# ## 11.capstone
#
# The cell below writes your app to `APP_FILE` (`%%writefile`). It starts as a one-line re-export of the
# original, which the check refuses (it is the course's app, not yours): copy the original's code from
# `course_lib/lessons/bookshop/app.py` into the cell (or write your own) and fix it, one finding at a time.
# Rerun this cell after each edit, then the audit cell, then the check. `hint("11.capstone")` gives a nudge;
# `hint("11.capstone", level=2)` and `level=3` say more.

# %%
# %%writefile {APP_FILE}
### BEGIN SOLUTION
#> from course_lib.lessons.bookshop.app import make_app  # the original: replace with your fixed app
...  # --8<-- "answers/l11_capstone.py:answer"
### END SOLUTION


# %% [markdown]
# Audit your app in-process (fast, no server): every row should be ✓.

# %%
from course_lib.lessons.l11_capstone import load_factory

db = make_bookshop_db()
yours = load_factory(str(APP_FILE))(db.url)
await audit_bookshop(yours)

# %% [markdown]
# The check refuses an app built from the course's bookshop, compares your answers with the original's,
# audits, asks for a large page compressed, checks that cached answers expire, then load-tests both under
# uvicorn (about 20–40 s).

# %%
check("11.capstone", APP_FILE)

# %% [markdown]
# Done? `python -m course_lib progress` shows the course complete. Take the auditor to your own app:
# `await audit(your_app)` in a notebook, or `python -m course_lib audit yourpackage.main:app` in a terminal.
#
# ## After the capstone: where the article differs from current practice
#
# Read this once your check passes: it names fixes.
#
# - Its checklist says "async routes for I/O-bound operations". With a *synchronous* driver (plain
#   SQLAlchemy `Session`) an `async def` route blocks the event loop on every query: the audit's
#   *blocking* row. Use `def` routes (FastAPI runs them in a threadpool) or an async driver.
# - Its logging example is `@app.middleware("http")`, a `BaseHTTPMiddleware`: it costs per request
#   (lesson 08); a pure ASGI middleware does the same job.
# - `db.query(...)` is SQLAlchemy's legacy API; the bookshop uses 2.0 `select()`.
# - `--worker-class uvicorn.workers.UvicornWorker` is deprecated: use the `uvicorn-worker` package
#   (`uvicorn_worker.UvicornWorker`), and measure the worker count (lesson 01) instead of `2 × cores + 1`.
# - `fastapi-cache2` with its `[redis]` extra pins an old redis client; an in-process cache with a TTL is
#   enough for one worker (lesson 03 covers Redis across workers).
