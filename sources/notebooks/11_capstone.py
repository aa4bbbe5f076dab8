# %% [markdown]
# # 11 · Capstone: audit a slow app, find what is wrong, prove the fix under load
#
# **Teaching:** 30 min · **Exercise:** 60 min
#
# **Questions**
# - Given an app I did not write, how do I find what makes it slow, with evidence rather than hunches?
# - Where does a request's time go: the database, the event loop, an outbound call, the payload?
# - How do I prove a change is faster *and* changes nothing a client can see?
#
# **Objectives**
# - Run the course's auditor on a realistic, slow FastAPI app and read its evidence.
# - Time each endpoint of a load mix in-process, with its statements and their share of the time.
# - Measure a baseline under a real server and real load, and check a variant's answers against the original's.
#
# This lesson names no fixes: finding them is the exercise. Everything below is measured in the cell above
# the prose that quotes it, on your machine.

# %%
import time

from course_lib import *
from course_lib.lessons.l11_capstone import (
    GOAL, LATENCY_MS, audit_bookshop, compare_behaviour, copy_db, corpus, load_mix, make_app,
    make_bookshop_db, race,
)

# %% [markdown]
# ## The bookshop
#
# A small but realistic API: authors, books, reviews; a page of books, one book with its reviews, a lookup
# by ISBN, catalogue statistics, a price converted with an outbound call to an exchange-rate API (30 ms away),
# and a `/health` endpoint. Its code is `course_lib/lessons/bookshop/app.py`: `make_app(url)`, written the
# way many first versions are. The database is a fresh file:

# %%
db = make_bookshop_db()
original = make_app(copy_db(db))
db


# %% [markdown]
# On PostgreSQL (when `DATABASE_URL` is set) the same cells run against a real server: every app gets its own database made with `CREATE DATABASE … TEMPLATE`, CI runs these cells there too and checks the same statement counts and audit verdicts, and the index check reads PostgreSQL's `EXPLAIN (FORMAT JSON)` (a `Seq Scan` on a large table is the ✗) instead of SQLite's `EXPLAIN QUERY PLAN` (`SCAN`). One real difference showed up while porting: `avg()` is a REAL in SQLite but a NUMERIC in PostgreSQL (a `Decimal` in Python, a *string* in JSON), so the bookshop converts it with `float()`. The load test keeps its simulated round trip per statement on both databases (a database on another machine), so the two throughput figures are comparable.

# %% [markdown]
# A first look, in-process, counting SQL statements (exact, so the test suite checks this output):

# %%
# NBVAL_CHECK_OUTPUT
async with app_client(original) as client:
    for path in ["/books", "/books/1", "/stats", "/books/7/price?currency=EUR", "/health"]:
        with count_queries(original.state.engine) as queries:
            response = await client.get(path)
        print(f"GET {path:30} → {response.status_code}, {queries.count:>2} queries, {len(response.content):>5} bytes")


# %% [markdown]
# ## The audit
#
# `audit(app)` runs the article's performance checklist *against the running app*: it discovers the GET
# routes, probes them (a huge `limit`, two page sizes, repeats, a database made slow, a database taken
# down), watches the SQL and its query plans, the event loop, outbound httpx calls and the log, and gives
# ✓ / ✗ / ? per item with the evidence and the lesson to revisit. `audit_bookshop` is `audit` told which
# secret to look for (the exchange-rate API key).

# %%
report = await audit_bookshop(original)
report

# %% [markdown]
# The verdicts that do not depend on timing (the caching row is a hint and can flip on a busy machine):

# %%
# NBVAL_CHECK_OUTPUT
print({key: status for key, status in report.statuses().items() if key != "cache"})

# %%
say(f"**{len(report.failing())} of {len(report.checks)}** items are not ✓. Read the evidence column: "
    f"every line is something the auditor measured, e.g. *{report['n_plus_one'].evidence}*.")

# %% [markdown]
# ## Beyond the checklist: where does the time go?
#
# The audit sees what its probes can reach. A load test sends a *mix* of requests, and the slowest of them
# sets the pace. Time each endpoint of the mix in-process, one after the other, with the same simulated round
# trip per SQL statement as the load test below: the time per request, how many statements it runs, and how
# much of its time the database takes (`count_queries(engine, latency_ms=…)`).

# %%
timings = {}
async with app_client(original) as client:
    for path in load_mix(db):
        runs = []
        for _ in range(3):
            with count_queries(original.state.engine, latency_ms=LATENCY_MS) as queries:
                start = time.perf_counter()
                response = await client.get(path)
                runs.append(((time.perf_counter() - start) * 1000, queries.count, queries.db_time_ms))
        timings[path] = sorted(runs)[1]  # the median of three
        ms, n, db_ms = timings[path]
        print(f"GET {path:34} {ms:7.1f} ms, {n:>2} statements, {db_ms:6.1f} ms of it in the database")


# %%
slowest = max(timings, key=lambda p: timings[p][0])
ms, n, db_ms = timings[slowest]
say(f"The slowest request of the mix is **GET {slowest}**: **{ms:.0f} ms**, {n} statements, "
    f"{db_ms / ms:.0%} of its time in the database. Ask of each row: is that number of statements needed, "
    "does each one read more rows than it returns, and what else is the rest of the time doing?")

# %% [markdown]
# The rest of the time: profile that one request, as the diagnose lesson (10) taught (pyinstrument in async mode, the same
# simulated round trip), and read the functions that cost the most in themselves:

# %%
from course_lib.lessons.l10_diagnose import profile_request, top_frames

async with app_client(original) as client:
    with count_queries(original.state.engine, latency_ms=LATENCY_MS):
        profile = await profile_request(client, slowest)
top_frames(profile, n=8, title=f"GET {slowest}: where its time goes (own time per function)")

# %% [markdown]
# ## The baseline under load
#
# `race` serves apps under **uvicorn (1 worker)**, each with its own copy of the database (so one app's
# indexes never help another), with a **simulated round trip added to every SQL statement** (a database
# across a network, as in production; on a local file SQLite hides the cost of many small queries). It loads
# them **interleaved, in one run**, with the same mixed load: 2 clients each on a page of books, one book, an
# ISBN lookup, `/stats` and a price, a new connection per request. Here it serves the original alone; the
# grader races yours against it the same way, `race(db, {"original": {}, "yours": {"BOOKSHOP_APP_FILE": path}})`.

# %%
print(f"{LATENCY_MS} ms simulated round trip per SQL statement")
results = await race(db, {"original": {}}, seconds=1.0, rounds=1)
baseline = results["original"]
print(baseline)

# %%
say(f"Under this load the original served **{baseline.throughput:,.0f} req/s**. The exercise asks for "
    f"≥ {GOAL:g}× that, about **{GOAL * baseline.throughput:,.0f} req/s** on this machine, with the same answers.")

# %% [markdown]
# ## Same answers?
#
# A change that alters what clients see is not a performance fix. `compare_behaviour` sends a corpus of
# requests (pages, edges, 404s, 422s, every endpoint) to two apps and lists every difference in status code
# or body (422 bodies name the violated constraint, so only their status is compared). Two copies of the
# original agree; a copy whose data differs by one book's reviews does not, and the lines say where:

# %%
# NBVAL_CHECK_OUTPUT
print(f"{len(corpus(db))} requests compared")
same = await compare_behaviour(original, make_app(copy_db(db)), corpus(db))
print("original vs a copy of itself:", len(same), "differences")
changed_url = copy_db(db)
changed = make_app(changed_url)
with changed.state.engine.begin() as conn:
    conn.exec_driver_sql("DELETE FROM reviews WHERE book_id = 1")
differences = await compare_behaviour(original, changed, corpus(db))
print("with book 1's reviews deleted:", len(differences), "differences")
for line in differences:
    print("  ", line[:100])

# %% [markdown]
# ## Your turn
#
# Open **`exercises/11_capstone.ipynb`**: write your fixed bookshop as a file. The check refuses the course's
# own app, compares your answers with the original's on the corpus, audits, asks for a large page compressed,
# checks that cached answers expire, and races yours against the original (≥ 10×). `hint("11.capstone")`
# gives a nudge when you are stuck; levels 2 and 3 say more. From a terminal you can audit any app:
# `python -m course_lib audit yourpackage.main:app`.
#
# ## Key points
# - Audit first: measured evidence (query counts, plans, loop stalls, sizes, status codes) says what is wrong.
# - The checklist is not the whole story: time each request of the real mix; the slowest sets the pace.
# - Prove every fix twice: the same answers on a corpus of requests, and a ratio under the same real load.
