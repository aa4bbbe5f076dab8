"""Lesson 08 (logging): JSON request logs from a pure ASGI middleware, its cost vs BaseHTTPMiddleware, the grader."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import secrets
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, TextIO

import httpx
from fastapi import FastAPI, Request, Response
from pythonjsonlogger.json import JsonFormatter
from starlette.applications import Starlette
from starlette.routing import Mount

from ..bench import BenchRow
from ..client import app_client
from ..grading import Checking, Fail, exercise
from ..timing import Comparison, compare, percentile

LESSON = "08_logging"

__all__ = [
    "json_logger", "AccessLogMiddleware", "add_article_log", "NoopASGIMiddleware", "add_http_access_log", "add_http_noop",
    "make_demo_app", "quiet_client", "LogCapture", "per_route", "middleware_overhead", "bench",
    "bare_app", "asgi_logged_app", "http_logged_app", "styles_app",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SAFE_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")


def json_logger(name: str, stream: TextIO | None = None, level: int = logging.INFO) -> logging.Logger:
    """A logger that writes one JSON object per line to `stream` (stderr by default), and only there."""
    logger = logging.getLogger(name)
    for old in list(logger.handlers):  # re-running a cell must not add a second handler
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                                       rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # no duplicate, unformatted copy through the root logger
    return logger


def _request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is a sane token, else a new random one."""
    for key, value in scope.get("headers", []):
        if key == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SAFE_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


class AccessLogMiddleware:
    """Pure ASGI middleware: one JSON log line per HTTP request, and the request id echoed in `X-Request-ID`."""

    def __init__(self, app: ASGIApp, logger: logging.Logger | None = None) -> None:
        self.app = app
        self.logger = logger or logging.getLogger("app.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan and websockets pass straight through
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        status = 500  # if the app raises before answering, that is what the client gets
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = 500
            self._log(scope, status, start, request_id, error=True)
            raise
        self._log(scope, status, start, request_id)

    def _log(self, scope: Scope, status: int, start: float, request_id: str, error: bool = False) -> None:
        """Write the one line: method, path, status, duration, id (never headers, cookies or the query)."""
        fields = {"method": scope["method"], "path": scope["path"], "status": status,
                  "duration_ms": round((time.perf_counter() - start) * 1000, 3), "request_id": request_id}
        if error:
            self.logger.error("request failed", extra=fields, exc_info=True)
        else:
            self.logger.info("request", extra=fields)


class NoopASGIMiddleware:
    """A pure ASGI middleware that does nothing: the mechanism's own cost."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def add_http_access_log(app: FastAPI, logger: logging.Logger) -> None:
    """The same access log written as `@app.middleware("http")` (a BaseHTTPMiddleware): the article's idiom."""

    @app.middleware("http")
    async def log_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        header = request.headers.get("x-request-id", "")
        request_id = header if _SAFE_ID.match(header) else uuid.uuid4().hex
        start = time.perf_counter()
        response = await call_next(request)
        response.headers["x-request-id"] = request_id
        logger.info("request", extra={"method": request.method, "path": request.url.path,
                                      "status": response.status_code, "request_id": request_id,
                                      "duration_ms": round((time.perf_counter() - start) * 1000, 3)})
        return response


def add_article_log(app: FastAPI, logger: logging.Logger) -> None:
    """The source article's middleware, as printed: a JSON string as the message, logged after `call_next`."""

    @app.middleware("http")
    async def log_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        logger.info(json.dumps({"method": request.method, "path": request.url.path,
                                "status": response.status_code}))
        return response


def add_http_noop(app: FastAPI) -> None:
    """A do-nothing `@app.middleware("http")`: BaseHTTPMiddleware's own cost."""

    @app.middleware("http")
    async def passthrough(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        return await call_next(request)


def make_demo_app() -> FastAPI:
    """A small app with a fast route, a slower one, a parameterised one and one that raises."""
    app = FastAPI(title="Logging demo")

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"hello": "lab"}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.get("/slow")
    async def slow(ms: float = 20) -> dict[str, float]:
        await asyncio.sleep(min(ms, 200) / 1000)
        return {"slept_ms": ms}

    @app.get("/boom")
    async def boom() -> dict[str, str]:
        raise RuntimeError("the endpoint failed")

    return app


@asynccontextmanager
async def quiet_client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Like `app_client`, but an endpoint that raises gives the client a 500 instead of raising in the notebook."""
    async with app_client(app, raise_app_exceptions=False) as client:
        yield client


class LogCapture:
    """A JSON logger writing into memory; `.lines` are the raw lines, `.records()` them parsed."""

    def __init__(self, name: str = "", level: int = logging.INFO) -> None:
        self.stream = io.StringIO()
        self.logger = json_logger(name or f"lab.capture.{uuid.uuid4().hex[:8]}", self.stream, level)

    @property
    def lines(self) -> list[str]:
        """Every line written so far."""
        return [line for line in self.stream.getvalue().splitlines() if line.strip()]

    def records(self) -> list[dict[str, Any]]:
        """The lines parsed as JSON (a line that is not JSON raises ValueError)."""
        return [json.loads(line) for line in self.lines]

    def clear(self) -> None:
        """Forget what was written."""
        self.stream.seek(0)
        self.stream.truncate()


def per_route(records: list[dict[str, Any]], routes: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Group access-log records by method and route (`/items/17` → `/items/{id}`): count, p50, p95, max, errors."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if "duration_ms" not in record:
            continue
        path = re.sub(r"/\d+(?=/|$)", "/{id}", str(record.get("path", "?")))
        groups[f"{record.get('method', '?')} {path}"].append(record)
    rows = []
    for route, items in groups.items():
        durations = [float(r["duration_ms"]) for r in items]
        rows.append({"route": route, "requests": len(items),
                     "p50_ms": round(percentile(durations, 50), 3), "p95_ms": round(percentile(durations, 95), 3),
                     "max_ms": round(max(durations), 3),
                     "errors": sum(1 for r in items if int(r.get("status", 0)) >= 500)})
    return sorted(rows, key=lambda row: -row["p95_ms"])


def _variants(capture_stream: TextIO) -> dict[str, FastAPI]:
    """The same trivial app without middleware, with no-op ones, and with the access log in both styles."""
    def hello_app() -> FastAPI:
        app = FastAPI()

        @app.get("/")
        async def hello() -> dict[str, str]:
            return {"hello": "lab"}

        return app

    logger = json_logger("lab.overhead", capture_stream)
    none, asgi_noop, http_noop, asgi_log, http_log = (hello_app() for _ in range(5))
    asgi_noop.add_middleware(NoopASGIMiddleware)
    add_http_noop(http_noop)
    asgi_log.add_middleware(AccessLogMiddleware, logger=logger)
    add_http_access_log(http_log, logger)
    return {"no middleware": none, "pure ASGI, no-op": asgi_noop, "@app.middleware, no-op": http_noop,
            "pure ASGI + JSON log": asgi_log, "@app.middleware + JSON log": http_log}


async def middleware_overhead(n: int = 300) -> Comparison:
    """Median in-process latency of GET / for each variant of `_variants`, interleaved in one run."""
    sink = io.StringIO()
    apps = _variants(sink)
    async with _clients(list(apps.values())) as clients:
        result = await compare({label: (lambda c=c: c.get("/")) for label, c in zip(apps, clients, strict=True)},
                               n=n, warmup=20)
    return result


@asynccontextmanager
async def _clients(apps: list[Any]) -> AsyncIterator[list[httpx.AsyncClient]]:
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(quiet_client(app)) for app in apps]


# Module-level apps for `serve(...)`: the server process logs JSON to its stderr (the server's log file).
# One server, three mounted copies of the demo app, so that the styles share one process (and one start-up).
_server_logger = json_logger("lab.server.access")
bare_app = make_demo_app()
asgi_logged_app = make_demo_app()
asgi_logged_app.add_middleware(AccessLogMiddleware, logger=_server_logger)
http_logged_app = make_demo_app()
add_http_access_log(http_logged_app, _server_logger)
styles_app = Starlette(routes=[Mount("/bare", app=bare_app), Mount("/asgi", app=asgi_logged_app),
                               Mount("/http", app=http_logged_app)])
"""Serve this one: `/bare/…` has no middleware, `/asgi/…` the pure ASGI log, `/http/…` the @app.middleware log."""


def bench() -> list[BenchRow]:
    """Headline figures: per-request cost of each middleware style in-process, and their ratio."""
    result = asyncio.run(middleware_overhead(400))
    none = result["no middleware"].median_ms
    rows = [BenchRow("08", f"GET / in-process, {label}, median", t.median_ms * 1000, "µs")
            for label, t in result.timings.items()]
    asgi = result["pure ASGI + JSON log"].median_ms - none
    http = result["@app.middleware + JSON log"].median_ms - none
    ratio = http / asgi if asgi > 0 else float("inf")
    rows.append(BenchRow("08", "access-log overhead (µs added): @app.middleware / pure ASGI", ratio, "×"))
    rows.append(BenchRow("08", "latency ratio: pure ASGI + JSON log / no middleware",
                         result["pure ASGI + JSON log"].median_ms / none, "×"))
    rows.append(BenchRow("08", "latency ratio: @app.middleware + JSON log / no middleware",
                         result["@app.middleware + JSON log"].median_ms / none, "×"))
    return rows


# --------------------------------------------------------------------------------------------------
# Exercise 08.access-log
# --------------------------------------------------------------------------------------------------

_REQUIRED = {"method": str, "path": str, "status": int, "duration_ms": (int, float), "request_id": str}


def _type_name(kind: Any) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


@exercise(
    "08.access-log",
    title="A pure ASGI access-log middleware",
    lesson=LESSON,
    expects="a middleware class (or factory) called as `Middleware(app, logger=logger)` that returns an ASGI app",
    hints=(
        "A pure ASGI middleware stores `app` in `__init__` and defines `async def __call__(self, scope, receive, "
        "send)`. Wrap `send` to see the `http.response.start` message (its `status`, and where to add the "
        "`x-request-id` header); log once after `await self.app(...)` with `logger.info('request', extra={...})`.",
        "Skip non-http scopes (`if scope['type'] != 'http': return await self.app(scope, receive, send)`). "
        "Read the id from `scope['headers']` (`b'x-request-id'`), else `uuid.uuid4().hex`. Put the `await self.app` "
        "in `try/except Exception:` and there log `status=500` with the id, then `raise`. Never log headers.",
    ),
    timeout=90,
)
async def check_access_log(answer: Any, checking: Checking) -> str:
    """Capture the log lines over a set of requests, then time the middleware against none and the reference."""
    checking.require_callable(answer)
    capture = LogCapture(level=logging.DEBUG)  # a secret logged at DEBUG leaks the day someone turns DEBUG on
    app = make_demo_app()
    try:
        app.add_middleware(answer, logger=capture.logger)
    except TypeError as error:
        checking.fail(f"app.add_middleware(YourMiddleware, logger=logger) failed: {error}. "
                      "Accept `app` as the first argument and `logger` as a keyword.")
    token, cookie = "Bearer " + secrets.token_hex(12), "session=" + secrets.token_hex(12)
    client_id = "client-" + secrets.token_hex(6)
    plan = [("GET", "/", {}), ("GET", "/items/7", {"x-request-id": client_id}),
            ("GET", "/items/8", {"authorization": token, "cookie": cookie}), ("GET", "/slow?ms=30", {}),
            ("GET", "/boom", {}), ("GET", "/missing", {}), ("POST", "/items/9", {})]
    responses = await _send_plan(app, plan, checking)
    statuses = [r.status_code for r in responses]
    checking.expect(statuses == [200, 200, 200, 200, 500, 404, 405],
                    f"the app answered {statuses} to {[m + ' ' + u for m, u, _ in plan]}; expected "
                    "[200, 200, 200, 200, 500, 404, 405]: your middleware changed the responses.")
    lines = capture.lines
    checking.record("log_lines", len(lines))
    try:
        records = capture.records()
    except ValueError:
        checking.fail(f"a captured log line is not JSON: {lines[:2]}")
    access = [r for r in records if "path" in r or "status" in r]
    checking.expect(bool(records), f"{len(plan)} requests, and your middleware wrote nothing to the logger it "
                    "was given: call `self.logger.info('request', extra={...})` once per request.")
    checking.expect(bool(access), f"{len(plan)} requests produced {len(records)} lines, none with `path` or "
                    f"`status` as a top-level JSON key. First line: {lines[0][:200]}. Pass the fields with "
                    "`logger.info('request', extra={...})`, not as a JSON string inside the message.")
    checking.expect(len(access) == len(plan),
                    f"{len(plan)} requests produced {len(access)} access-log lines (of {len(records)} lines): "
                    f"expected exactly one per request, including the one that raised (GET /boom). "
                    f"Logged: {[(r.get('method'), r.get('path'), r.get('status')) for r in access]}.")
    for record in access:
        for name, kind in _REQUIRED.items():
            checking.expect(name in record, f"a log line lacks `{name}`: {json.dumps(record)[:200]}")
            checking.expect(isinstance(record[name], kind) and not isinstance(record[name], bool),
                            f"`{name}` is {record[name]!r} ({type(record[name]).__name__}); expected "
                            f"{_type_name(kind)}.")
    by_order = {(m, u.split("?")[0]): rec for (m, u, _), rec in zip(plan, access, strict=True)}
    seen = [(r["method"], r["path"], r["status"]) for r in access]
    expected = [(m, u.split("?")[0], s) for (m, u, _), s in zip(plan, statuses, strict=True)]
    checking.expect(seen == expected, f"logged (method, path, status) {seen}; the requests were {expected}.")
    slow = by_order[("GET", "/slow")]["duration_ms"]
    fast = by_order[("GET", "/")]["duration_ms"]
    checking.record("slow_duration_ms", float(slow))
    checking.expect(25 <= slow <= 5_000, f"/slow?ms=30 sleeps 30 ms but was logged with duration_ms={slow}: "
                    "measure with time.perf_counter() around the call, in milliseconds.")
    checking.expect(0 <= fast < slow, f"GET / logged duration_ms={fast}, not less than /slow's {slow}.")
    ids = [r["request_id"] for r in access]
    checking.expect(by_order[("GET", "/items/7")]["request_id"] == client_id,
                    f"the client sent X-Request-ID: {client_id}; your log line says "
                    f"{by_order[('GET', '/items/7')]['request_id']!r}. Reuse the client's id when it sends one.")
    generated = [i for (_, u, h), i in zip(plan, ids, strict=True) if "x-request-id" not in h]
    checking.expect(all(len(i) >= 8 for i in generated) and len(set(generated)) == len(generated),
                    f"generated request ids {generated} are not unique (at least 8 characters each): use "
                    "uuid.uuid4().hex.")
    for (method, url, _), response, rid in zip(plan, responses, ids, strict=True):
        if response.status_code == 500:
            continue  # the server's error page is sent outside the middleware
        checking.expect(response.headers.get("x-request-id") == rid,
                        f"{method} {url} answered X-Request-ID={response.headers.get('x-request-id')!r}, but "
                        f"the log line says {rid!r}: echo the id in the response headers.")
    everything = capture.stream.getvalue()
    for secret_name, secret in (("Authorization", token.split()[1]), ("Cookie", cookie.split("=")[1])):
        checking.expect(secret not in everything, f"the {secret_name} header's value appears in your log "
                        "output: never log Authorization, cookies or other secrets.")

    overhead = await _overhead_ratio(answer, checking)
    return (f"{len(plan)} requests → {len(access)} JSON lines, ids echoed, 500 logged, no secrets; "
            f"overhead ×{overhead:.2f} of no middleware")


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return error


async def _send_plan(app: Any, plan: list[tuple[str, str, dict[str, str]]], checking: Checking) -> list[httpx.Response]:
    """Send the planned requests in order; a middleware that breaks startup or a request fails clearly."""
    responses: list[httpx.Response] = []
    try:
        async with quiet_client(app) as client:
            for method, url, headers in plan:
                try:
                    responses.append(await client.request(method, url, headers=headers))
                except Exception as error:  # noqa: BLE001 - the middleware broke the request
                    cause = _root_cause(error)
                    if isinstance(cause, NotImplementedError):
                        raise cause from None
                    checking.fail(f"{method} {url} failed inside your middleware: {type(cause).__name__}: {cause}")
    except Fail:
        raise
    except NotImplementedError:
        raise
    except Exception as error:  # noqa: BLE001 - lifespan start-up through the learner's middleware
        cause = _root_cause(error)
        if isinstance(cause, NotImplementedError):
            raise NotImplementedError() from None
        checking.fail(f"the app could not start through your middleware ({type(cause).__name__}: {cause}). "
                      "Pass scopes that are not 'http' (the 'lifespan' one) straight to the app.")
    return responses


async def _overhead_ratio(answer: Any, checking: Checking) -> float:
    """Learner's middleware vs none vs the reference, interleaved; allow 1.5× the reference's overhead + noise."""
    sink = io.StringIO()
    logger = json_logger(f"lab.grader.{uuid.uuid4().hex[:6]}", sink)
    apps = {"none": make_demo_app(), "reference": make_demo_app(), "yours": make_demo_app()}
    apps["reference"].add_middleware(AccessLogMiddleware, logger=logger)
    apps["yours"].add_middleware(answer, logger=logger)
    async with _clients(list(apps.values())) as clients:
        result = await compare({k: (lambda c=c: c.get("/")) for k, c in zip(apps, clients, strict=True)},
                               n=200, warmup=20)
    none = result["none"].median_ms
    ref_over = result["reference"].median_ms - none
    yours_over = result["yours"].median_ms - none
    ratio = result["yours"].median_ms / none
    checking.record("yours_vs_none", ratio)
    checking.record("reference_vs_none", result["reference"].median_ms / none)
    checking.record("overhead_us", yours_over * 1000)
    allowed = 1.5 * max(ref_over, 0.0) + 0.25 * none
    checking.expect(yours_over <= allowed,
                    f"your middleware adds {yours_over * 1000:.0f} µs per request (×{ratio:.2f} of no middleware, "
                    f"{none * 1000:.0f} µs); the reference pure ASGI access log adds {ref_over * 1000:.0f} µs, "
                    f"measured interleaved. Allowed: {allowed * 1000:.0f} µs. `@app.middleware('http')` / "
                    "BaseHTTPMiddleware costs this much: write a pure ASGI middleware.")
    return ratio
