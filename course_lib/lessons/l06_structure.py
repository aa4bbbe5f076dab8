"""Lesson 06 (structure): a tangled single-file app, the blog_app package it grows into, /health probes,
a database that hangs on demand, the graded refactor, and the benchmark rows."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import gc
import itertools
import logging
import os
import re
import secrets
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..bench_rows import BenchRow
from ..client import app_client
from ..db import DemoDB, Post, User, make_demo_db, thread_safe_connect_args
from ..events import listening
from ..grading import Checking, exercise
from .blog_app.config import Settings
from .blog_app.main import create_app

PACKAGE = Path(__file__).parent / "blog_app"

__all__ = [
    "make_tangled_app", "create_app", "Settings", "PACKAGE", "layout", "probe_paths", "answers",
    "same_answers", "unreachable_url", "hanging_database", "time_health", "Probe", "show_server_log",
    "source_listing", "layout_table", "make_eager_app", "eager_served", "Supervised", "restart_policy",
    "record_response_end", "deadline_story", "probe_cost_story",
    "run_package_tests",
]


def make_tangled_app(database_url: str) -> FastAPI:
    """The 'before' app: engine made on the spot, SQL and sessions inside handlers, no /health, no seams."""
    engine = create_engine(database_url, connect_args=thread_safe_connect_args(database_url))
    app = FastAPI(title="Tangled blog")

    @app.get("/users")
    def users(limit: Annotated[int, Query(ge=1, le=100)] = 20, offset: Annotated[int, Query(ge=0)] = 0) -> Any:
        with Session(engine) as session:
            rows = session.scalars(select(User).order_by(User.id).limit(limit).offset(offset))
            return [{"id": u.id, "name": u.name} for u in rows]

    @app.get("/users/{user_id}")
    def user(user_id: int) -> Any:
        with Session(engine) as session:
            u = session.get(User, user_id)
            if u is None:
                raise HTTPException(status_code=404, detail="user not found")
            count = session.scalar(select(func.count()).where(Post.user_id == user_id))
            return {"id": u.id, "name": u.name, "country": u.country, "post_count": count}

    @app.get("/users/{user_id}/posts")
    def posts(user_id: int) -> Any:
        with Session(engine) as session:
            if session.get(User, user_id) is None:
                raise HTTPException(status_code=404, detail="user not found")
            rows = session.scalars(select(Post).where(Post.user_id == user_id).order_by(Post.id))
            return [{"id": p.id, "title": p.title, "likes": p.likes} for p in rows]

    return app


def layout(package: Path = PACKAGE) -> str:
    """The package's files as a tree, each with the first line of its docstring (read from the files)."""
    lines = [f"{package.name}/"]
    for path in sorted(package.rglob("*.py"), key=lambda p: (p.parent != package, str(p))):
        doc = (ast.get_docstring(ast.parse(path.read_text())) or "").splitlines()
        rel = path.relative_to(package)
        lines.append(f"  {str(rel):<26} {doc[0] if doc else ''}")
    return "\n".join(lines)


def probe_paths(users: int) -> list[str]:
    """The requests that pin down the blog API's behaviour on a database of `users` users."""
    return ["/users", "/users?limit=5&offset=3", f"/users?limit=100&offset={max(users - 2, 0)}",
            "/users?limit=101", "/users?limit=0", "/users?offset=-1", "/users/1", f"/users/{users}",
            f"/users/{users + 1}", "/users/abc", "/users/2/posts", f"/users/{users + 1}/posts"]


@dataclass
class Probe:
    """One request's outcome: status and, for 200/404, the JSON body (422 bodies differ in wording only)."""

    path: str
    status: int
    body: Any

    def __repr__(self) -> str:
        return f"{self.path:<28} {self.status}"


async def answers(app: Any, paths: list[str]) -> list[Probe]:
    """Send each path to `app` in-process and record what came back."""
    found = []
    async with app_client(app) as client:
        for path in paths:
            response = await client.get(path)
            body = response.json() if response.status_code in (200, 404) else None
            found.append(Probe(path, response.status_code, body))
    return found


def same_answers(before: list[Probe], after: list[Probe]) -> list[str]:
    """The differences between two runs of the same probes, one line each (empty: identical)."""
    diffs = []
    for a, b in zip(before, after, strict=True):
        if a.status != b.status:
            diffs.append(f"GET {a.path}: status {b.status}, expected {a.status}")
        elif a.body != b.body:
            diffs.append(f"GET {a.path}: body {str(b.body)[:160]}, expected {str(a.body)[:160]}")
    return diffs


def _leaks(body: str) -> list[str]:
    """The database details a /health body shows: the URL's path, the driver, the exception."""
    return [s for s in ("nonexistent", "sqlite", "OperationalError", "unable to open") if s in body]


def unreachable_url(tag: str = "down") -> str:
    """A SQLite URL in a folder that does not exist: every connection attempt fails at once."""
    return f"sqlite:////nonexistent-{tag}-folder/blog.sqlite3"


@contextmanager
def hanging_database(db: DemoDB, seconds: float) -> Iterator[None]:
    """Make every statement on `db`'s file, from any engine (the app's own too), wait `seconds` first."""
    target = str(db.path)

    def stall(conn: Any, *_: Any) -> None:
        if conn.engine.url.database == target:
            time.sleep(seconds)

    with listening(Engine, "before_cursor_execute", stall):
        yield


async def time_health(app: Any, path: str = "/health") -> tuple[int, float]:
    """Start `app`, GET `path` once; return (status, seconds the answer took)."""
    async with app_client(app) as client:
        return await _timed_get(client, path)


async def _timed_get(client: Any, path: str) -> tuple[int, float]:
    """GET `path` once on a started app's client: (status, seconds). Like timeit, the garbage collector is paused
    during the request: a full collection of a kernel's heap took 0.5 s here, under load, inside one of ten."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        response = await client.get(path)
        return response.status_code, time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()


_IN_FLIGHT: ContextVar[str | None] = ContextVar("lab06_in_flight", default=None)  # the request a session serves


async def _concurrent_answers(app: Any, paths: list[str], tracker: _SessionTracker) -> list[Probe]:
    """Every path once, all in flight at once (as a served app's thread pool runs sync routes); no more requests
    than SQLAlchemy's default pool holds (5 + 10), so a right answer never waits for a connection. A request that
    raised is a Probe with status 500 and the error as its body. `tracker` learns which request used each Session
    (the request's label travels in a ContextVar, which Starlette copies into the thread pool)."""
    numbers = itertools.count(1)

    async def labelling(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        query = scope.get("query_string", b"").decode(errors="replace")
        label = f"GET {scope['path']}{'?' + query if query else ''} (request {next(numbers)})"
        token = _IN_FLIGHT.set(label)
        try:
            await app(scope, receive, send)
        finally:
            _IN_FLIGHT.reset(token)
            tracker.ended(label)

    async with app_client(labelling) as client:
        responses = await asyncio.gather(*(client.get(path) for path in paths), return_exceptions=True)
    return [Probe(path, 500, f"{type(r).__name__}: {str(r)[:120]}") if isinstance(r, BaseException) else
            Probe(path, r.status_code, r.json() if r.status_code in (200, 404) else None)
            for path, r in zip(paths, responses, strict=True)]


def show_server_log() -> None:
    """Print blog_app's log records to stdout as `server log: …` (once, however often it is called)."""
    logger = logging.getLogger("blog_app")
    if not any(getattr(h, "lab_stdout", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("server log: %(message)s"))
        handler.lab_stdout = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


def run_package_tests() -> tuple[str, int]:
    """Run blog_app's own tests/ under pytest in a subprocess; return (summary like '4 passed', exit code)."""
    command = [sys.executable, "-m", "pytest", "-q", "--color=no", "-o", "addopts=", "-p", "no:cacheprovider",
               "-p", "anyio.pytest_plugin", "-p", "pytest_timeout",
               "--confcutdir", str(PACKAGE),  # the package's own conftest only, never the course's around it
               str(PACKAGE / "tests")]
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # skip nbval & co.: starts faster
    run = subprocess.run(command, cwd=PACKAGE.parents[2], capture_output=True, text=True, timeout=300, env=env)
    lines = run.stdout.strip().splitlines()
    return (lines[-1].split(" in ")[0] if lines else run.stderr[-300:]), run.returncode


# ---------------------------------------------------------------- showing code, layouts and figures

def source_listing(obj: Any) -> Any:
    """`obj`'s source as a highlighted code block (long lines scroll instead of wrapping mid-word)."""
    import inspect

    from IPython.display import Markdown

    return Markdown(f"```python\n{inspect.getsource(obj)}```")


def layout_table(package: Path = PACKAGE) -> Any:
    """The package's files as a Markdown table, each with its docstring's first sentence (read from the files)."""
    from IPython.display import Markdown

    rows = ["| file | its job (its docstring's first sentence) |", "|---|---|"]
    for path in sorted(package.rglob("*.py"), key=lambda p: (p.parent != package, str(p))):
        paragraph = " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split("\n\n")[0].split())
        first = re.split(r"(?<=\.)\s", paragraph, maxsplit=1)[0]
        rows.append(f"| `{package.name}/{path.relative_to(package)}` | {first} |")
    return Markdown("\n".join(rows))


def make_eager_app(database_url: str) -> FastAPI:
    """The blog app plus a warm-up query in its lifespan: the startup work this lesson advises against."""
    from contextlib import asynccontextmanager

    from sqlalchemy import text

    app = create_app(Settings(database_url=database_url))
    package_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        async with package_lifespan(app) as state:
            with app.state.engine.connect() as connection:
                connection.execute(text("SELECT 1"))  # warm the pool: fails when the database is down
            yield state

    app.router.lifespan_context = lifespan
    return app


def eager_served() -> FastAPI:
    """`make_eager_app` for a real server (`uvicorn ... --factory`), its database URL from BLOG_DATABASE_URL."""
    return make_eager_app(os.environ["BLOG_DATABASE_URL"])


@dataclass
class Supervised:
    """What a restart policy saw for one app within its window: each exit code, and whether the app stayed up."""

    label: str
    exits: list[int]
    seconds: float
    live: int | None = None  # /health/live's status once it stayed up
    ready: int | None = None  # /health's status then


def restart_policy(label: str, app_path: str, env: Mapping[str, str], *, window_s: float = 6.0,
                   factory: bool = False) -> Supervised:
    """Run `app_path` under uvicorn as a restart policy would (start it again whenever it exits) for `window_s`
    seconds, then stop it; record each exit code, and the probes' statuses if it stayed up."""
    import httpx

    from ..servers import free_port

    started = time.monotonic()
    exits: list[int] = []
    outcome = Supervised(label, exits, 0.0)
    while time.monotonic() - started < window_s:
        port = free_port()
        command = [sys.executable, "-m", "uvicorn", app_path, "--port", str(port), "--log-level", "critical",
                   *(["--factory"] if factory else [])]
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            while process.poll() is None and time.monotonic() - started < window_s:
                try:
                    live = httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=0.5).status_code
                    ready = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).status_code
                    outcome.live, outcome.ready = live, ready
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(10)
            else:
                exits.append(process.returncode)
    outcome.seconds = time.monotonic() - started
    return outcome


def record_response_end(app: Any, events: list[str]) -> Any:
    """`app` wrapped so that the moment its response's last body chunk is handed to the server joins `events`."""
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        async def watched_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                events.append("response sent to the client")

        await app(scope, receive, watched_send if scope["type"] == "http" else send)

    return wrapped


def deadline_story(detect: Mapping[float | None, tuple[int, float]], deadline: float = 0.25) -> Any:
    """The prose under the hung-database chart: the probe with a deadline against the one without."""
    from IPython.display import Markdown

    short, none = detect[deadline], detect[None]
    fine = ", and said the database was fine although every query stalled" if none[0] == 200 else ""
    return Markdown(
        f"With a {deadline} s deadline the probe answered **{short[0]}** after **{short[1]:.2f} s**; with no "
        f"deadline it answered **{none[0]}** after **{none[1]:.2f} s**, **{none[1] / short[1]:.1f}×** later{fine}. "
        "The answer time follows the deadline, so choose one below your load balancer's probe timeout (often 1 s).")


def probe_cost_story(probes: Any) -> Any:
    """The prose under the probe-cost comparison."""
    from IPython.display import Markdown

    return Markdown(
        f"Readiness took **{probes['readiness /health'].median_ms:.2f} ms** (median), liveness "
        f"**{probes['liveness /health/live'].median_ms:.2f} ms**: **{probes.ratio:.1f}×**. Cheap at one probe "
        "every few seconds; keep it that way (no heavy queries, no calls to other services' readiness).")


# ---------------------------------------------------------------- exercise 06.refactor

HANG_S = 3.0  # the reference answers in ~0.5 s; under half of this (1.5 s) leaves 1 s for a loaded machine


def _parts(answer: Any, checking: Checking) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Pull create_app and get_db out of a dict (or an object with those attributes)."""
    get = answer.get if isinstance(answer, Mapping) else lambda name: getattr(answer, name, None)
    factory, get_db = get("create_app"), get("get_db")
    checking.expect(factory is not None and get_db is not None,
                    f"expected {{'create_app': create_app, 'get_db': get_db}}, got {str(answer)[:120]}")
    checking.require_callable(factory, "create_app, a function create_app(database_url) returning the app")
    checking.require_callable(get_db, "get_db, the yield dependency your routes use for their session")
    assert factory is not None and get_db is not None  # checked above; for the type checker
    return factory, get_db


@exercise(
    "06.refactor",
    title="Untangle the app: router, service, yield dependency, /health",
    expects="{'create_app': create_app, 'get_db': get_db}: create_app(database_url) returns a FastAPI app "
            "whose routes get their Session from the yield dependency get_db",
    hints=(
        "Look at where each handler of the tangled app gets its database from: the grader replaces get_db "
        "with a session on another database and breaks your app's own one, then calls every route. A route "
        "that opens a session itself (or through a shared engine) is still tied to the real database. "
        "/health is the one route that should look at the app's own database, with a deadline.",
        "The tools: a `yield` dependency that takes `request: Request` and opens a session from a factory the "
        "lifespan keeps on `request.app.state` (a new one per request, closed after it); routes declare "
        "`Annotated[Session, Depends(get_db)]`; readiness runs `SELECT 1` in a thread "
        "(`asyncio.to_thread`) inside `asyncio.wait_for(..., timeout)` and answers `JSONResponse(..., "
        "status_code=503)` when that fails.",
        "Shape: `def get_db(request: Request): with request.app.state.… () as session: yield session`. "
        "Lifespan: `engine = create_engine(database_url, …)`; `app.state.… = sessionmaker(…)`; `yield`; "
        "`engine.dispose()`. /health: `try: await asyncio.wait_for(asyncio.to_thread(…), …)` / "
        "`except Exception: return JSONResponse({…}, status_code=…)` (no error text in the body).",
    ),
    timeout=120,
)
async def check_refactor(answer: Any, checking: Checking) -> str:
    """Same answers as the tangled app; a new session per request; every route answers from an overridden
    get_db while the app's own database holds other data or is unreachable; /health 200/503, bounded."""
    factory, get_db = _parts(answer, checking)
    for users, posts in ((7, 2), (45, 3)):
        with make_demo_db(users=users, posts_per_user=posts, seed=users) as db:
            paths = probe_paths(users)
            before = await answers(make_tangled_app(db.url), paths)
            with _SessionTracker() as tracker:
                after = await _tracked_answers(checking.build_app(factory, db.url), paths, tracker)
            diffs = same_answers(before, after)
            checking.expect(not diffs, f"on a database of {users} users, {len(diffs)} of {len(paths)} requests "
                                       "answered differently from the tangled app: " + "; ".join(diffs[:3]) +
                                       ". Same query on the same database, same answer: check the route's logic, "
                                       "and that it reads the database create_app(database_url) was given.")
            tracker.verdict(checking)
            with _SessionTracker() as tracker, hanging_database(db, 0.02):  # 20 ms a statement: all in use at once
                together = await _concurrent_answers(checking.build_app(factory, db.url), paths, tracker)
            tracker.in_flight_verdict(checking, len(paths))
            diffs = same_answers(before, together)
            checking.expect(not diffs, f"on a database of {users} users, the same {len(paths)} requests sent all at "
                                       f"once: {len(diffs)} of {len(together)} answered differently from one at a "
                                       "time: " + "; ".join(diffs[:3]) + ". Requests in flight together "
                                       "must not share a Session (one kept on the app, on `app.state`, in a "
                                       "global): get_db opens one per request and closes it after.")
    checking.record("identical_requests", 2 * len(paths))

    routes = await _check_every_route_uses_get_db(factory, get_db, checking)
    checking.record("routes_overridden", routes)
    checking.record("override_used", "yes")

    down = unreachable_url("grader")
    with make_demo_db(users=3, posts_per_user=1) as db:
        async with app_client(checking.build_app(factory, db.url)) as client:
            status, _ = await _timed_get(client, "/health")
            checking.expect(status == 200, f"/health answered {status} with the database up; expected 200")
            # the same app, its database now stalling: readiness is asked each time, never remembered
            with hanging_database(db, HANG_S):
                status, hung_s = await _timed_get(client, "/health")
        try:
            async with app_client(checking.build_app(factory, down)) as client:
                live = await client.get("/health/live")
                # three probes: the first may meet a cold engine (and, on a loaded machine, the answer's own
                # deadline) before the connection error that a leaky body would show
                probes = [await client.get("/health") for _ in range(3)]
        except Exception as error:
            checking.fail(f"with the database unreachable the app failed: {type(error).__name__}: "
                          f"{str(error)[:160]}. Startup must not need the database; /health must catch the error.")
        checking.expect(live.status_code == 200,
                        f"/health/live answered {live.status_code} with the database down; liveness must not "
                        "touch the database (200 while the process runs)")
        for ready in probes:
            checking.expect(ready.status_code == 503,
                            f"/health answered {ready.status_code} with the database unreachable; expected 503")
        ready = next((p for p in probes if _leaks(p.text)), probes[0])
        leaked = _leaks(ready.text)
        checking.expect(not leaked, f"/health's 503 body shows {leaked}: {ready.text[:160]}. Say only which "
                                    "check failed; log the details server-side.")
        checking.record("hung_db_answer_s", round(hung_s, 2))
        checking.expect(status == 503 and hung_s < HANG_S / 2,
                        f"the app answered /health 200 with its database up; then, with the database stalling "
                        f"{HANG_S:g} s per query, the same app answered /health {status} after {hung_s:.2f} s; "
                        f"expected 503 in under half that ({HANG_S / 2:g} s). Give the check a deadline "
                        "(asyncio.wait_for around a thread) of at most 0.5 s"
                        + (", and run it on every probe: a result remembered from an earlier check (or from "
                           "startup) says the database is fine while it hangs." if status == 200 else "."))
    return (f"identical answers, a new session per request, all {routes} data routes answer from an overridden "
            f"get_db, /health 200 / 503, hung database detected in {hung_s:.2f} s instead of {HANG_S:g} s")


class _SessionTracker:
    """Which SQLAlchemy Session objects begin a transaction or execute during each request (any Session)."""

    def __init__(self) -> None:
        self.current: list[tuple[int, weakref.ref[Session]]] = []
        self.owner: dict[int, str] = {}  # session hash_key → the first request that used it
        self.shared = ""
        self.unclosed = ""
        self.in_flight: dict[int, tuple[Session, set[str]]] = {}  # session → the requests in flight that used it
        self.left_open = ""

    def _began(self, session: Session, *_: Any) -> None:
        self.current.append((session.hash_key, weakref.ref(session)))
        label = _IN_FLIGHT.get()
        if label is not None:  # held until the tracker ends: a session dropped unclosed is still seen
            self.in_flight.setdefault(session.hash_key, (session, set()))[1].add(label)

    def _executed(self, state: Any) -> None:
        self._began(state.session)

    def __enter__(self) -> _SessionTracker:
        self._hooks = contextlib.ExitStack()
        self._hooks.enter_context(listening(Session, "after_begin", self._began))
        self._hooks.enter_context(listening(Session, "do_orm_execute", self._executed))
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.close()

    def start(self) -> None:
        """A request is about to be sent."""
        self.current = []

    def finished(self, request: str) -> None:
        """The request's answer arrived (and the app's dependency teardown ran): judge its sessions."""
        for key, ref in self.current:
            earlier = self.owner.setdefault(key, request)
            if earlier != request and not self.shared:
                self.shared = (f"{request} used the same Session object as the earlier {earlier}: get_db must "
                                "open a new session for every request and close it afterwards. A session kept "
                                "across requests shares one transaction and identity map between users, and "
                                "sync routes run concurrently in the thread pool, where a Session is not safe.")
            session = ref()
            if session is not None and session.in_transaction() and not self.unclosed:
                self.unclosed = (f"after {request} was answered, the Session it used still held its transaction "
                                "(and a pooled connection): get_db must close the session when the request "
                                "ends (`with factory() as session: yield session`, or try/finally close()).")

    def ended(self, label: str) -> None:
        """The request `label` (sent among others in flight) is over: did it leave a session of its own open?"""
        for session, labels in self.in_flight.values():
            if labels == {label} and session.in_transaction() and not self.left_open:
                self.left_open = label

    def in_flight_verdict(self, checking: Checking, requests: int) -> None:
        """Fail if requests in flight together shared a Session, or one ended with its own session still open."""
        shared = next((sorted(labels) for _, labels in self.in_flight.values() if len(labels) > 1), None)
        where = (" Requests in flight together must not share a Session, nor one slot holding it (on `app.state`, "
                 "on `self`, in a global): get_db opens one per request, yields it, and closes that same one after.")
        checking.expect(shared is None, f"with {requests} requests in flight at once, {len(shared or [])} of them "
                        f"used one Session object ({', '.join((shared or [])[:3])}).{where}")
        checking.expect(not self.left_open, f"with {requests} requests in flight at once, {self.left_open} was "
                        "answered while a Session only it had used still held its transaction (and a pooled "
                        f"connection): something closed another request's session instead of its own.{where}")

    def verdict(self, checking: Checking) -> None:
        """Fail with what was seen: a session shared between requests first, then one left open."""
        checking.expect(not self.shared, self.shared)
        checking.expect(not self.unclosed, self.unclosed)


async def _tracked_answers(app: Any, paths: list[str], tracker: _SessionTracker) -> list[Probe]:
    """Like `answers`, with the sessions each request used recorded by `tracker`."""
    found = []
    async with app_client(app) as client:
        for path in paths:
            tracker.start()
            response = await client.get(path)
            await asyncio.sleep(0)  # let a dependency's teardown scheduled after the response run
            tracker.finished(f"GET {path}")
            body = response.json() if response.status_code in (200, 404) else None
            found.append(Probe(path, response.status_code, body))
    return found


def _short(body: Any, size: int = 70) -> str:
    """A body cut to `size` characters for a message."""
    text = str(body)
    return text if len(text) <= size else text[:size] + "…"


def _walk_routes(routes: Any) -> Iterator[Any]:
    """Every route, including those of included routers (FastAPI ≥ 0.16x keeps them as lazy branches)."""
    for route in routes:
        expand = getattr(route, "effective_route_contexts", None)
        if callable(expand):
            yield from expand()
        else:
            yield route


def _get_paths(app: Any, ids: tuple[int, ...]) -> list[str]:
    """Every GET route of `app` outside /health and the docs, path parameters filled with each of `ids`."""
    skip = {getattr(app, name, None) for name in ("openapi_url", "docs_url", "redoc_url",
                                                  "swagger_ui_oauth2_redirect_url")}
    paths: list[str] = []
    for route in _walk_routes(getattr(app, "routes", [])):
        path, methods = getattr(route, "path", None), getattr(route, "methods", None) or set()
        if not isinstance(path, str) or "GET" not in methods or path in skip or path.startswith("/health"):
            continue
        params = list(getattr(route, "param_convertors", {}) or {})
        if not params:
            paths.append(path or "/")
            continue
        for value in ids:
            filled = path
            for name in params:
                filled = re.sub(r"\{" + re.escape(name) + r"(:[^}]*)?\}", str(value), filled)
            paths.append(filled)
    return list(dict.fromkeys(paths))


async def _quiet_answers(app: Any, paths: list[str]) -> list[Probe]:
    """Each path's status and JSON (or text) body; an endpoint that raises gives 500, as under a server."""
    found = []
    async with app_client(app, raise_app_exceptions=False) as client:
        for path in paths:
            response = await client.get(path)
            try:
                body = response.json()
            except ValueError:
                body = response.text[:300]
            found.append(Probe(path, response.status_code, body))
    return found


async def _check_every_route_uses_get_db(factory: Callable[..., Any], get_db: Any, checking: Checking) -> int:
    """Override get_db with another database; with the app's own holding other data, then unreachable, every
    GET route (as listed by the app itself) must answer exactly as the app built on the override's database."""
    salt = secrets.randbelow(1000)
    with make_demo_db(users=12, posts_per_user=3, seed=100 + salt) as test_db, \
            make_demo_db(users=8, posts_per_user=2, seed=2000 + salt) as own_db:
        reference_app = checking.build_app(factory, test_db.url)
        paths = _get_paths(reference_app, (2, 12))
        checking.expect(bool(paths), "your app has no GET routes outside /health: where are /users, "
                                     "/users/{user_id} and /users/{user_id}/posts?")
        expected = await _quiet_answers(reference_app, paths)
        again = await _quiet_answers(checking.build_app(factory, test_db.url), paths)
        # a route of the learner's own that answers differently each time (a clock, a random pick) is left out
        steady = [i for i, (a, b) in enumerate(zip(expected, again, strict=True))
                  if (a.status, a.body) == (b.status, b.body)]
        paths, expected = [paths[i] for i in steady], [expected[i] for i in steady]
        for own, what in ((own_db.url, "holds other data (8 users, 2 posts each)"),
                          (unreachable_url("grader"), "is unreachable")):
            app = checking.build_app(factory, own)
            app.dependency_overrides[get_db] = test_db.dependency()
            started = False
            try:
                async with app_client(app, raise_app_exceptions=False):
                    started = True
                got = await _quiet_answers(app, paths)
            except Exception as error:
                if not started:
                    checking.fail(f"with its database unreachable your app did not even start: "
                                  f"{type(error).__name__}: {str(error)[:160]}. Startup must not connect: make "
                                  "the engine in the lifespan (creating it does not connect) and let /health "
                                  "report it.")
                raise
            wrong = [(e, g) for e, g in zip(expected, got, strict=True) if (e.status, e.body) != (g.status, g.body)]
            if wrong:
                e, g = wrong[0]
                checking.fail(
                    f"with get_db overridden by a session on a test database (12 users, 3 posts each) and your "
                    f"app's own database that {what}, {len(wrong)} of {len(paths)} GET routes did not answer "
                    f"from the test database ({', '.join(w.path for _, w in wrong)}). GET {g.path} answered "
                    f"{g.status} {_short(g.body)}; from the test database it answers {e.status} {_short(e.body)}. "
                    "Such a route still reaches the database on its own (a session opened in the handler, an "
                    "engine of its own, or get_db called directly): take the session only as a parameter, "
                    "`session: Annotated[Session, Depends(get_db)]`, with the very get_db you hand in.")
    return len(paths)


# ---------------------------------------------------------------- benchmark

async def _health_figures() -> list[BenchRow]:
    with make_demo_db(users=20, posts_per_user=2) as db:
        with hanging_database(db, 1.5):
            bounded = await time_health(create_app(Settings(database_url=db.url, health_timeout_s=0.25)))
            unbounded = await time_health(create_app(Settings(database_url=db.url, health_timeout_s=None)))
        from ..timing import compare

        async with app_client(create_app(Settings(database_url=db.url))) as client:
            cost = await compare({"readiness /health": lambda: client.get("/health"),
                                  "liveness /health/live": lambda: client.get("/health/live")}, n=150, warmup=10)
    ratio = unbounded[1] / bounded[1]
    return [
        BenchRow("hung DB (1.5 s/query): /health answer time, no timeout ÷ 0.25 s timeout", ratio, "×",
                 "≥ 3× and 503", ratio >= 3 and bounded[0] == 503, level="endpoint"),
        BenchRow("readiness (DB + Redis ping) ÷ liveness, in-process median", cost.ratio, "×", level="endpoint"),
        BenchRow("liveness /health/live, in-process median", cost["liveness /health/live"].median_ms * 1000,
                 "µs", level="endpoint"),
    ]


def bench() -> list[BenchRow]:
    """Lesson 06's headline figures: time to detect a hung database, and the price of a readiness probe."""
    return asyncio.run(_health_figures())
