# %% [markdown]
# # 06 · The shape of a production app: structure, dependency injection, `/health`
#
# **Teaching:** 30 min · **Exercise:** 25 min
#
# **Questions**
# - How do I grow a single-file FastAPI app into a package without changing what it answers?
# - Where should the engine, the pool and the Redis client be created, and how do tests swap the database?
# - What should `/health` check, how fast must it answer, and what must it never say?
#
# **Objectives**
# - Read a layered package (`main.py` factory + lifespan, `config`, `database`, `models`, `schemas`,
#   `services`, thin `routers`, `dependencies`, `tests`) and prove it answers exactly like the tangled app.
# - Use a `yield` dependency for the DB session and override it with `app.dependency_overrides`.
# - Split liveness from readiness, bound every readiness check with a timeout, answer 503 when a dependency
#   is down, and measure how long a hung database takes to detect.
#
# The course ships the package as `course_lib/lessons/blog_app/`: the notebook imports it, and uvicorn runs it.
# It imports nothing from the course (its own models, settings, database setup and tests, on FastAPI,
# SQLAlchemy, pydantic-settings and redis), so the folder can be copied into a project of your own as it is.

# %%
import fastapi
import httpx

from course_lib import *
from course_lib.lessons.blog_app.config import Settings
from course_lib.lessons.blog_app.dependencies import get_db
from course_lib.lessons.blog_app.main import create_app
from course_lib.lessons.l06_structure import (
    answers, deadline_story, hanging_database, layout_table, make_eager_app, make_tangled_app, probe_cost_story,
    probe_paths, record_response_end, restart_policy, run_package_tests, same_answers, show_server_log, source_listing, time_health,
    unreachable_url,
)
from course_lib.servers import free_port

show_server_log()  # the app's log lines show up below the cells as `server log: …`

# %% [markdown]
# ## Where we start: one tangled function
#
# Three endpoints, everything inline: the engine is created on the spot (in a single `main.py` it would be at
# import), every handler opens its own `Session` and writes its own SQL, and there is no `/health`. It works,
# but a test cannot hand it another database, and nothing tells a load balancer whether it can serve.

# %%
source_listing(make_tangled_app)

# %% [markdown]
# ## Where we go: a package, one job per file
#
# The table below is read from disk: each file of the package with its docstring's first sentence. Follow a request:
# `main.py` builds the app and its lifespan → `routers/users.py` validates and picks a status code →
# `services/users.py` runs the query and knows nothing about HTTP → `dependencies.get_db` hands the session →
# `schemas/` shapes the JSON.
#
# ```mermaid
# flowchart LR
#     R[GET /users/7] --> M[main.py<br/>app + lifespan:<br/>engine, Redis on app.state]
#     M --> RT[routers/users.py<br/>validate, status code]
#     RT -- Depends --> D[dependencies.py<br/>get_db: one session<br/>per request]
#     RT --> S[services/users.py<br/>the query, no HTTP]
#     D --> S
#     S --> DB[(database)]
#     S --> SC[schemas/<br/>the JSON's shape]
#     SC --> OUT[200 JSON]
# ```

# %%
layout_table()

# %% [markdown]
# ## Same answers, exactly
#
# A refactor must not change behaviour. We send the same dozen requests (pages, limits out of range, a
# known, a last and an unknown user, a non-numeric id, posts) to both apps on one fresh database and compare
# status codes and bodies.

# %%
# NBVAL_CHECK_OUTPUT
db = make_demo_db(users=30, posts_per_user=3)
paths = probe_paths(30)
before = await answers(make_tangled_app(db.url), paths)
after = await answers(create_app(Settings(database_url=db.url)), paths)
for probe in after:
    print(probe)
print(f"differences from the tangled app: {len(same_answers(before, after))} of {len(paths)} requests")

# %% [markdown]
# ## Resources belong to the lifespan, not to the import
#
# `main.py` ends with `app = create_app()` so that uvicorn can import it, yet importing it connects to
# nothing and reads no setting: the lifespan makes the engine (and its pool) and the Redis client at startup,
# and disposes of them at shutdown. Watch `app.state` before, during and after:

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.lessons.blog_app import main

print("after import, engine on app.state:", "engine" in main.app.state._state)
app = create_app(Settings(database_url=db.url))
async with app_client(app) as client:
    await client.get("/users/1")
    engine = app.state.engine
    print("while serving, engine on app.state:", "engine" in app.state._state)
    print("connections held in the pool while serving:", engine.pool.checkedin())
print("connections left in the pool after shutdown:", engine.pool.checkedin())

# %% [markdown]
# Because nothing connects at startup, the process starts even when its database is down, and its
# readiness probe can say so (next sections). An app that runs `create_all()` or a warm-up query in its
# lifespan cannot start at all while the database is down. `make_eager_app` is this package plus one
# `SELECT 1` in the lifespan; both start against a database that cannot be reached:

# %%
# NBVAL_CHECK_OUTPUT
starters = {"warm-up query in the lifespan": make_eager_app,
            "this package (nothing at startup)": lambda url: create_app(Settings(database_url=url))}
for name, factory in starters.items():
    try:
        async with app_client(factory(unreachable_url("notebook"))) as client:
            print(f"{name}: started · /health/live {(await client.get('/health/live')).status_code}")
    except Exception as error:
        print(f"{name}: never started ({type(error).__name__} at startup) · answered nothing")

# %% [markdown]
# The eager app never answers, not even its liveness probe. Under a real server, a process that fails at
# startup exits; a restart policy (systemd's `Restart=always`, Kubernetes' pods) starts it again. Both apps
# under uvicorn for six seconds, restarted whenever they exit, the database still down:

# %%
down = {"BLOG_DATABASE_URL": unreachable_url("policy")}
policy = [restart_policy("warm-up query in the lifespan", "course_lib.lessons.l06_structure:eager_served", down,
                         factory=True),
          restart_policy("this package", "course_lib.lessons.blog_app.main:app", down)]
for run in policy:
    print(f"{run.label}: {len(run.exits)} exit(s) (codes {sorted(set(run.exits)) or '—'}) in {run.seconds:.1f} s; "
          f"/health/live {run.live or '—'}, /health {run.ready or '—'}")

# %%
eager_run, package_run = policy
say(f"The eager app exited **{len(eager_run.exits)}** times in {eager_run.seconds:.0f} s and never answered a "
    "probe: started, failed, started again, until the database is back (Kubernetes shows it as "
    f"`CrashLoopBackOff`, waiting longer between tries). The package exited **{len(package_run.exits)}** times: "
    f"alive ({package_run.live}) and *not ready* ({package_run.ready}), so traffic goes elsewhere and it serves "
    "again the moment the database returns.")

# %% [markdown]
#
# ## The session is a `yield` dependency, and tests override it
#
# `get_db` opens one session per request from the factory on `app.state` and closes it after the response
# (the code after `yield`
# runs once the response is sent: shown below). Every route takes its session from it, so a
# test can swap it with `app.dependency_overrides[get_db] = …`. Below, the app is configured for a database
# that **does not exist**, and a test database replaces it; we count sessions opened and closed.

# %%
# NBVAL_CHECK_OUTPUT
test_db = make_demo_db(users=5, posts_per_user=2, seed=7)
opened, closed = [], []


def counting_get_db():
    """The override: a session on the test database, counted."""
    with test_db.session() as session:
        opened.append(1)
        yield session
    closed.append(1)


app = create_app(Settings(database_url=unreachable_url("notebook")))
app.dependency_overrides[get_db] = counting_get_db
async with app_client(app) as client:
    for user_id in (1, 2, 3, 4, 5):
        response = await client.get(f"/users/{user_id}")
    print("GET /users/5 →", response.status_code, response.json())
print(f"sessions opened: {len(opened)}, closed: {len(closed)}")

# %% [markdown]
# When does the code after `yield` run? The same override, recording its two halves, and the app wrapped so
# that the moment its response's last byte goes to the server is recorded too:

# %%
# NBVAL_CHECK_OUTPUT
events = []


def recording_get_db():
    """The override again, noting when each half of the dependency runs."""
    with test_db.session() as session:
        events.append("session opened (code before yield)")
        yield session
    events.append("session closed (code after yield)")


app = create_app(Settings(database_url=unreachable_url("notebook")))
app.dependency_overrides[get_db] = recording_get_db
async with app_client(record_response_end(app, events)) as client:
    await client.get("/users/1")
print(*events, sep="\n")
version = tuple(int(part) for part in fastapi.__version__.split(".")[:2])
print("FastAPI 0.118 or later installed:", version >= (0, 118))

# %% [markdown]
# The session closes after the response has been sent, so a `StreamingResponse` can still read from it. This
# is FastAPI's behaviour from 0.118 on; from 0.106 to 0.117 the code after `yield` ran *before* the response
# was sent (see FastAPI's release notes for 0.118.0).

# %% [markdown]
# The package's own `tests/` override `get_db` the same way, with a pytest fixture (`tests/conftest.py`). Run them:

# %%
# NBVAL_CHECK_OUTPUT
summary, exit_code = run_package_tests()
print("package tests:", summary, "· exit code", exit_code)

# %% [markdown]
# ## `/health` done right: liveness vs readiness
#
# Two questions, two endpoints:
#
# - **`/health/live`** — *is the process alive?* It touches nothing. If it fails, restart the process.
#   If it checked the database, a database outage would get every healthy worker restarted, for nothing.
# - **`/health`** (readiness) — *can it serve now?* It pings the database (`SELECT 1`) and Redis (`PING`)
#   **concurrently, each with a short timeout**, and answers **503** if either fails, so the load balancer
#   sends traffic elsewhere. The body says which check failed, never why: error texts carry hosts, paths and
#   user names. The reason goes to the server log.
#
# Three situations: all up; the database unreachable; Redis unreachable (a closed port, with a password in
# its URL, to check that it is not echoed).

# %%
# NBVAL_CHECK_OUTPUT
redis_down = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
situations = {
    "all up": Settings(database_url=db.url),
    "database unreachable": Settings(database_url=unreachable_url("notebook")),
    "redis unreachable": Settings(database_url=db.url, redis_url=redis_down),
}
for name, settings in situations.items():
    print(f"{name}:")
    async with app_client(create_app(settings)) as client:
        live, ready = await client.get("/health/live"), await client.get("/health")
    leaked = any(s in ready.text for s in ("hunter2", "nonexistent", "Error"))
    print(f"    live {live.status_code} · ready {ready.status_code} · leaks: {leaked}")
    print(f"    body: {ready.text}")

# %% [markdown]
# ## How long to notice a hung database?
#
# An unreachable database fails fast. A *hung* one (a lock, a full pool, a network black hole) is worse: the
# check waits as long as the database does. `hanging_database(db, 1.5)` makes every statement on our file
# wait 1.5 s. We time one `/health` answer for several `health_timeout_s` settings, and without any.

# %%
timeouts = [0.1, 0.25, 0.5, 1.0]
detect = {}
with hanging_database(db, 1.5):
    for timeout in [*timeouts, None]:
        detect[timeout] = await time_health(create_app(Settings(database_url=db.url, health_timeout_s=timeout)))
for timeout, (status, seconds) in detect.items():
    print(f"timeout {str(timeout):>4} s → {status} after {seconds:.2f} s")
plot_curve(timeouts, {"answer time (s)": [detect[t][1] for t in timeouts]},
           reference={"no timeout (s)": [detect[None][1]] * len(timeouts)},
           xlabel="health_timeout_s", ylabel="seconds until /health answers",
           title="Readiness on a database that stalls 1.5 s per query")

# %%
deadline_story(detect)


# %% [markdown]
# ## What a readiness probe costs
#
# Orchestrators call probes every few seconds on every instance. Ours does two round trips; liveness does
# none. Measured interleaved, in-process:

# %%
async with app_client(create_app(Settings(database_url=db.url))) as client:
    probes = await compare({"readiness /health": lambda: client.get("/health"),
                            "liveness /health/live": lambda: client.get("/health/live")}, n=150, warmup=10)
probes

# %%
probe_cost_story(probes)

# %% [markdown]
# ## The same package under uvicorn
#
# `uvicorn course_lib.lessons.blog_app.main:app` with `BLOG_DATABASE_URL` in its environment. We wait on
# `/health/live` (the process is up), then ask readiness and a user. A second server is started with an
# unreachable database: it starts, is alive, and is *not ready*. (Without `BLOG_DATABASE_URL` at all it would
# refuse to start with a validation error: lesson 07 is about exactly that.)

# %%
# NBVAL_CHECK_OUTPUT
# (announce=False: no docs link here, its port changes every run and this output is checked)
app_path = "course_lib.lessons.blog_app.main:app"
with serve(app_path, env={"BLOG_DATABASE_URL": db.url}, ready_path="/health/live",
           announce=False) as server:
    served = httpx.get(server.url + "/users/7").json()
    in_process = (await answers(create_app(Settings(database_url=db.url)), ["/users/7"]))[0].body
    print("uvicorn, database up:  /health", httpx.get(server.url + "/health").status_code,
          "· /users/7 same as in-process:", served == in_process)
with serve(app_path, env={"BLOG_DATABASE_URL": unreachable_url("uvicorn")}, ready_path="/health/live",
           announce=False) as server:
    print("uvicorn, database down: /health/live", httpx.get(server.url + "/health/live").status_code,
          "· /health", httpx.get(server.url + "/health").status_code)

# %% [markdown]
# ## Which layout when
#
# | layout | looks like | fits |
# | --- | --- | --- |
# | single file | `main.py` | a prototype, a demo, a one-endpoint service |
# | **by layer** (this package, and the source article) | `routers/ services/ schemas/ models/` | one team, one domain, up to a few dozen endpoints; easy to find "all the routes" |
# | FastAPI's ["Bigger Applications"](https://fastapi.tiangolo.com/tutorial/bigger-applications/) | `app/main.py`, `app/dependencies.py`, `app/routers/items.py`, `app/internal/admin.py` | the same idea with fewer layers: routers split by resource, shared dependencies in one module |
# | **by domain** | `users/{router,service,schemas,models}.py`, `orders/…` | many domains or teams; a change stays in one folder; a domain can later be split out |
#
# Whatever the layout, the seams are what made the cells above possible: an app *factory*, resources made
# in the *lifespan*, the session behind a *dependency*, services that take a session and know no HTTP.
#
# **Where the article differs.** Its tree is the by-layer one above and still fits. Its code uses the legacy
# `db.query(...)` API (this course uses SQLAlchemy 2.0 `select()`), `@app.on_event` is replaced by
# `lifespan`, and its checklist's single "health check endpoint at /health" is, in current practice, two
# probes: liveness and a readiness check with timeouts, as measured above.
#
# Now open **`exercises/06_structure.ipynb`**: untangle `make_tangled_app` yourself.
#
# ## Key points
# - A refactor is proven by behaviour: the same requests, the same status codes and bodies.
# - Create engines, pools and clients in the lifespan; importing the app must connect to nothing.
# - Hand the DB session out through a `yield` dependency; tests swap it with `app.dependency_overrides`.
# - Liveness touches nothing; readiness checks each dependency concurrently with a short timeout, answers 503
#   when one fails, and never puts error details in the body.
# - A probe without a timeout on a hung database answers as slowly as the database, and says "healthy".
