# %% [markdown]
# # 08 · Structured request logs that cost almost nothing
#
# **Teaching:** 25 min · **Exercise:** 20 min
#
# **Questions**
# - What should one request's log line contain so that it can be searched, joined and measured later?
# - How do I follow one request across services, and still see the requests that crashed?
# - What does an access-log middleware cost per request, and does the way it is written matter?
#
# **Objectives**
# - Log one JSON line per request with stdlib `logging` and python-json-logger: method, path, status,
#   `duration_ms`, `request_id` (the client's `X-Request-ID` or a new one, echoed in the response).
# - Log failed requests (500) with their id; never log `Authorization`, cookies or secrets.
# - Measure `@app.middleware("http")` (BaseHTTPMiddleware) against a pure ASGI middleware, in-process and
#   under uvicorn, and write the pure ASGI form.
# - Read the log back as data: p95 per route from the lines themselves.
#
# The article's section 8 logs `json.dumps({...})` from an `@app.middleware("http")` function. It is a
# start; below we measure what it misses and what it costs.

# %%
import random

from course_lib import *
from course_lib.lessons.l08_logging import (
    AccessLogMiddleware, LogCapture, add_article_log, make_demo_app, middleware_costs, middleware_story, per_route,
    quiet_client, route_table, served_styles, server_story, show_record, slowest_route_story, source_listing,
)

# %% [markdown]
# ## The demo app
#
# `make_demo_app()` has four routes: `/` (trivial), `/items/{item_id}`, `/slow?ms=20` (awaits a sleep)
# and `/boom` (raises). `quiet_client(app)` is `app_client` except that an endpoint that raises gives
# the client a 500 response, as a real server would, instead of raising in the notebook.
#
# ## The article's middleware, measured
#
# `add_article_log(app, logger)` is the article's code. `LogCapture()` is a JSON logger that writes into
# memory so we can read every line back. Three requests, one of them to `/boom`:

# %%
# NBVAL_CHECK_OUTPUT
capture = LogCapture()
app = make_demo_app()
add_article_log(app, capture.logger)
async with quiet_client(app) as client:
    for url in ("/", "/items/7", "/boom"):
        print(url, (await client.get(url)).status_code)
print(f"{len(capture.lines)} log lines for 3 requests")
for record in capture.records():
    print(sorted(record), "| message:", record["message"])

# %% [markdown]
# What the measurement shows:
# - the failed request left **no line at all**: `call_next` raised, and the logging line never ran;
# - the fields are a JSON *string inside* the JSON line's `message`: a log system cannot index them;
# - no duration, no request id to find the request again.
#
# ## One JSON line per request, the pure ASGI way
#
# A pure ASGI middleware is a class with `__call__(scope, receive, send)`. It wraps `send` to see the
# status (and add the `X-Request-ID` header), times the call with `perf_counter`, logs once with the fields
# in `extra=` (the JSON formatter makes them top-level keys), and on an exception logs status 500 with the
# id and re-raises, so the server still answers 500. It logs no header: nothing secret can slip in.
#
# Middleware wraps the app like layers of an onion: a request passes every layer on the way in, the response
# every layer on the way out, in reverse order. In an app that also compresses (lesson 04's GZipMiddleware),
# add the access log last so it is outermost: its clock then covers everything inside, and it sees the final
# status on the way out:
#
# ```mermaid
# sequenceDiagram
#     participant C as client
#     participant L as AccessLogMiddleware
#     participant G as GZipMiddleware
#     participant A as the app's route
#     C->>L: request (start the clock, pick the id)
#     L->>G: request
#     G->>A: request
#     A-->>G: http.response.start 200, body
#     G-->>L: compressed body
#     L-->>C: + X-Request-ID (stop the clock, log one JSON line)
# ```

# %%
source_listing(AccessLogMiddleware)

# %% [markdown]
# Five requests: one carries the client's own `X-Request-ID`, one an `Authorization` header and a cookie,
# one fails.

# %%
# NBVAL_CHECK_OUTPUT
capture = LogCapture()
app = make_demo_app()
app.add_middleware(AccessLogMiddleware, logger=capture.logger)
sent = [("/", {}), ("/items/7", {"X-Request-ID": "checkout-42"}),
        ("/items/8", {"Authorization": "Bearer top-secret-token", "Cookie": "session=also-secret"}),
        ("/slow?ms=20", {}), ("/boom", {})]
async with quiet_client(app) as client:
    responses = [await client.get(url, headers=headers) for url, headers in sent]
records = capture.records()
print(f"{len(records)} log lines for {len(sent)} requests")
for record, response in zip(records, responses):
    echoed = response.headers.get("x-request-id") == record["request_id"]
    print(f"{record['level']:5} {record['method']} {record['path']:9} {record['status']} "
          f"duration_ms is {type(record['duration_ms']).__name__} | id echoed in response: {echoed}")
print("client's id kept:", records[1]["request_id"])
print("secrets in the log:", any(s in capture.stream.getvalue() for s in ("top-secret", "also-secret")))

# %% [markdown]
# The failed request is the one with no echoed id: Starlette's `ServerErrorMiddleware` sits *outside*
# every user middleware and writes the 500 page itself. The log line still carries its id (and the
# traceback, in `exc_info`). That line, parsed back from its JSON, one key per row (the traceback cut to
# its last frame, paths without this machine's folders):

# %%
show_record(capture.records()[4])  # GET /boom

# %% [markdown]
# ## What a middleware costs, in-process
#
# The same trivial `GET /` app five ways: no middleware; a pure ASGI middleware that does nothing; an
# `@app.middleware("http")` that does nothing; and the access log written both ways. Each is timed at two levels,
# interleaved: **through the client** (httpx into a FastAPI app, as every other lesson measures an endpoint) and
# **the middleware alone**, wrapped around a three-line ASGI app and called directly, as a server calls it, with
# no client in between. "µs added" is the median minus the median with no middleware at the same level.

# %%
overhead = await middleware_costs(n=200)
overhead

# %%
plot_timings(overhead.client, title="GET / through the in-process client: middleware styles", log=False)

# %%
middleware_story(overhead)

# %% [markdown]
# ## Under a real server
#
# In-process numbers leave out the network and the server. `styles_app` mounts three copies of the demo app
# in one uvicorn process (one worker): `/bare` without middleware, `/asgi` with the pure ASGI log, `/http` with
# the `@app.middleware` log (both log JSON to the server's stderr). The load generator hits `GET /` of each in
# turn, 0.7 s each, 20 clients, five rounds: each figure is the median of its five rounds, and each
# ratio is taken within a round (the three styles measured back to back), so a round in which another program
# slowed the machine moves it little. The best of a few rounds would report the luckiest one instead.

# %%
# (announce=False: no docs link, the server stops when this cell ends)
with serve("course_lib.lessons.l08_logging:styles_app", ready_path="/bare/", announce=False) as server:
    styles = await served_styles(server.url, rounds=5, seconds=0.7)
    server_lines = [line for line in server.log().splitlines() if line.startswith("{")]
plot_bars(styles.median(), ylabel="requests per second (median of 5 rounds)", title="GET / under uvicorn, 1 worker")

# %%
server_story(styles, len(server_lines), usable_cores())

# %% [markdown]
# ## The log as data
#
# The lines are data: group them by route and read the latency distribution straight from `duration_ms`.
# 300 requests: `/`, `/items/{id}` and `/slow` with a random 0–40 ms sleep. `per_route` maps `/items/17` to
# `/items/{id}` before grouping.

# %%
capture = LogCapture()
app = make_demo_app()
app.add_middleware(AccessLogMiddleware, logger=capture.logger)
rng = random.Random(8)
async with quiet_client(app) as client:
    for _ in range(300):
        pick = rng.random()
        url = "/" if pick < 0.4 else f"/items/{rng.randrange(1000)}" if pick < 0.8 else f"/slow?ms={rng.randrange(40)}"
        await client.get(url)
routes = per_route(capture.records())
route_table(routes)

# %%
plot_bars({r["route"]: r["p95_ms"] for r in routes}, ylabel="p95 duration_ms (from the log)",
          title="p95 per route, computed from the access log", logy=True)

# %%
slowest_route_story(routes)

# %% [markdown]
# Now open **`exercises/08_logging.ipynb`** and write your own access log: it asks for more than the class
# above (the query string with its secrets redacted, the bytes a streamed response sends), and the grader sends
# 30 requests at once, hides secrets in headers, the query and a body, reads every field of every log record,
# and times your middleware against no middleware and the reference, interleaved.
#
# ## Key points
# - One JSON line per request, fields as top-level keys via `extra=`: method, path, status, `duration_ms`,
#   `request_id`; python-json-logger's `JsonFormatter` on a stdlib handler, `propagate = False`.
# - Take `X-Request-ID` from the client when it is sane, else generate one; echo it in the response.
# - Log the exception path too (status 500 and the id), then re-raise; log no headers at all.
# - Pure ASGI middleware costs a fraction of `@app.middleware("http")` (measured above); prefer it.
# - Logs are data: p95 per route comes straight from `duration_ms`.
