"""Lesson 08: the access-log middleware and helpers work as taught; the grader passes right answers, fails wrong ones."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from answers.l08_logging import AccessLog
from starlette.middleware.base import BaseHTTPMiddleware

from course_lib.grading import grade, hint
from course_lib.lessons.l08_logging import (
    AccessLogMiddleware,
    LogCapture,
    add_article_log,
    make_demo_app,
    middleware_overhead,
    per_route,
    quiet_client,
)

EXERCISE = "08.access-log"


# ---------------------------------------------------------------- answers

SENSITIVE = AccessLog.SENSITIVE  # the words the exercise names, as the reference spells them
_SHARED: dict[str, Any] = {}  # module-global per-request state: what a wrong answer keeps


def redacted(query_string: bytes, secret_names: tuple[str, ...] | None = None) -> str:
    """The query with the values of secret parameters replaced by ***."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    hide = (lambda k: k in secret_names) if secret_names is not None else (lambda k: any(w in k.lower() for w in SENSITIVE))
    return urlencode([(k, "***" if hide(k) else v) for k, v in pairs], safe="*")


class Reference:
    """A right answer, with hooks the wrong answers below override one at a time."""

    def __init__(self, app: Any, logger: logging.Logger) -> None:
        self.app = app
        self.logger = logger

    def query(self, scope: Any) -> str:
        return redacted(scope.get("query_string", b""))

    def request_id(self, scope: Any) -> str:
        return dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex

    def fields(self, scope: Any) -> dict[str, Any]:
        return {"method": scope["method"], "path": scope["path"], "query": self.query(scope)}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid, state = self.request_id(scope), {"status": 500, "bytes": 0, "start": time.perf_counter()}

        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            level = logging.ERROR if state["status"] >= 500 else logging.INFO
            self.logger.log(level, "request", extra={
                **self.fields(scope), "status": state["status"], "request_id": rid, "bytes": state["bytes"],
                "duration_ms": (time.perf_counter() - state["start"]) * 1000})


def closure_style(app: Any, logger: logging.Logger) -> Any:
    """Right, written another way: a factory returning an ASGI function, a child logger, ids from the header list."""
    log = logger.getChild("http")

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        given = [v.decode() for k, v in scope["headers"] if k.lower() == b"x-request-id"]
        rid = given[0] if given else str(uuid.uuid4())
        box = {"status": 500, "sent": 0}
        t0 = time.perf_counter_ns()

        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                box["status"] = message["status"]
                message["headers"] = list(message.get("headers", [])) + [(b"X-Request-ID", rid.encode())]
            if message["type"] == "http.response.body":
                box["sent"] += len(message.get("body") or b"")
            await send(message)

        try:
            await app(scope, receive, wrapped)
        finally:
            level = logging.ERROR if box["status"] >= 500 else logging.INFO
            log.log(level, "access", extra={"method": scope["method"], "path": scope["path"],
                                            "query": redacted(scope["query_string"]), "status": box["status"],
                                            "request_id": rid, "bytes": box["sent"],
                                            "duration_ms": (time.perf_counter_ns() - t0) / 1e6})

    return middleware


@dataclass
class _Exchange:
    """One request's state, in an object of its own."""

    request_id: str
    start: float = field(default_factory=time.perf_counter)
    status: int = 500
    sent: int = 0


class ExchangeObject(Reference):
    """Right, written another way: per-request state in a small object created per call, logged with a dict."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ex = _Exchange(self.request_id(scope))

        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                ex.status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", ex.request_id.encode())]}
            elif message["type"] == "http.response.body":
                ex.sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        except BaseException:
            ex.status = 500
            self.logger.exception("failed", extra={**self.fields(scope), "status": 500, "bytes": ex.sent,
                                                   "request_id": ex.request_id,
                                                   "duration_ms": (time.perf_counter() - ex.start) * 1e3})
            raise
        self.logger.info("ok", extra={**self.fields(scope), "status": ex.status, "bytes": ex.sent,
                                      "request_id": ex.request_id, "duration_ms": (time.perf_counter() - ex.start) * 1e3})


class StateOnSelf(Reference):
    """Wrong: keeps the request's id, status, start and byte count on `self` (shared by every request)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.rid, self.status, self.sent, self.start = self.request_id(scope), 500, 0, time.perf_counter()

        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", self.rid.encode())]
            elif message["type"] == "http.response.body":
                self.sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            self.logger.info("request", extra={**self.fields(scope), "status": self.status, "bytes": self.sent,
                                               "request_id": self.rid,
                                               "duration_ms": (time.perf_counter() - self.start) * 1000})


class StateInGlobals(Reference):
    """Wrong: the same, with the id in a module-level dict (a "current request" global)."""

    def request_id(self, scope: Any) -> str:
        _SHARED["rid"] = super().request_id(scope)
        return _SHARED["rid"]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.request_id(scope)
        state = {"status": 500, "bytes": 0, "start": time.perf_counter()}

        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", _SHARED["rid"].encode())]
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            self.logger.info("request", extra={**self.fields(scope), "status": state["status"],
                                               "bytes": state["bytes"], "request_id": _SHARED["rid"],
                                               "duration_ms": (time.perf_counter() - state["start"]) * 1000})


_STATE: ContextVar[dict[str, Any]] = ContextVar("access_state", default={})  # noqa: B039 - the wrong answer: one default dict, shared by all
_LOCAL = threading.local()


class ContextVarDefaultDict(Reference):
    """Wrong: a ContextVar whose mutable default is one dict, so every request mutates the same state."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = _STATE.get()
        state.update(rid=self.request_id(scope), status=500, sent=0, start=time.perf_counter())

        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", state["rid"].encode())]
            elif message["type"] == "http.response.body":
                state["sent"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            self.logger.info("request", extra={**self.fields(scope), "status": state["status"], "bytes": state["sent"],
                                               "request_id": state["rid"],
                                               "duration_ms": (time.perf_counter() - state["start"]) * 1000})


class ThreadLocalState(Reference):
    """Wrong: per-request state in a threading.local, but every request runs on the event loop's one thread."""

    def request_id(self, scope: Any) -> str:
        _LOCAL.rid = super().request_id(scope)
        return _LOCAL.rid

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.request_id(scope)
        state = {"status": 500, "bytes": 0, "start": time.perf_counter()}

        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", _LOCAL.rid.encode())]
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            self.logger.info("request", extra={**self.fields(scope), "status": state["status"],
                                               "bytes": state["bytes"], "request_id": _LOCAL.rid,
                                               "duration_ms": (time.perf_counter() - state["start"]) * 1000})


class LogsOtherHeaders(Reference):
    """Wrong: skips Authorization and Cookie, but logs every other header (API keys, proxy credentials)."""

    def fields(self, scope: Any) -> dict[str, Any]:
        kept = {k.decode(): v.decode() for k, v in scope["headers"] if k not in (b"authorization", b"cookie")}
        return {**super().fields(scope), "headers": kept}


class LogsRawQuery(Reference):
    """Wrong: logs the query string as received, tokens included."""

    def query(self, scope: Any) -> str:
        return scope["query_string"].decode()


class RedactsFixedNames(Reference):
    """Wrong: redacts only parameters named exactly `token` and `api_key`."""

    def query(self, scope: Any) -> str:
        return redacted(scope["query_string"], ("token", "api_key"))


class CaseSensitiveRedaction(Reference):
    """Wrong (the rule says any case): matches the words in the name as written, so apiKey and AUTH_TOKEN leak."""

    def query(self, scope: Any) -> str:
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        return urlencode([(k, "***" if any(w in k for w in SENSITIVE) else v) for k, v in pairs], safe="*")


class PartialMask(Reference):
    """Wrong (the rule says the value becomes ***): keeps each secret's first and last 4 characters."""

    def query(self, scope: Any) -> str:
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        return urlencode([(k, v[:4] + "***" + v[-4:] if any(w in k.lower() for w in SENSITIVE) else v)
                          for k, v in pairs], safe="*")


class KeyedByPath(Reference):
    """Wrong: each request's state in a dict on self keyed by its path; two requests in flight to one page share it."""

    def __init__(self, app: Any, logger: logging.Logger) -> None:
        super().__init__(app, logger)
        self.inflight: dict[str, dict[str, Any]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = scope["path"]
        self.inflight[key] = {"rid": self.request_id(scope), "status": 500, "bytes": 0, "start": time.perf_counter()}

        async def wrapped(message: Any) -> None:
            state = self.inflight[key]
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", state["rid"].encode())]
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            state = self.inflight.pop(key, None) or {"rid": "?", "status": 500, "bytes": 0, "start": time.perf_counter()}
            self.logger.info("request", extra={
                **self.fields(scope), "status": state["status"], "request_id": state["rid"], "bytes": state["bytes"],
                "duration_ms": (time.perf_counter() - state["start"]) * 1000})


class DropsQuery(Reference):
    """Wrong: never leaks, because it never logs the query at all."""

    def query(self, scope: Any) -> str:
        return ""


class LogsBodyAtDebug(Reference):
    """Wrong: logs the request body at DEBUG (a password in a POST)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def spy() -> Any:
            message = await receive()
            if message.get("body"):
                self.logger.debug("body", extra={"body": message["body"].decode()})
            return message

        await super().__call__(scope, spy, send)


class LogsScopeElsewhere(Reference):
    """Wrong: debug-logs the whole scope to another logger (its headers carry the secrets)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            logging.getLogger("myapp.debug").warning("scope %s", scope)
        await super().__call__(scope, receive, send)


class TimeToFirstByte(Reference):
    """Wrong: stops the clock and logs at `http.response.start`, before a streamed body is sent."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid, start, done = self.request_id(scope), time.perf_counter(), []

        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                length = int(dict(message["headers"]).get(b"content-length", b"0"))
                self.logger.info("request", extra={**self.fields(scope), "status": message["status"], "bytes": length,
                                                   "request_id": rid, "duration_ms": (time.perf_counter() - start) * 1000})
                done.append(1)
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        except Exception:
            if not done:
                self.logger.error("request", extra={**self.fields(scope), "status": 500, "bytes": 0,
                                                    "request_id": rid, "duration_ms": 0.0})
            raise


class HttpStyle(BaseHTTPMiddleware):
    """Wrong: correct lines, but BaseHTTPMiddleware (the `@app.middleware` machinery) costs several times more."""

    def __init__(self, app: Any, logger: logging.Logger) -> None:
        super().__init__(app)
        self.logger = logger

    async def dispatch(self, request: Any, call_next: Any) -> Any:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        t0 = time.perf_counter()
        fields = {"method": request.method, "path": request.url.path, "request_id": rid,
                  "query": redacted(request.url.query.encode())}
        try:
            response = await call_next(request)
        except Exception:
            self.logger.error("failed", extra={**fields, "status": 500, "bytes": 0,
                                               "duration_ms": (time.perf_counter() - t0) * 1000})
            raise
        response.headers["x-request-id"] = rid
        inner = response.body_iterator

        async def counted() -> Any:
            sent = 0
            async for chunk in inner:
                sent += len(chunk)
                yield chunk
            self.logger.info("ok", extra={**fields, "status": response.status_code, "bytes": sent,
                                          "duration_ms": (time.perf_counter() - t0) * 1000})

        response.body_iterator = counted()
        return response


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


class NoLogOnError(Reference):
    """Wrong: forgets the exception path, so the failed request leaves no line."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, rid = time.perf_counter(), {"sent": 0}, self.request_id(scope)

        async def spy(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                status["sent"] += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, spy)
        self.logger.info("request", extra={**self.fields(scope), "status": status["code"], "bytes": status["sent"],
                                           "request_id": rid, "duration_ms": (time.perf_counter() - start) * 1000})


class IgnoresClientId(Reference):
    """Wrong: always generates its own id, even when the client sent X-Request-ID."""

    def request_id(self, scope: Any) -> str:
        return uuid.uuid4().hex


class RejectsArguments:
    """Wrong: its __init__ takes no logger."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class SwallowsLifespan(Reference):
    """Wrong: returns on a non-http scope instead of passing it on."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await super().__call__(scope, receive, send)


class WaitsOnLifespan(Reference):
    """Wrong: waits for a request body on every scope, the lifespan one too."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await asyncio.Event().wait()
        await super().__call__(scope, receive, send)


class SyncCall(Reference):
    """Wrong: `def __call__`, not `async def`."""

    def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # type: ignore[override]
        return None


class CrashesOnLifespan(Reference):
    """Wrong: reads the method of every scope, the lifespan one too."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope["method"].upper()
        await super().__call__(scope, receive, send)


# ---------------------------------------------------------------- grader

@pytest.mark.parametrize("answer", [lambda: AccessLog, lambda: Reference, lambda: closure_style, lambda: ExchangeObject],
                         ids=["solution", "class-with-hooks", "closure-style", "per-request-object"])
def test_right_answers_pass(answer: Any) -> None:
    result = grade(EXERCISE, answer())
    assert result.passed, result.message
    assert result.figures["log_lines"] == 9 and result.figures["concurrent_requests"] == 30
    assert result.figures["slow_duration_ms"] >= 25 and result.figures["secrets_checked"] == 7


@pytest.mark.parametrize(("answer", "measured"), [
    (AccessLogMiddleware, "a log line lacks `query`"),
    (StateOnSelf, "with 30 requests in flight at once"),
    (StateInGlobals, "with 30 requests in flight at once"),
    (ContextVarDefaultDict, "with 30 requests in flight at once"),
    (ThreadLocalState, "with 30 requests in flight at once"),
    (LogsOtherHeaders, "header appears in what your middleware logged"),
    (LogsRawQuery, "query parameter appears in what your middleware logged"),
    (RedactsFixedNames, "query parameter appears in what your middleware logged"),
    (CaseSensitiveRedaction, "query parameter appears in what your middleware logged"),
    (PartialMask, "its whole value becomes `***`"),
    (KeyedByPath, "in a dict keyed by path or URL"),
    (DropsQuery, "keep the parameters that are not secrets"),
    (LogsBodyAtDebug, "request body appears in what your middleware logged"),
    (LogsScopeElsewhere, "appears in what your middleware logged (searched: every line, and every field of every "
                         "log record, from any logger)"),
    (TimeToFirstByte, "GET /stream sends its body in 4 chunks"),
    (HttpStyle, "µs per request"),
    (ArticleStyle, "none with `path` or `status` as a top-level JSON key"),
    (NoLogOnError, "including the one that raised"),
    (IgnoresClientId, "Reuse the client's id"),
    (RejectsArguments, "`YourMiddleware(app, logger=logger)`, raised TypeError"),
    (SwallowsLifespan, "did not pass it to the app"),
    (CrashesOnLifespan, "given a 'lifespan' scope (no method, path or headers), your middleware raised KeyError"),
    (WaitsOnLifespan, "your middleware had not returned after 5 s"),
    (SyncCall, "returned None instead of a coroutine"),
], ids=["lesson-class-as-printed", "state-on-self", "state-in-globals", "contextvar-default-dict", "thread-local", "logs-other-headers", "logs-raw-query",
        "redacts-fixed-names", "case-sensitive-redaction", "partial-mask", "keyed-by-path", "drops-query", "logs-body-at-debug", "logs-scope-elsewhere", "time-to-first-byte",
        "base-http-middleware", "article-style", "no-log-on-error", "ignores-client-id", "rejects-arguments",
        "swallows-lifespan", "crashes-on-lifespan", "waits-on-lifespan", "sync-call"])
def test_wrong_answers_fail_and_say_what_was_measured(answer: Any, measured: str) -> None:
    result = grade(EXERCISE, answer)
    assert not result.passed
    assert measured in result.message, result.message
    assert result.hint


def test_state_on_self_is_told_why() -> None:
    """The concurrency failure names the cause (state shared between requests), not only the symptom."""
    result = grade(EXERCISE, StateOnSelf)
    assert "not on `self`, in module globals" in result.message, result.message


def test_base_http_middleware_fails_on_the_measured_overhead() -> None:
    result = grade(EXERCISE, HttpStyle)
    assert result.figures["yours_vs_none"] > result.figures["reference_vs_none"], result.figures


def test_hints_progress_and_never_give_the_answer() -> None:
    """Three levels: what to look at, which tools, a shape with gaps (no complete middleware)."""
    hints = [hint(EXERCISE, level) for level in (1, 2, 3)]
    assert len(set(hints)) == 3
    assert "30 requests in flight" in hints[0] and "parse_qsl" in hints[1] and "…" in hints[2]
    assert all("nonlocal status, sent\n" not in h for h in hints)


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
    (lambda app, logger: None, "is not an ASGI app"),
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


def test_grading_leaves_the_learners_logging_as_it_was() -> None:
    """A root handler of the learner's (basicConfig) sees nothing below its old threshold; levels are restored."""
    import io

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        assert grade(EXERCISE, Reference, record=False).passed
        assert root.level == logging.WARNING and handler.level == logging.NOTSET
        assert "DEBUG" not in stream.getvalue() and "HTTP Request" not in stream.getvalue(), stream.getvalue()[:300]
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


# ---------------------------------------------------------------- what the lesson shows (H11)

def test_call_asgi_answers_and_leaves_no_task_behind() -> None:
    """The direct call gets the status, and BaseHTTPMiddleware's tasks end inside the call that made them."""
    import io

    from course_lib.lessons.l08_logging import _alone_variants, call_asgi

    async def run() -> list[tuple[int, int]]:
        seen = []
        for app in _alone_variants(io.StringIO()).values():
            before = len(asyncio.all_tasks())
            seen.append((await call_asgi(app), len(asyncio.all_tasks()) - before))
        return seen

    assert asyncio.run(run()) == [(200, 0)] * 5


def test_the_mechanism_costs_at_least_5x_where_it_lives() -> None:
    """Alone (no client), a do-nothing @app.middleware adds far more than 5× what a pure ASGI one adds."""
    from course_lib.lessons.l08_logging import NOISE_FLOOR_US, middleware_alone

    result = asyncio.run(middleware_alone(n=150))
    none = result["no middleware"].median_ms
    http = (result["@app.middleware, no-op"].median_ms - none) * 1000
    asgi = (result["pure ASGI, no-op"].median_ms - none) * 1000
    assert http > 5 * max(asgi, NOISE_FLOOR_US), repr(result)  # measured ~140 µs against 0 ± 2 µs here


def test_bench_names_its_level_and_holds_the_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim row is measured on the middleware alone, says so, names its level and has a goal."""
    from course_lib.lessons import l08_logging as lesson

    real = lesson.middleware_costs
    monkeypatch.setattr(lesson, "middleware_costs", lambda n=300: real(120))
    rows = lesson.bench()
    claim = rows[0]
    assert claim.goal == "≥ 5×" and claim.level == "endpoint" and "alone, no client" in claim.effect
    assert claim.met is True, claim
    assert all(row.level == "endpoint" for row in rows) and all(row.goal == "" for row in rows[1:])


def test_a_failed_request_is_shown_short_and_without_this_machines_paths() -> None:
    """The /boom record: its traceback cut to the last frame, no venv or checkout path, the error kept."""
    import sys

    from course_lib.lessons.l08_logging import _REPO, show_record, show_records

    capture = LogCapture()
    app = make_demo_app()
    app.add_middleware(AccessLogMiddleware, logger=capture.logger)

    async def run() -> None:
        async with quiet_client(app) as client:
            await client.get("/boom")

    asyncio.run(run())
    record = capture.records()[0]
    assert record["exc_info"].count("File ") > 3  # the raw traceback is long
    shown = show_record(record)
    for text in (shown._repr_html_(), repr(shown)):
        assert sys.prefix not in text and _REPO not in text and "site-packages" not in text
        assert "RuntimeError: the endpoint failed" in text and text.count("File ") == 1
        assert "frame(s) of the server and framework" in text
    table = show_records(capture.records())
    assert "<table>" in table._repr_html_() and "/boom" in repr(table) and "500" in repr(table)


def test_prose_helpers_use_the_figures_they_are_given() -> None:
    """The Markdown under the tables is built from the measured figures, not typed in."""
    from course_lib.lessons.l08_logging import route_table, server_story, slowest_route_story

    routes = [{"route": "GET /slow", "requests": 3, "p50_ms": 20.0, "p95_ms": 38.25, "max_ms": 40.0, "errors": 0},
              {"route": "GET /", "requests": 5, "p50_ms": 0.5, "p95_ms": 0.75, "max_ms": 1.0, "errors": 1}]
    assert "| `GET /slow` | 3 | 20.00 | 38.25 | 40.00 | 0 |" in route_table(routes).data
    assert "**38.2 ms**" in slowest_route_story(routes).data and "**0.75 ms**" in slowest_route_story(routes).data
    from course_lib.lessons.l08_logging import ServedStyles

    styles = ServedStyles({"no middleware": [1000, 1000, 1000], "pure ASGI log": [900, 880, 920],
                           "@app.middleware log": [500, 450, 520]},
                          {"no middleware": 3000, "pure ASGI log": 700, "@app.middleware log": 700})
    story = server_story(styles, 1234, 2).data
    assert "median of 3 rounds" in story and "**1,000** req/s bare" in story
    assert "90% of bare within a round; rounds ranged 88%–92%" in story and "(50%; 45%–52%)" in story
    assert "**1,234**" in story and "**1,400** requests" in story


def test_served_throughput_is_a_median_of_paired_rounds_not_the_best() -> None:
    """One lucky round (another program paused) must not become the headline, as a best-of-N would make it."""
    from course_lib.lessons.l08_logging import ServedStyles

    styles = ServedStyles({"no middleware": [1000, 1010, 990, 1000, 3000], "pure ASGI log": [900, 900, 900, 880, 950],
                           "@app.middleware log": [500, 505, 495, 500, 510]}, {})
    assert styles.median() == {"no middleware": 1000, "pure ASGI log": 900, "@app.middleware log": 500}
    ratio, low, high = styles.ratio("pure ASGI log")
    assert ratio == pytest.approx(900 / 1010) and low == pytest.approx(950 / 3000) and high == pytest.approx(900 / 990)


def test_served_styles_loads_each_mount_in_every_round_under_a_real_server() -> None:
    from course_lib.lessons.l08_logging import STYLE_PATHS, served_styles
    from course_lib.servers import serve

    with serve("course_lib.lessons.l08_logging:styles_app", ready_path="/bare/", announce=False) as server:
        styles = asyncio.run(served_styles(server.url, rounds=3, seconds=0.3))
        logged = [line for line in server.log().splitlines() if line.startswith("{")]
    assert set(styles.rounds) == set(STYLE_PATHS) and all(len(v) == 3 and min(v) > 0 for v in styles.rounds.values())
    assert len(logged) >= styles.completed["pure ASGI log"] + styles.completed["@app.middleware log"] > 0


def test_the_middleware_source_is_a_code_block() -> None:
    """The lesson shows AccessLogMiddleware as a python code block, not printed text."""
    from course_lib.lessons.l08_logging import source_listing

    listing = source_listing(AccessLogMiddleware).data
    assert listing.startswith("```python\nclass AccessLogMiddleware") and listing.endswith("```")
