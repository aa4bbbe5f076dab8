"""Lesson 08: the access-log middleware and helpers work as taught; the grader passes right answers, fails wrong ones."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import pytest
from starlette.middleware.base import BaseHTTPMiddleware

from course_lib.grading import grade
from course_lib.lessons.l08_logging import (
    AccessLogMiddleware, LogCapture, add_article_log, make_demo_app, middleware_overhead, per_route, quiet_client,
)

EXERCISE = "08.access-log"


# ---------------------------------------------------------------- answers

def closure_style(app: Any, logger: logging.Logger) -> Any:
    """Right, written another way: a factory returning an ASGI function, ids from the header list."""

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        given = [v.decode() for k, v in scope["headers"] if k.lower() == b"x-request-id"]
        rid = given[0] if given else str(uuid.uuid4())
        box = {"status": 500}
        t0 = time.perf_counter_ns()

        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                box["status"] = message["status"]
                message["headers"] = list(message.get("headers", [])) + [(b"X-Request-ID", rid.encode())]
            await send(message)

        try:
            await app(scope, receive, wrapped)
        finally:
            level = logging.ERROR if box["status"] >= 500 else logging.INFO
            logger.log(level, "access", extra={"method": scope["method"], "path": scope["path"],
                                               "status": box["status"], "request_id": rid,
                                               "duration_ms": (time.perf_counter_ns() - t0) / 1e6})

    return middleware


class HttpStyle(BaseHTTPMiddleware):
    """Wrong: correct lines, but BaseHTTPMiddleware (the `@app.middleware` machinery) costs several times more."""

    def __init__(self, app: Any, logger: logging.Logger) -> None:
        super().__init__(app)
        self.logger = logger

    async def dispatch(self, request: Any, call_next: Any) -> Any:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        t0 = time.perf_counter()
        fields = {"method": request.method, "path": request.url.path, "request_id": rid}
        try:
            response = await call_next(request)
        except Exception:
            self.logger.error("failed", extra={**fields, "status": 500, "duration_ms": (time.perf_counter() - t0) * 1000})
            raise
        response.headers["x-request-id"] = rid
        self.logger.info("ok", extra={**fields, "status": response.status_code,
                                      "duration_ms": (time.perf_counter() - t0) * 1000})
        return response


class LogsHeaders(AccessLogMiddleware):
    """Wrong: also logs every request header, Authorization and cookies included."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.logger.debug("headers", extra={"headers": {k.decode(): v.decode() for k, v in scope["headers"]}})
        await super().__call__(scope, receive, send)


class ArticleStyle:
    """Wrong: the article's idiom, as a pure ASGI class: a JSON string as the message, nothing on failure."""

    def __init__(self, app: Any, logger: logging.Logger) -> None:
        self.app, self.logger = app, logger

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        status = {}

        async def spy(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, spy)
        if scope["type"] == "http":
            self.logger.info(json.dumps({"method": scope["method"], "path": scope["path"], "status": status["code"]}))


class NoLogOnError(AccessLogMiddleware):
    """Wrong: forgets the exception path, so the failed request leaves no line."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), {}

        async def spy(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", b"fixed-id-123")]
            await send(message)

        await self.app(scope, receive, spy)
        self._log(scope, status["code"], start, "fixed-id-123")


class IgnoresClientId(AccessLogMiddleware):
    """Wrong: always generates its own id, even when the client sent X-Request-ID."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"x-request-id"]}
        await super().__call__(scope, receive, send)


# ---------------------------------------------------------------- grader

@pytest.mark.parametrize("answer", [AccessLogMiddleware, closure_style], ids=["reference", "closure-style"])
def test_right_answers_pass(answer: Any) -> None:
    result = grade(EXERCISE, answer)
    assert result.passed, result.message
    assert result.figures["log_lines"] == 7
    assert result.figures["slow_duration_ms"] >= 25


@pytest.mark.parametrize(("answer", "measured"), [
    (HttpStyle, "µs per request"),
    (LogsHeaders, "Authorization header's value appears"),
    (ArticleStyle, "none with `path` or `status` as a top-level JSON key"),
    (NoLogOnError, "including the one that raised"),
    (IgnoresClientId, "Reuse the client's id"),
], ids=["base-http-middleware", "logs-headers", "article-style", "no-log-on-error", "ignores-client-id"])
def test_wrong_answers_fail_and_say_what_was_measured(answer: Any, measured: str) -> None:
    result = grade(EXERCISE, answer)
    assert not result.passed
    assert measured in result.message, result.message
    assert result.hint


def test_base_http_middleware_fails_on_the_measured_overhead() -> None:
    result = grade(EXERCISE, HttpStyle)
    assert result.figures["yours_vs_none"] > result.figures["reference_vs_none"], result.figures


class StubMiddleware:
    """The exercise's starter: passes everything through, logs nothing."""

    def __init__(self, app: Any, logger: logging.Logger) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class NotImplementedMiddleware(StubMiddleware):
    """A stub that raises NotImplementedError, as `# YOUR CODE HERE` would."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError()


def wrong_signature(app: Any) -> Any:
    """Takes no logger."""
    return app


def hangs(app: Any, logger: logging.Logger) -> Any:
    """Blocks forever on the first request."""

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await asyncio.Event().wait()
        await app(scope, receive, send)

    return middleware


@pytest.mark.parametrize(("odd", "said"), [
    (None, "None"), (42, "expected"), (StubMiddleware, "wrote nothing"),
    (NotImplementedMiddleware, "NotImplementedError"), (wrong_signature, "logger"),
])
def test_odd_answers_get_a_clear_message(odd: Any, said: str) -> None:
    result = grade(EXERCISE, odd)
    assert not result.passed and said in result.message, result.message


def test_a_hanging_middleware_is_stopped_by_the_time_limit() -> None:
    started = time.perf_counter()
    result = grade(EXERCISE, hangs, timeout=3)
    assert not result.passed and "did not finish within 3 s" in result.message
    assert time.perf_counter() - started < 3 * 3  # stopped near its limit: the answer itself never returns


# ---------------------------------------------------------------- helpers and lesson claims

def test_article_middleware_loses_the_failed_request() -> None:
    async def run() -> list[int]:
        capture = LogCapture()
        app = make_demo_app()
        add_article_log(app, capture.logger)
        async with quiet_client(app) as client:
            codes = [(await client.get(u)).status_code for u in ("/", "/boom")]
        assert len(capture.lines) == 1 and json.loads(capture.records()[0]["message"])["status"] == 200
        return codes

    assert asyncio.run(run()) == [200, 500]


def test_reference_logs_one_line_per_request_and_echoes_ids() -> None:
    async def run() -> tuple[LogCapture, list[Any]]:
        capture = LogCapture()
        app = make_demo_app()
        app.add_middleware(AccessLogMiddleware, logger=capture.logger)
        async with quiet_client(app) as client:
            responses = [await client.get("/items/3", headers={"X-Request-ID": "abc-123"}),
                         await client.get("/", headers={"X-Request-ID": "bad id with spaces\x7f"}),
                         await client.get("/boom")]
        return capture, responses

    capture, responses = asyncio.run(run())
    records = capture.records()
    assert [r["status"] for r in records] == [200, 200, 500]
    assert records[0]["request_id"] == "abc-123" == responses[0].headers["x-request-id"]
    assert records[1]["request_id"] != "bad id with spaces\x7f" and len(records[1]["request_id"]) == 32
    assert records[2]["level"] == "ERROR" and "RuntimeError" in records[2]["exc_info"]


def test_per_route_groups_ids_and_computes_percentiles() -> None:
    records = [{"method": "GET", "path": f"/items/{i}", "status": 200, "duration_ms": float(i)} for i in range(1, 101)]
    records.append({"method": "GET", "path": "/boom", "status": 500, "duration_ms": 1.0})
    rows = {r["route"]: r for r in per_route(records)}
    assert rows["GET /items/{id}"]["requests"] == 100
    assert rows["GET /items/{id}"]["p95_ms"] == pytest.approx(95.05)
    assert rows["GET /boom"]["errors"] == 1


def test_json_logger_rerun_keeps_one_handler() -> None:
    first, second = LogCapture("lab.test.same"), LogCapture("lab.test.same")
    second.logger.info("hello", extra={"k": 1})
    assert len(second.logger.handlers) == 1 and first.lines == [] and json.loads(second.lines[0])["k"] == 1


def test_pure_asgi_costs_less_than_base_http_middleware() -> None:
    result = asyncio.run(middleware_overhead(n=150))
    asgi = result["pure ASGI, no-op"].median_ms
    http = result["@app.middleware, no-op"].median_ms
    assert http / asgi > 1.2, repr(result)  # measured ~1.8–2× here; ratio with margin, never seconds
