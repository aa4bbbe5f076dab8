# %% [markdown]
# # Exercise 08 · A pure ASGI access-log middleware
#
# Work through `notebooks/08_logging.ipynb` first. Then write your answer in the cell marked
# `# YOUR CODE HERE` and run the `check(...)` cell below it. A failing check tells you what it
# measured and gives a hint; run it again after a fix.

# %%
import logging
import time
import uuid
from urllib.parse import parse_qsl, urlencode

from course_lib import *
from course_lib.lessons.l08_logging import LogCapture, make_demo_app, per_route, quiet_client


# %% [markdown]
# ## 08.access-log
#
# The lesson's `AccessLogMiddleware` is a start, but production asks for more. Write `AccessLog`, a **pure
# ASGI** middleware (no `BaseHTTPMiddleware`, no `@app.middleware`; a class with `__call__` or a factory
# function that returns the ASGI callable, as you like) that the grader adds with
# `app.add_middleware(AccessLog, logger=logger)`. For every HTTP request it:
#
# - logs **exactly one** line with `logger.info(...)` (or `logger.error(...)` for a failure), passing the fields
#   in `extra=`: `method` (str), `path` (str), `query` (str), `status` (int), `duration_ms` (float,
#   milliseconds), `request_id` (str), `bytes` (int);
# - `query` is the query string **with secrets redacted**: the value of every parameter whose name contains
#   `token`, `key`, `secret`, `password`, `auth` or `sig` (any case) becomes `***`, the others stay as they
#   are (`page=2&access_token=***&q=red+shoes`); `""` when there is no query;
# - `bytes` is the number of response body bytes sent (a streamed response sends its body in several
#   messages), and `duration_ms` runs until the last of them;
# - takes `request_id` from the request's `X-Request-ID` header when there is one, else generates a unique one,
#   and **echoes it** in the response's `X-Request-ID` header;
# - when the app raises, still logs the request with `status` 500 and its id (then re-raises);
# - never logs a header value (API keys and proxy credentials are headers too) nor the request body;
# - stays correct with many requests **in flight at once**, lets non-HTTP scopes (`lifespan`) through
#   untouched, and adds little time per request.
#
# The grader sends nine requests one by one (one raising, one 404, one 405, one streamed, one with a client
# id; secrets in several headers, in the query string and in a POST body, under names that change every
# run), then **30 at once** that sleep different times; it reads every field of every log record (from any
# logger) and times your middleware against no middleware and the course's reference, interleaved.

# %%
class AccessLog:
    """Pure ASGI middleware: one JSON access-log line per request, with a request id echoed to the client."""

    SENSITIVE = ("token", "key", "secret", "password", "auth", "sig")

    def __init__(self, app, logger: logging.Logger) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope, receive, send) -> None:
        ### BEGIN SOLUTION
        #> await self.app(scope, receive, send)  # passes every request through and logs nothing: make it log
        ...  # --8<-- "answers/l08_logging.py:answer"
        ### END SOLUTION


# %%
check("08.access-log", AccessLog)

# %% [markdown]
# ## Try it yourself
#
# Your middleware on the demo app: read its lines back as data.

# %%
capture = LogCapture()
app = make_demo_app()
app.add_middleware(AccessLog, logger=capture.logger)
async with quiet_client(app) as client:
    for url in ("/", "/items/1?page=2&api_key=hunter2", "/items/2", "/slow?ms=15", "/boom"):
        await client.get(url, headers={"X-Request-ID": f"try-{url.strip('/')[:5]}"})
print(*capture.lines[:2], sep="\n")
per_route(capture.records())

# %% [markdown]
# Done? `python -m course_lib progress` in a terminal shows this exercise ticked. That closes the
# "shape of a production app" lessons (06–08).
