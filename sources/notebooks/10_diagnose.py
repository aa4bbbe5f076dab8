# %% [markdown]
# # 10 · Find the bottleneck before you fix it
#
# **Teaching:** 35 min · **Exercise:** 60 min
#
# **Questions**
# - An endpoint is slow. Where does its time go, and how do I find out without guessing?
# - How do I profile one request in a notebook, and on a real server without changing its code path?
# - How do I catch a blocking call hidden inside `async def`?
# - How do I look inside a running worker I cannot restart?
#
# **Objectives**
# - Profile one request in-process with pyinstrument (async mode) and read the profile down to the function and
#   line that cost.
# - Serve a profile on demand (`?profile=1`) from a pure ASGI middleware on a real uvicorn server.
# - Turn on asyncio debug mode (`loop.set_debug(True)`, `PYTHONASYNCIODEBUG=1`, `slow_callback_duration`) and read
#   its slow-callback warnings, parsed.
# - Measure what a held event loop costs *other* requests: loop lag in-process, a `/ping` on a real server.
# - Use py-spy on a running uvicorn worker (`dump`, `record --format speedscope`), and know what to do where
#   ptrace is not allowed.
#
# The earlier lessons each named the fix before measuring it. Here nothing is named: the report below is slow, and
# the measurements say why.

# %%
import asyncio
import tempfile
from pathlib import Path

import httpx

from course_lib import *
from course_lib.lessons.l10_diagnose import (
    _parse_slow, call_tree, count_encoder_calls, head, loop_lag_during, make_fixed_report_app, make_report_app,
    ping_while, profile_request, ptrace_status, py_spy_dump, py_spy_record, slow_callbacks, speedscope_top,
    thread_stack, time_share, top_frames, without_header,
)

# %% [markdown]
# ## A slow report
#
# `make_report_app(db)` is a small API: `GET /report` returns the latest 1,000 posts with their likes converted
# through an exchange rate, and `GET /ping` answers `{"ok": true}`. Time both.

# %%
db = make_demo_db(users=200, posts_per_user=10, seed=11)
report_app = make_report_app(db, items=1000)
async with app_client(report_app) as client:
    report = await measure(lambda: client.get("/report"), n=5, warmup=1)
    ping = await measure(lambda: client.get("/ping"), n=20, warmup=2)
say(f"`GET /report` takes **{report.median_ms:.0f} ms** (median of 5), `GET /ping` **{ping.median_ms:.2f} ms**. "
    "The handler is five lines. Which of them costs? A guess is a hypothesis; a profile is a measurement.")

# %% [markdown]
# ## pyinstrument on one request
#
# [pyinstrument](https://pyinstrument.readthedocs.io/) is a *sampling* profiler: every millisecond (here) it records
# the Python call stack, and the time it reports is wall-clock time. In **async mode**
# (`Profiler(async_mode="enabled")`), time a coroutine spends awaiting is charged to the line that awaits, so a
# request's profile reads like a synchronous program. `profile_request(client, url)` wraps one GET in it.
#
# pyinstrument's own view is a call tree (library frames folded):

# %%
async with app_client(report_app) as client:
    await client.get("/report")  # warm up: the first request pays for imports and caches
    session = await profile_request(client, "/report")
print(call_tree(session, lines=26))

# %% [markdown]
# ## Read it down to the line that costs
#
# A call tree answers "who called what". The question here is "what costs": sort functions by their **own** time
# (`self`: time when the function itself was running, not the functions it called). `top_frames(session)` prints that
# table; *where* is the file and line of the function.

# %%
frames = top_frames(session, n=8, title="GET /report, by own time")
frames

# %%
encoding = time_share(session, "fastapi/encoders.py")
sleeping = time_share(session, "fetch_exchange_rate")
database = time_share(session, "sqlalchemy/")
say(f"Of **{frames.duration_ms:.0f} ms** profiled, **{encoding:.0%}** is inside `fastapi/encoders.py` "
    "(`jsonable_encoder`, walking every model field by field because the route declares no return type), and "
    f"**{sleeping:.0%}** inside `fetch_exchange_rate`, which calls `time.sleep`: a synchronous HTTP client, "
    "simulated. The route is `async def`, so that wait happens *on the event loop*. Everything under SQLAlchemy "
    f"(the query and building 1,000 objects) is **{database:.0%}**: the database is not where to start. Read "
    f"shares, not milliseconds: profiled, the request took {frames.duration_ms:.0f} ms against "
    f"{report.median_ms:.0f} ms without; a profiler slows down what it watches, Python-heavy code most.")

# %% [markdown]
# ## asyncio debug mode: who holds the loop
#
# One event loop runs every request of a worker. Code that does not `await` (a blocking call, a long computation)
# holds it, and every other request waits. asyncio's **debug mode** times each step of every task and logs a
# warning for any step longer than `loop.slow_callback_duration` (0.1 s by default). Turn it on with
# `loop.set_debug(True)`, `asyncio.run(..., debug=True)` or the environment variable `PYTHONASYNCIODEBUG=1`.
# `slow_callbacks(threshold_s)` turns it on around a block and parses the warnings instead of printing them:

# %%
async with app_client(report_app) as client:
    async with slow_callbacks(threshold_s=0.02) as held:
        await client.get("/report")
for warning in held:
    print(warning)
longest = max((w.seconds for w in held), default=0.0)
say(f"**{len(held)}** step(s) held the loop longer than 20 ms; the longest **{longest * 1000:.0f} ms**. Here every "
    "step is the cell's own task (the in-process client runs the app inside it); under uvicorn the task is "
    "`RequestResponseCycle.run_asgi`, created for each request, as the server section shows.")

# %% [markdown]
# What one raw warning looks like, and what the parser keeps from it:

# %%
raw = ("Executing <Task pending name='Task-9' coro=<RequestResponseCycle.run_asgi() running at "
       "/venv/lib/python3.11/site-packages/uvicorn/protocols/http/h11_impl.py:403> "
       "created at /venv/lib/python3.11/site-packages/uvicorn/protocols/http/h11_impl.py:250> took 0.142 seconds")
print(raw)
print("→", _parse_slow(raw))

# %% [markdown]
# ## What a held loop costs the others
#
# While the report runs, how late does the loop run a 1 ms timer? That lateness (**loop lag**) is the least that
# any other request on this worker waits. `loop_lag_during(client, url)` measures the worst of it during one GET.

# %%
async with app_client(report_app) as client:
    lag_ms, ticks = await loop_lag_during(client, "/report")
say(f"During one `GET /report` the loop ran a 1 ms timer only **{ticks}** time(s), up to **{lag_ms:.0f} ms** late: "
    f"a `/ping` ({ping.median_ms:.2f} ms on its own) arriving then would wait that long.")

# %% [markdown]
# ## On a real server: a profile on demand
#
# In-process profiling needs the app in your notebook. On a server, a **pure ASGI middleware** can profile the one
# request that asks for it: `ProfilerMiddleware` runs a request with `?profile=1` (HTML) or `?profile=text` under
# pyinstrument and answers with the profile instead of the response; every other request passes through untouched.
# Ship it switched off, or behind authentication: a profile shows your code.
#
# ```python
# class ProfilerMiddleware:
#     async def __call__(self, scope, receive, send):
#         if scope["type"] != "http" or b"profile=" not in scope["query_string"]:
#             return await self.app(scope, receive, send)
#         profiler = Profiler(async_mode="enabled"); profiler.start()
#         await self.app(scope, receive, swallow)     # run the request, drop its response
#         profiler.stop()
#         ... send profiler.output_html() as the response
# ```
#
# `course_lib.lessons.l10_diagnose:served_app` is the same report app wrapped in it. Serve it under uvicorn with
# `PYTHONASYNCIODEBUG=1` and `LAB_SLOW_CALLBACK_S=0.02`; its `GET /loop` tells how the server's event loop started.

# %%
server = serve("course_lib.lessons.l10_diagnose:served_app",
               env={"PYTHONASYNCIODEBUG": "1", "LAB_SLOW_CALLBACK_S": "0.02"}, announce=False)
async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
    loop_info = (await http.get("/loop")).json()
print(loop_info)
if loop_info["debug_at_startup"]:
    started = f"Under Python {loop_info['python']}, uvicorn's loop started in debug mode from `PYTHONASYNCIODEBUG=1`."
else:
    started = (f"Under Python {loop_info['python']}, uvicorn's loop started with debug mode **off** although "
               "`PYTHONASYNCIODEBUG=1` was set: on 3.11 uvicorn runs its loop through a backport of `asyncio.run` "
               "that passes `debug=False`, which overrides the variable (Python 3.12's `asyncio.run` does not). So "
               "the app's startup (its lifespan) turns it on itself with `loop.set_debug(True)`.")
say(started + f" The loop's `debug` is now **{loop_info['debug']}**, `slow_callback_duration` "
    f"**{loop_info['slow_callback_duration']:g} s**.")

# %%
async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
    plain = await http.get("/report")
    profiled = await http.get("/report", params={"profile": "text"})
print(f"GET /report → {plain.status_code}, {len(plain.content):,} bytes of JSON; "
      f"GET /report?profile=text → {profiled.status_code}, {profiled.headers['content-type']}")
print(head(without_header(profiled.text), 22))

# %% [markdown]
# The server's log holds the debug-mode warnings of those requests. Parsed, each is one line:

# %%
server_warnings = [w for w in map(_parse_slow, server.log().split("\nExecuting ")) if w is not None]
for warning in server_warnings[:5]:
    print(warning)
say(f"**{len(server_warnings)}** slow step(s) logged by the server; each names the task that held the loop "
    "(`RequestResponseCycle.run_asgi`: a request) and where uvicorn created it.")

# %% [markdown]
# And what it costs a real client: a `/ping` sent while a `/report` is in flight waits on its socket until the loop
# is free.

# %%
alone_ms, during_ms = await ping_while(server.url, "/report")
say(f"On the server, `GET /ping` takes **{alone_ms:.1f} ms** alone and **{during_ms:.0f} ms** when sent 20 ms after a "
    f"`GET /report` ({during_ms / alone_ms:.0f}× longer; medians of 3).")

# %% [markdown]
# ## py-spy: look inside a running worker from outside
#
# [py-spy](https://github.com/benfred/py-spy) reads another Python process's memory and prints its stacks, without
# changing or restarting it: `py-spy dump --pid PID` (every thread's stack, once) and
# `py-spy record --pid PID --format speedscope -o profile.json` (samples over time; open the file on
# speedscope.app, or `-o profile.svg` for a flame graph). It needs **ptrace** on the target: as root (or with the
# `CAP_SYS_PTRACE` capability), or as the same user when the kernel's Yama `ptrace_scope` is 0; at 1 (Ubuntu's
# default) only on processes it starts itself (`py-spy record -o x.json -- python -m uvicorn ...`). Docker drops
# `SYS_PTRACE` by default, and many Kubernetes clusters forbid it. `ptrace_status(pid)` tries and says why:

# %%
allowed, why = ptrace_status(server.pid)
say(f"py-spy here: **{'allowed' if allowed else 'not allowed'}**: {why}." + ("" if allowed else
    " Where ptrace is forbidden: run the container with `--cap-add SYS_PTRACE` (Docker) or add `SYS_PTRACE` to "
    "the pod's `securityContext.capabilities` (Kubernetes), or profile from inside the process instead: the "
    "`?profile=1` middleware above, or pyinstrument around one request."))

# %% [markdown]
# Put the server under load (4 concurrent clients for 4 s), dump the worker's stacks once, then record 2 s of
# samples (`--idle` keeps the samples of threads that wait, so a blocking wait shows, not only CPU):

# %%
record_file = Path(tempfile.mkdtemp()) / "report.speedscope.json"
dump_text, recorded = "", None
if allowed:
    load = asyncio.ensure_future(load_test(server.url + "/report", concurrency=4, seconds=4, progress=False))
    await asyncio.sleep(0.5)
    dump_text = await asyncio.to_thread(py_spy_dump, server.pid)
    recorder = py_spy_record(server.pid, record_file, seconds=2)
    await asyncio.to_thread(recorder.wait)
    result = await load
    recorded = speedscope_top(record_file, n=8, thread="MainThread")
print(head(thread_stack(dump_text, "MainThread"), 14) if dump_text else "(py-spy could not run here)")

# %% [markdown]
# The dump is one instant: the event loop's thread (`MainThread`, where uvicorn runs it) caught in the middle of a
# request. The recording adds them up; here are the event loop thread's functions by own samples:

# %%
recorded if recorded is not None else say("py-spy could not record here (see above).")

# %%
if recorded is not None and recorded.rows:
    top = recorded.rows[0]
    reading = (f"Over {recorded.duration_ms / 1000:.1f} s of samples of the loop's thread, the function seen running most "
        f"often is `{top.function}` (**{top.self_ms / recorded.duration_ms:.0%}** of samples), under "
        f"{result.concurrency} concurrent clients getting {result.throughput:.1f} requests/s. py-spy records the "
        f"line being *run*, not where the function starts: `{top.where}` is `{top.code}`. (pyinstrument's tables "
        "give the line where each function is defined; its call tree shows which function called which.)")
else:
    reading = "No recording to read on this machine."
say(reading)

# %%
server.stop()

# %% [markdown]
# ## Fix what the profile showed, and measure again
#
# The profile named two causes, so the fix is two lines: a `def` route (FastAPI runs it in its thread pool, so the
# blocking call no longer holds the loop) and a declared return type (`-> list[PostDetail]`: pydantic-core
# serializes the whole list in one pass, lesson 04). `make_fixed_report_app` is exactly that.

# %%
fixed_app = make_fixed_report_app(db, items=1000)
async with app_client(report_app) as slow, app_client(fixed_app) as fixed:
    same = (await slow.get("/report")).json() == (await fixed.get("/report")).json()
    timings = await compare({"slow": lambda: slow.get("/report"), "fixed": lambda: fixed.get("/report")}, n=5,
                            warmup=1)
    slow_lag, _ = await loop_lag_during(slow, "/report")
    fixed_lag, _ = await loop_lag_during(fixed, "/report")
plot_timings(timings, title="GET /report, slow vs fixed (in-process)")

# %% [markdown]
# The profile's share of `fastapi/encoders.py` is an estimate from samples taken every millisecond. The same fact has an
# exact measurement: `count_encoder_calls()` counts the calls of FastAPI's `jsonable_encoder` (it calls itself once per
# object and field), as `count_queries` counts statements.

# %%
async with app_client(report_app) as slow, app_client(fixed_app) as fixed:
    with count_encoder_calls() as slow_encoded:
        await slow.get("/report")
    with count_encoder_calls() as fixed_encoded:
        await fixed.get("/report")
print(f"jsonable_encoder calls for one GET /report: slow {slow_encoded.count:,}, "
      f"fixed {fixed_encoded.count:,}")

# %%
say(f"Same JSON: **{same}**. Median **{timings['slow'].median_ms:.0f} ms → {timings['fixed'].median_ms:.0f} ms** "
    f"(**{timings.ratio:.1f}×**), and the worst loop lag during one request **{slow_lag:.0f} ms → {fixed_lag:.0f} "
    "ms**: the wait moved off the loop, and what remains on it is one fast serialization: "
    f"**{slow_encoded.count:,} → {fixed_encoded.count:,}** calls of `jsonable_encoder`.")

# %% [markdown]
# ## Which measurement names which bottleneck
#
# A profile answers "where does the time go"; some bottlenecks are clearer from other measurements, cheaper and
# exact. The course has a tool for each:
#
# | question | tool | lesson |
# |---|---|---|
# | how many statements does one request send? | `count_queries(engine)`, `observe_statements(db)` | 02 |
# | does a statement read a whole table to find a few rows? | `statement_plans(client, db, url)`, `explain` | 05 |
# | does the response grow with the table? | response bytes at two table sizes | 04 |
# | does each request open a new database connection? | `count_connections()` | 01 |
# | is the loop held, and is the CPU busy or waiting? | `slow_callbacks()`, `request_cost` (CPU ms vs wall ms) | 01, here |
# | is the response encoded item by item? | `count_encoder_calls()` | 04, here |
# | where does the rest of the time go? | `profile_request` + `top_frames`, `time_share`; py-spy on a server | here |
#
# Start with the exact, cheap ones; a wall-clock time alone names nothing.
#
# Now open **`exercises/10_diagnose.ipynb`**: write `diagnose(mystery)`, which measures an app it has never seen
# and names its bottleneck, then `fix(mystery, db)`, which returns that app fixed: the same answers, and the
# measurement that named the bottleneck no longer shows it. The graders draw a new set of mystery apps on every run.
#
# ## Key points
# - Measure before fixing: a sampling profiler (pyinstrument, async mode) on one request shows where its wall time
#   goes; sort by own time to find the line that costs.
# - Profile a served app on demand with a pure ASGI middleware (`?profile=1`), off by default.
# - asyncio debug mode logs every step that holds the loop longer than `slow_callback_duration`; a blocking call
#   in `async def` delays every other request on the worker (loop lag, a slow `/ping`).
# - py-spy reads a running worker from outside (`dump`, `record`); it needs ptrace, which containers often forbid:
#   add `SYS_PTRACE`, or profile from inside.
# - Fix what the measurement names, then measure again: same output, less time, a free loop.
