# %% [markdown]
# # 01 · Serving: workers, async vs blocking, the thread pool, timeouts and pools
#
# **Teaching:** 45 min · **Exercises:** 25 min
#
# **Questions**
# - How many worker processes should serve a FastAPI app on *this* machine, and what does each one cost?
# - Why can one blocking call inside `async def` make a whole server crawl?
# - What are FastAPI's thread pool, an HTTP client's connection pool and a database pool, and when do they run out?
#
# **Objectives**
# - Start an app under `uvicorn --workers N` and gunicorn + `uvicorn_worker.UvicornWorker`; measure throughput,
#   p50/p99 and memory per worker against an "ideal" line.
# - See one worker serve many concurrent I/O-bound requests, and the same worker serialise them with one blocking call.
# - Find the 40-token thread pool's step in latency, and resize it in `lifespan`.
# - Give outbound calls a timeout and one shared client; see a database pool run dry.
# - Measure `uvicorn[standard]` (uvloop + httptools) against plain uvicorn; size workers on a mixed load and a
#   database connection budget; run wrk and read its output.
#
# Every server below runs on `127.0.0.1` on a free port and is stopped when its `with` block ends, even on an
# error or an interrupt. The load generator runs in this notebook and competes with the servers for the same
# cores: each load test reports how much of a core it used.

# %%
from course_lib import *
from course_lib.lessons.l01_workers import *

# %% [markdown]
# ## How many cores may *this* process use?
#
# `os.cpu_count()` counts the host's cores. A container, a Binder session or `taskset` may give you fewer:
# the CPU affinity mask (`os.sched_getaffinity`) and the cgroup CPU quota (`/sys/fs/cgroup/cpu.max`) decide.
# `usable_cores()` takes the smaller.

# %%
import os
from pathlib import Path

quota = Path("/sys/fs/cgroup/cpu.max")
print("host cores (os.cpu_count):        ", os.cpu_count())
print("affinity (os.sched_getaffinity):  ", len(os.sched_getaffinity(0)))
print("cgroup quota (cpu.max):           ", quota.read_text().strip() if quota.exists() else "none set")
cores = usable_cores()
print("usable_cores():                   ", cores)

# %% [markdown]
# ## Starting workers: the current commands
#
# What runs where, in the picture this lesson measures piece by piece: a supervisor process, one process per
# worker (each on its own core at best), one event loop per worker, and beside each loop a thread pool (for
# `def` routes) and a database pool of its own.
#
# ```mermaid
# flowchart LR
#     C[clients] --> S[supervisor<br/>uvicorn --workers / gunicorn]
#     subgraph W1[worker process 1]
#         L1[event loop<br/>async def routes] --> T1[thread pool, 40 tokens<br/>def routes]
#         L1 --> P1[(DB pool)]
#         T1 --> P1
#     end
#     subgraph W2[worker process 2]
#         L2[event loop] --> T2[thread pool]
#         L2 --> P2[(DB pool)]
#         T2 --> P2
#     end
#     S --> L1
#     S --> L2
#     P1 --> DB[(database<br/>max_connections)]
#     P2 --> DB
# ```
#
# | | command |
# |---|---|
# | FastAPI's CLI (needs `fastapi[standard]`) | `fastapi run main.py --workers 4` |
# | uvicorn's own supervisor (since 0.30) | `uvicorn main:app --workers 4` |
# | gunicorn managing uvicorn workers | `gunicorn main:app -k uvicorn_worker.UvicornWorker -w 4` |
#
# The source article uses `--worker-class uvicorn.workers.UvicornWorker`. That module still imports, but it is
# deprecated: the worker class moved to the `uvicorn-worker` package. Importing the old path in a fresh
# interpreter prints the warning:

# %%
print(deprecation_warning_of_uvicorn_workers())


# %% [markdown]
# `serve(...)` starts the same commands in a subprocess (its own process group, a free port, a readiness wait)
# and stops every process of the group on exit. Here is gunicorn with two uvicorn workers: the exact command
# line, and the processes it is made of (a master plus one process per worker). The course names its worker class
# `uvicorn_worker.UvicornH11Worker`: uvicorn-worker's `UvicornWorker` fixed to asyncio + h11, for the reason given
# in the `uvicorn[standard]` section below.

# %%
def short(command: list[str]) -> str:
    """A command line with the interpreter's path shortened."""
    return " ".join(Path(part).name if part.startswith("/") else part for part in command)


with serve_app("cpu_app", workers=2, server="gunicorn") as running:
    print(short(running.command))
    print(f"  → {len(running.processes())} processes: "
          + ", ".join(f"{mib:.0f} MiB" for mib in running.processes().values()))

# %% [markdown]
# ## A CPU-bound endpoint under 1, 2, 3 workers
#
# `GET /cpu` chains 20,000 sha256 rounds: pure CPU, a few milliseconds per request. A worker process can keep
# one core busy and no more (Python's GIL), so the ideal is *one worker's throughput × min(workers, cores)*.
# `sweep_workers` serves it with `uvicorn --workers 1`, `2` and `3` at once, then loads them in turn
# (1, 2, 3, 1, 2, 3) with 20 concurrent clients, a new connection per request so the kernel spreads them over
# the workers. Interleaving means whatever else this machine does hits every configuration alike; each keeps
# its median round of three, not its luckiest.

# %%
sweep = await sweep_workers((1, 2, 3), rounds=3, seconds=1.0)
print(short(sweep[-1].command))
for run in sweep:
    print(f"{run.workers} worker(s): {run.load!r}; {run.worker_pids_seen} distinct worker pids answered")

# %%
workers = [run.workers for run in sweep]
rps = [run.load.throughput for run in sweep]
ideal = [rps[0] * min(n, cores) for n in workers]
plot_curve(workers, {"measured": rps}, reference={f"ideal: 1 worker × min(workers, {cores} cores)": ideal},
           xlabel="uvicorn workers", ylabel="requests per second", title="CPU-bound endpoint, 20 concurrent clients")

# %%
plot_curve(workers, {"p50": [r.load.p50_ms for r in sweep], "p99": [r.load.p99_ms for r in sweep]},
           xlabel="uvicorn workers", ylabel="latency (ms)", title="Latency of the same runs")

# %%
best = max(sweep, key=lambda r: r.load.throughput)
generator = max(r.load.generator_cpu_share for r in sweep)
say(
    f"One worker served **{rps[0]:,.0f} req/s**; two workers **{rps[1]:,.0f} req/s** "
    f"(**{rps[1] / rps[0]:.2f}×**), three **{rps[2]:,.0f} req/s** ({rps[2] / rps[0]:.2f}×) on **{cores}** usable "
    f"core(s). The best here was {best.workers} worker(s)"
    + (". Past the cores, extra workers only take turns on the same cores" if 3 > cores else "")
    + f". The load generator used at most **{generator:.0%}** of a core"
    + (", so it took little from the servers." if generator < 0.25 else
       f", a real share of {cores} core(s): the servers had less than the whole machine.")
)

# %% [markdown]
# ### "2 × cores + 1"?
#
# The article's rule of thumb, `workers = 2 × cores + 1`, comes from gunicorn's design notes
# ([How many workers?](https://docs.gunicorn.org/en/stable/design.html#how-many-workers)): "based on the
# assumption that for a given core, one worker will be reading or writing from the socket while the other
# worker is processing a request", that is, for its *sync* workers, which sit idle while they wait on I/O.
# What the gunicorn installed here says of its own `--workers` setting:

# %%
import gunicorn
from gunicorn.config import Workers

print(f"gunicorn {gunicorn.__version__}, --workers:", " ".join(Workers.desc.split("\n\n")[1].split()))

# %% [markdown]
# A range to vary "for your particular application's work load", not a formula. An async (uvicorn) worker
# already overlaps its waits on one event loop (measured below), so for it the number to start from is
# **the usable cores**, then measure, as the sweep above did.
#
# ### What each worker costs
#
# Every worker is a full copy of the app: its own memory, its own thread pool (40 tokens by default, measured below), its own database
# pool. Memory of each process in the runs above (resident set; `uvicorn --workers` adds a supervisor and a
# small helper process to the workers):

# %%
for run in sweep:
    sizes = sorted(run.memory_mib.values())
    print(f"{run.workers} worker(s): {len(sizes)} processes, {run.total_mib:,.0f} MiB in total "
          f"({', '.join(f'{m:.0f}' for m in sizes)} MiB)")
import inspect

from sqlalchemy.pool import QueuePool  # SQLAlchemy's default pool for a networked database

pool_defaults = inspect.signature(QueuePool).parameters
pool_size, overflow = pool_defaults["pool_size"].default, pool_defaults["max_overflow"].default
per_worker = (sweep[-1].total_mib - sweep[1].total_mib) / (sweep[-1].workers - sweep[1].workers)
say(f"Each extra worker added about **{per_worker:.0f} MiB** here, for this tiny app. With `2 × {cores} + 1 = "
    f"{2 * cores + 1}` workers and SQLAlchemy's default pool of {pool_size} (+{overflow} overflow) each, the "
    f"database could see up to **{(2 * cores + 1) * (pool_size + overflow)}** connections from one machine.")

# %% [markdown]
# ### A cost load tests rarely show: kept-alive connections
#
# Browsers, reverse proxies and HTTP client libraries keep a connection open and send the next request on it.
# Many load tests open a new connection per request and never see what follows. The same trivial route,
# 60 requests one after another, on one kept-alive connection and then with a new connection each:

# %%
keep_alive = await keep_alive_latency({
    "uvicorn, 1 worker": ("uvicorn", 1),
    "uvicorn --workers 2": ("uvicorn", 2),
    "gunicorn + uvicorn-worker, 2": ("gunicorn", 2),
})
for run in keep_alive:
    print(f"{run.label:<30} kept-alive {run.keep_alive_ms:6.1f} ms   new connection each {run.new_connection_ms:6.1f} ms")
plot_bars({run.label: run.keep_alive_ms for run in keep_alive}, ylabel="ms (median)",
          title="Median latency on one kept-alive connection, a trivial route")

# %% [markdown]
# Why would a second worker make a kept-alive request slower? Nagle's algorithm holds back a small write
# until the peer acknowledges the previous one, and the peer delays its acknowledgement (about 40 ms on
# Linux), unless the server sets `TCP_NODELAY` on the connection. asyncio sets it only when the listening
# socket says it is TCP (`proto` 6). The socket each way of starting uvicorn listens on:

# %%
for way, proto in listener_protocols().items():
    print(f"{way}: proto {proto}")

# %%
single, multi, gunicorn_run = keep_alive
say(f"Here, on a kept-alive connection, `uvicorn --workers 2` answered in **{multi.keep_alive_ms:.0f} ms** against "
    f"**{single.keep_alive_ms:.1f} ms** for one worker and **{gunicorn_run.keep_alive_ms:.1f} ms** for gunicorn's "
    f"two: **{multi.keep_alive_ms / single.keep_alive_ms:.0f}×**, for nothing but how the listening socket was made "
    f"(reported upstream as [uvicorn #3149](https://github.com/Kludex/uvicorn/issues/3149)). Measure your own stack "
    "with a client that keeps connections alive, as your real clients do.")

# %% [markdown]
# ## `uvicorn[standard]`: uvloop and httptools
#
# `pip install "uvicorn[standard]"` (and `fastapi[standard]`) adds **uvloop**, an event loop built on libuv, and
# **httptools**, a C HTTP parser. uvicorn's defaults, `--loop auto --http auto`, then pick them *silently*. So that
# no figure in this course changes because a package happens to be installed, every server here is started with
# `--loop asyncio --http h11` (the pure-Python pair) unless a cell asks otherwise. Below both pairs, one worker each,
# the same app, 50 clients on kept-alive connections, a trivial route and a route that awaits 20 ms, interleaved
# round by round:

# %%
stacks = await compare_stacks()
for run in stacks:
    print(f"{run.route:<31} {run.stack:<40} {run.load.throughput:7,.0f} req/s   "
          f"p50 {run.load.p50_ms:6.1f} ms   p99 {run.load.p99_ms:6.1f} ms   errors {run.load.errors}")
print(short(stacks[-1].command))

# %%
plot_bars({f"{r.route.split(' (')[0]}\n{r.stack.split(' (')[0]}": r.load.throughput for r in stacks},
          ylabel="requests per second", title="One uvicorn worker, 50 kept-alive clients")

# %%
plain_stack, fast_stack = STACKS
trivial_route, waiting_route = STACK_ROUTES
by_stack = {(r.stack, r.route): r.load for r in stacks}
gain = {route: by_stack[(fast_stack, route)].throughput / by_stack[(plain_stack, route)].throughput
        for route in STACK_ROUTES}
say(f"On the trivial route uvloop + httptools served **{by_stack[(fast_stack, trivial_route)].throughput:,.0f} req/s** "
    f"against **{by_stack[(plain_stack, trivial_route)].throughput:,.0f}** for asyncio + h11 "
    f"(**{gain[trivial_route]:.2f}×**; p99 {by_stack[(fast_stack, trivial_route)].p99_ms:.0f} ms vs "
    f"{by_stack[(plain_stack, trivial_route)].p99_ms:.0f} ms); on the route awaiting 20 ms, "
    f"**{by_stack[(fast_stack, waiting_route)].throughput:,.0f}** vs **{by_stack[(plain_stack, waiting_route)].throughput:,.0f}"
    f" req/s** (**{gain[waiting_route]:.2f}×**). What they speed up is the server's own work per request (parsing, "
    "scheduling), not your handler's: a blocking call blocks uvloop just the same. Install `uvicorn[standard]` in "
    "the production image (uvloop does not build on Windows), and pass `--loop`/`--http` explicitly whenever you "
    "compare two setups.")

# %% [markdown]
# ## An I/O-bound endpoint: one worker, many requests at once
#
# `GET /io` awaits a 100 ms wait (think: a database or an API answering). While one request waits, the event
# loop serves the others. One worker, 50 concurrent clients:

# %%
with serve_app("io_app") as running:
    io_run = await load_test(f"{running.url}/io?ms=100", concurrency=50, requests=100_000, seconds=1.5)
io_run

# %%
say(f"One worker served **{io_run.throughput:,.0f} req/s** with a median of **{io_run.p50_ms:.0f} ms**: "
    f"about **{io_run.throughput * 0.1:.0f}** requests in flight at once, each waiting 100 ms. "
    "Waiting costs no CPU when it is awaited.")

# %% [markdown]
# ## The classic mistake: a blocking call inside `async def`
#
# Three versions of the same endpoint wait 50 ms. `time.sleep` stands for any blocking call: `requests.get`,
# a sync database driver, a slow file read.
#
# - `async def` + `time.sleep`: runs *on* the event loop and stops it: nothing else runs meanwhile.
# - `def` + `time.sleep`: FastAPI runs plain `def` endpoints in a thread pool; the loop stays free.
# - `async def` + `await asyncio.sleep`: waits without blocking anything.
#
# 40 requests at once, in-process (the app runs on this notebook's event loop, just as on a server's):

# %%
kinds = ["async def + time.sleep", "def + time.sleep", "async def + await asyncio.sleep"]
bursts = {}
for kind in kinds:
    async with app_client(make_sleepy_app(kind, ms=50)) as client:
        bursts[kind] = await burst(client, "/work", 40)
for kind, result in bursts.items():
    print(f"{kind:33} {result!r}")

# %%
plot_bars({k: b.wall_s * 1000 for k, b in bursts.items()}, ylabel="ms for 40 concurrent requests", logy=True,
          title="40 concurrent requests, each waiting 50 ms")

# %%
blocked, threaded, awaited = (bursts[k].wall_s for k in kinds)
say(f"Blocking inside `async def`: **{blocked * 1000:,.0f} ms** for 40 requests, about 40 × 50 ms: one after "
    f"another. The same code in `def`: **{threaded * 1000:,.0f} ms**; awaited: **{awaited * 1000:,.0f} ms** — "
    f"**{blocked / awaited:.0f}×** faster. Rule: in `async def`, only `await` slow things; otherwise write `def`.")

# %% [markdown]
# ## The thread pool has 40 tokens
#
# Plain `def` endpoints run in AnyIO's default thread pool, which has **40 tokens**: at most 40 of them run at
# once *per worker*. The 41st waits for a free thread. A blocking endpoint that sleeps 100 ms, hit by bursts
# of growing size:

# %%
sizes = [20, 40, 41, 60, 80, 81, 100]
async with app_client(make_threadpool_app(ms=100)) as client:
    default_pool = [await burst(client, "/work", n) for n in sizes]
    tokens_default = thread_tokens()
async with app_client(make_threadpool_app(ms=100, tokens=200)) as client:
    bigger_pool = [await burst(client, "/work", n) for n in sizes]
    tokens_resized = thread_tokens()
print("tokens:", tokens_default, "then, inside the resized app's lifespan,", tokens_resized,
      "and after it:", thread_tokens())
for n, a, b in zip(sizes, default_pool, bigger_pool):
    print(f"{n:4} concurrent: {a.wall_s * 1000:5.0f} ms with 40 tokens, {b.wall_s * 1000:5.0f} ms with 200")

# %%
plot_curve(sizes, {"40 tokens (default)": [b.wall_s * 1000 for b in default_pool],
                   "200 tokens (resized in lifespan)": [b.wall_s * 1000 for b in bigger_pool]},
           reference={"100 ms × ⌈n / 40⌉": [100 * -(-n // 40) for n in sizes]},
           xlabel="concurrent blocking requests", ylabel="ms until all answered", title="The thread pool's steps")

# %%
at40, at41 = default_pool[1].wall_s, default_pool[2].wall_s
say(f"40 concurrent requests took **{at40 * 1000:.0f} ms**, 41 took **{at41 * 1000:.0f} ms** "
    f"(**{at41 / at40:.1f}×**): the 41st waited for a thread. With 200 tokens, 100 requests took "
    f"**{bigger_pool[-1].wall_s * 1000:.0f} ms**.")

# %% [markdown]
# The resize lives in `lifespan`, so it happens once, in the worker, before the first request:
#
# ```python
# @asynccontextmanager
# async def lifespan(app: FastAPI):
#     anyio.to_thread.current_default_thread_limiter().total_tokens = 200
#     yield
# ```
#
# More threads are not free: each one holds memory, they share one GIL, and every blocking call in them may
# hold a database connection (see the pool below). Prefer `async` drivers for I/O; resize when you must.

# %% [markdown]
# ## Outbound calls: timeouts and one shared client
#
# An endpoint that calls another service is only as fast as that service, *unless* it sets a timeout. The
# upstream below runs under uvicorn on loopback; its `/hang` never answers in time.
# (httpx's default timeout is 5 s; `timeout=None` means wait forever.)

# %%
# NBVAL_CHECK_OUTPUT
import asyncio
import time

with serve_upstream() as upstream:
    for timeout in (None, 0.5):
        app = make_gateway_app(f"{upstream.url}/hang", timeout=timeout, shared_client=True)
        async with app_client(app) as client:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(2):
                    response = await client.get("/weather")
                outcome = f"{response.status_code} {response.json()}"
            except TimeoutError:
                outcome = "still waiting after 2 s (we gave up; a real client would too)"
            hang_s = time.perf_counter() - started
        print(f"timeout={timeout}: {outcome}")

# %%
say(f"With `httpx.Timeout(0.5)` the endpoint answered a clear **504** after **{hang_s:.2f} s**; without a timeout "
    "it would hold the request (and a worker's resources) as long as the upstream hangs.")

# %% [markdown]
# Creating an `httpx.AsyncClient` costs something (an SSL context, a connection pool), and a new client cannot
# reuse a connection. One client created in `lifespan` and shared by every request keeps its connections
# open. The upstream reports which TCP connection (client port) carried each request:

# %%
# NBVAL_CHECK_OUTPUT
with serve_upstream() as upstream:
    url = f"{upstream.url}/data"
    async with app_client(make_gateway_app(url, timeout=1.0, shared_client=False)) as per_request, \
            app_client(make_gateway_app(url, timeout=1.0, shared_client=True)) as shared:
        seen = {"new client per request": set(), "one shared client": set()}
        for _ in range(20):
            seen["new client per request"].add((await per_request.get("/weather")).json()["connection"])
            seen["one shared client"].add((await shared.get("/weather")).json()["connection"])
        pooling = await compare({"new client per request": lambda: per_request.get("/weather"),
                                 "one shared client": lambda: shared.get("/weather")}, n=40)
for name, ports in seen.items():
    print(f"{name}: 20 requests over {len(ports)} TCP connection(s)")

# %%
plot_timings(pooling, title="GET /weather relaying a loopback upstream")

# %%
say(f"A new client per request: **{pooling['new client per request'].median_ms:.2f} ms** per request (median); one "
    f"shared client: **{pooling['one shared client'].median_ms:.2f} ms** — **{pooling.ratio:.1f}×** faster, even on "
    "loopback. Across a real network a new TCP (and TLS) handshake per request costs far more.")

# %% [markdown]
# ## The database pool runs dry
#
# SQLAlchemy keeps a pool of connections per engine, so per worker: `pool_size` (5 by default) plus
# `max_overflow` (10). A request that holds a connection while it is slow keeps it from everyone else. Below,
# a pool of 2 (no overflow, 0.2 s `pool_timeout`), an endpoint holding its connection 1 s, and 6 requests at once:

# %%
# NBVAL_CHECK_OUTPUT
with make_demo_db(users=10, posts_per_user=0) as db:
    for pool_size in (2, 6):
        app = make_pool_app(db.url, pool_size=pool_size, pool_timeout=0.2, hold_s=1.0)
        async with app_client(app) as client:
            result = await burst(client, "/report", 6)
        print(f"pool_size={pool_size}: statuses {dict(sorted(result.statuses.items()))}")
        errors = {b["detail"] for b in result.bodies if "detail" in b}
        for detail in errors:
            print("  ", detail.split(" (Background")[0])

# %% [markdown]
# Size the pool for the concurrency one worker really has (its thread pool and its awaits), and multiply by
# the workers to know what the database must accept. Hold connections briefly.

# %% [markdown]
# ## Sizing workers on a mixed load and a connection budget
#
# The CPU-bound sweep at the top is a toy: real routes mostly wait, some compute, some use the database. The app
# below draws each request's kind at random (printed under the cell). Every worker makes its own SQLAlchemy pool,
# `pool_size=5` + `max_overflow=10` (the defaults), and counts the connections it opens. 40 concurrent clients, a new
# connection each, against 1, 2 and 3 workers, interleaved; beside each count, what its pools may ask of the
# database against its connection budget (with `DATABASE_URL` on PostgreSQL, read from the server):

# %%
with make_demo_db(users=100, posts_per_user=0) as db:
    budget, budget_source = connection_budget(db.url, stated=25)
    mixed = await sweep_mixed(db.url, (1, 2, 3), pool_size=5, max_overflow=10)
print(describe_mix())
print(f"connection budget: {budget} ({budget_source})")
for run in mixed:
    print(f"{run.workers} worker(s): {run.load.throughput:6,.0f} req/s  p50 {run.load.p50_ms:5.0f} ms  "
          f"p95 {run.p95_ms:5.0f} ms  errors {run.load.errors} | pools {run.workers} × ({run.pool_size} + "
          f"{run.max_overflow}) = {run.worst_case_connections:2} possible, peaks held {run.peak_held}, "
          f"{run.connections_opened} opened")

# %%
counts = [run.workers for run in mixed]
plot_curve(counts, {"p50": [r.load.p50_ms for r in mixed], "p95": [r.p95_ms for r in mixed]},
           xlabel="uvicorn workers", ylabel="latency (ms)",
           title=f"Mixed load: latency ({', '.join(f'{r.load.throughput:,.0f}' for r in mixed)} req/s)")

# %%
plot_curve(counts, {"workers × (pool_size + max_overflow)": [r.worst_case_connections for r in mixed],
                    "peaks held in this run, summed over workers": [r.peak_held for r in mixed]},
           reference={f"budget: {budget} connections": [budget] * len(mixed)},
           xlabel="uvicorn workers", ylabel="database connections", title="What the pools may ask of the database")

# %%
best = max(mixed, key=lambda r: r.load.throughput)
allowance = budget // best.workers
busiest = max(pool["peak_checked_out"] for pool in best.pools.values())
over = [r.workers for r in mixed if r.worst_case_connections > budget]
churn = [r for r in mixed if r.connections_opened > r.peak_held]
say(f"On this mix, **{best.workers}** worker(s) served the most: **{best.load.throughput:,.0f} req/s**, p95 "
    f"**{best.p95_ms:.0f} ms** (1 worker: {mixed[0].load.throughput:,.0f} req/s, p95 {mixed[0].p95_ms:.0f} ms; "
    f"{usable_cores()} usable cores). "
    + (f"With the default pools, {' and '.join(map(str, over))} worker(s) may ask for more than the **{budget}** "
       "connections of the budget: a burst that fills every pool would be refused connections by the database "
       "instead of waiting in its own pool. " if over else f"Every count here stays within the budget of {budget}. ")
    + (f"The pools opened more connections than they held at their peaks ({churn[0].connections_opened} vs "
       f"{churn[0].peak_held} for {churn[0].workers} worker(s)): an overflow connection is closed when given back "
       "and opened again at the next burst. " if churn else "")
    + f"Size from the budget down: {best.workers} worker(s) × (pool_size + max_overflow) ≤ {budget} leaves "
      f"**{allowance}** connections per worker; the busiest worker held at most **{busiest}** at once in this run"
    + (", within that." if busiest <= allowance else
       ", more than that: fewer workers, a larger budget, or a pooler (PgBouncer) in front of the database."))

# %% [markdown]
# ## The load-testing tools you will use next
#
# `load_test` is this course's own generator, in the notebook's process. Outside the course, use a dedicated tool
# against a server started the way production starts it:
#
# | tool | install | 50 connections for 30 s |
# |---|---|---|
# | wrk | `apt-get install wrk` | `wrk -t2 -c50 -d30s --latency http://127.0.0.1:8000/items/1` |
# | oha | a release binary, or `cargo install oha` | `oha -c 50 -z 30s http://127.0.0.1:8000/items/1` |
# | locust | `pip install locust` | `locust -f locustfile.py --headless -u 50 -r 10 -t 30s -H http://127.0.0.1:8000` |
#
# wrk and oha keep each connection alive, as browsers and proxies do; `-H "Connection: close"` (wrk) or
# `--disable-keepalive` (oha) opens a new one per request. locust scripts users in Python (several routes, think
# time between requests). Here is wrk, when it is installed, against one uvicorn worker, kept alive and then
# a new connection each, with `load_test` in the same modes beside it:

# %%
with serve_app("io_app", announce=False) as running:
    print(" ".join(wrk_command(f"{running.url}/io?ms=0", connections=50, seconds=1)))
    tools, wrk_outputs = await wrk_beside_load_test(running, "/io?ms=0", connections=50, seconds=1)
print(wrk_outputs[0].output if wrk_outputs else
      "wrk is not installed here (apt-get install wrk): the command above was not run, only load_test below.")

# %% [markdown]
# How to read it: **Requests/sec** is the throughput. **Latency Distribution** (printed with `--latency`) gives the
# percentiles: read p50 and p99, not the *Avg* of *Thread Stats*, which hides the slow tail. **Socket errors**
# (connect, read, write, timeout) and **Non-2xx or 3xx responses** appear only when there were some: a run with
# errors measured how fast the server *failed*. `-c` is connections, each sending its next request as soon as the
# answer comes back (a closed loop), so latency grows with `-c` once the server is saturated.

# %%
for run in tools:
    print(f"{run.tool:<10} {'kept alive' if run.keep_alive else 'new connection each':<20} "
          f"{run.requests_per_s:7,.0f} req/s   p50 {run.p50_ms:6.1f} ms   p99 {run.p99_ms:6.1f} ms   errors {run.errors}")

# %%
tool = {(run.tool, run.keep_alive): run for run in tools}
say((f"Against the same one-worker server, wrk measured **{tool[('wrk', True)].requests_per_s:,.0f} req/s** kept "
     f"alive and **{tool[('wrk', False)].requests_per_s:,.0f}** with a new connection each; `load_test` "
     f"**{tool[('load_test', True)].requests_per_s:,.0f}** and **{tool[('load_test', False)].requests_per_s:,.0f}**. "
     "Both generators share this machine's cores with the server: figures that agree say the server is the limit; "
     "a gap is the generators' own cost. "
     if ("wrk", True) in tool else "wrk was not run here (not installed). ")
    + f"`load_test` served {tool[('load_test', True)].requests_per_s / tool[('load_test', False)].requests_per_s:.1f}× "
      "as many requests per second on kept-alive connections as with a new connection each.")

# %% [markdown]
# ## Key points
# - Start from **usable cores** (affinity, cgroup quota), not the host's count and not "2 × cores + 1"
#   (that is for gunicorn's sync workers): measure throughput and p99 against one worker.
# - Use `uvicorn --workers N` / `fastapi run --workers N`, or gunicorn with `-k uvicorn_worker.UvicornWorker`;
#   `uvicorn.workers` is deprecated.
# - Each worker multiplies memory, the 40-token thread pool and the database pool.
# - Never block inside `async def`: write `def`, or `await` an async library (or `asyncio.to_thread`).
# - Every outbound call gets a timeout and one shared client created in `lifespan`.
# - `uvicorn[standard]` (uvloop + httptools) cuts the server's own cost per request; choose `--loop`/`--http`
#   explicitly when you compare setups.
# - Size workers on a mixed load you measured, and keep `workers × (pool_size + max_overflow)` within the
#   database's `max_connections`.
# - Load test with wrk, oha or locust, kept alive as real clients are; read percentiles and errors, not the mean.
#
# Now open **`exercises/01_workers.ipynb`**.

# %%
say(
    f"**Measured in this notebook** ({cores} usable cores): CPU-bound endpoint {rps[0]:,.0f} req/s on one worker, "
    f"{rps[1]:,.0f} on two ({rps[1] / rps[0]:.2f}×), load generator ≤ {generator:.0%} of a core; one async worker "
    f"{io_run.throughput:,.0f} req/s on 100 ms waits; 40 × 50 ms blocking in `async def` {blocked * 1000:,.0f} ms vs "
    f"{awaited * 1000:,.0f} ms awaited ({blocked / awaited:.0f}×); thread pool step {at41 / at40:.1f}× from 40 to 41 "
    f"requests; shared client {pooling.ratio:.1f}× faster than a client per request; uvloop + httptools "
    f"{gain[trivial_route]:.2f}× plain uvicorn on a trivial route; mixed load best at {best.workers} worker(s), "
    f"{best.load.throughput:,.0f} req/s, p95 {best.p95_ms:.0f} ms, {allowance} connections per worker in a "
    f"{budget}-connection budget."
)
