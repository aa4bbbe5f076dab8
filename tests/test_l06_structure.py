"""Lesson 06: the blog_app package, the tangled app, the health helpers, and the 06.refactor grader.

No `from __future__ import annotations` here: FastAPI must resolve the local answers' annotations.
"""


import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
import pytest
from answers import l06_structure as reference
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from course_lib.db import Post, User, make_demo_db
from course_lib.grading import grade
from course_lib.lessons import l06_structure as lesson
from course_lib.lessons.blog_app.config import Settings
from course_lib.lessons.blog_app.main import create_app as create_blog_app

# ------------------------------------------------------------------ answers


def reference_answer() -> dict[str, Any]:
    """The reference answer (sources/answers/l06_structure.py, spliced into solutions/06_structure.ipynb)."""
    return {"create_app": reference.create_app, "get_db": reference.get_db}


class UserOut(BaseModel):
    """A user line."""

    id: int
    name: str


def written_another_way(flaw: str = "", style: str = "") -> dict[str, Any]:
    """A right answer in another style (service class, response models, anyio deadline); `flaw` breaks one thing.

    `style` writes it yet another right way: "class-dependency" (get_db is an instance with __call__),
    "router-dependencies" (get_db also declared on include_router, routes share the cached session)."""

    class Users:
        """The service, as a class bound to one session."""

        def __init__(self, session: Session) -> None:
            self.session = session

        def page(self, limit: int, offset: int) -> list[UserOut]:
            rows = self.session.execute(select(User.id, User.name).order_by(User.id).limit(limit).offset(offset))
            return [UserOut(id=i, name=n) for i, n in rows]

        def one(self, user_id: int) -> dict[str, Any] | None:
            row = self.session.execute(
                select(User.id, User.name, User.country, func.count(Post.id))
                .outerjoin(Post, Post.user_id == User.id).where(User.id == user_id).group_by(User.id)
            ).one_or_none()
            return None if row is None else dict(zip(("id", "name", "country", "post_count"), row, strict=True))

        def posts(self, user_id: int) -> list[dict[str, Any]] | None:
            if self.session.get(User, user_id) is None:
                return None
            rows = self.session.execute(select(Post.id, Post.title, Post.likes).where(Post.user_id == user_id)
                                        .order_by(Post.id))
            return [{"id": i, "title": t, "likes": k} for i, t, k in rows]

    class Database:
        """A class-based dependency: the instance is what routes depend on (and what tests override)."""

        def __call__(self, request: Request) -> Iterator[Session]:
            if flaw == "session-on-app-state":  # a new session per request, in one slot on the app: shared in flight
                request.app.state.current = request.app.state.sessions()
                try:
                    yield request.app.state.current
                finally:
                    request.app.state.current.close()
                return
            if flaw == "cached-session":  # one session per app, made once and kept
                if not hasattr(request.app.state, "the_session"):
                    request.app.state.the_session = request.app.state.sessions()
                yield request.app.state.the_session
                return
            session = request.app.state.sessions()
            if flaw == "unclosed":
                yield session
                return
            try:
                yield session
            finally:
                session.close()

    def plain_get_db(request: Request) -> Iterator[Session]:
        session = request.app.state.sessions()
        try:
            yield session
        finally:
            session.close()

    get_db: Any = (Database() if style == "class-dependency" or flaw in ("cached-session", "unclosed",
                                                                       "session-on-app-state") else plain_get_db)

    def users_service(session: Annotated[Session, Depends(get_db)]) -> Users:
        return Users(session)

    Service = Annotated[Users, Depends(users_service)]
    router = APIRouter()

    @router.get("/users", response_model=list[UserOut])
    def page(service: Service, limit: int = Query(20, ge=1, le=100), offset: int = Query(0, ge=0)) -> Any:
        return service.page(limit, offset)

    @router.get("/users/{user_id}")
    def one(user_id: int, service: Service) -> Any:
        found = service.one(user_id)
        if found is None:
            if flaw == "no-404":
                return None
            raise HTTPException(404, "user not found")
        return found

    @router.get("/users/{user_id}/posts")
    def posts(user_id: int, service: Service, request: Request) -> Any:
        if flaw == "half-refactor":  # this one route still opens its own session
            with request.app.state.sessions() as own:
                found = Users(own).posts(user_id)
        elif flaw == "engine-direct":  # ... or uses the app's engine directly
            with Session(request.app.state.engine) as own:
                found = Users(own).posts(user_id)
        elif flaw == "calls-get-db":  # ... or calls the dependency itself instead of declaring it
            generator = get_db(request)
            found = Users(next(generator)).posts(user_id)
            generator.close()
        else:
            found = service.posts(user_id)
        if found is None:
            raise HTTPException(404, "user not found")
        return found

    if style == "extra-routes":  # routes of the learner's own: one more data route, one that changes every call

        @router.get("/users/{user_id}/likes")
        def likes(user_id: int, session: Annotated[Session, Depends(get_db)], request: Request) -> Any:
            total = select(func.coalesce(func.sum(Post.likes), 0)).where(Post.user_id == user_id)
            if flaw == "own-route-own-engine":  # a route of the learner's own, which the grader cannot know
                with Session(request.app.state.engine) as own:
                    return {"likes": own.scalar(total)}
            return {"likes": session.scalar(total)}

        @router.get("/now")
        def now() -> Any:
            return {"t": time.time()}

    def ping(engine: Any) -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    @router.get("/health/live")
    async def live(request: Request) -> Any:
        if flaw == "live-pings-db":
            try:
                await anyio.to_thread.run_sync(ping, request.app.state.engine)
            except Exception:
                return JSONResponse({"status": "unavailable"}, 503)
        return {"status": "ok"}

    @router.get("/health")
    async def ready(request: Request) -> Any:
        engine = request.app.state.engine
        if flaw == "always-ok":
            return {"status": "ok"}
        if flaw == "startup-flag":  # checked once, in the lifespan, and reported ever after
            return {"status": "ok"} if request.app.state.ready else JSONResponse({"status": "down"}, 503)
        if flaw == "ready-once" and getattr(request.app.state, "ready", False):  # "it answered once: we are up"
            return {"status": "ok"}
        try:
            if flaw == "no-timeout":
                await anyio.to_thread.run_sync(ping, engine)
            else:
                with anyio.fail_after(0.3):
                    await anyio.to_thread.run_sync(ping, engine, abandon_on_cancel=True)
        except Exception as error:
            body = {"status": "down", "error": str(error)} if flaw == "leaky" else {"status": "down"}
            return JSONResponse(body, status_code=503)
        request.app.state.ready = True
        return {"status": "ok"}

    def create_app(database_url: str) -> FastAPI:
        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            app.state.engine = create_engine(database_url, connect_args={"check_same_thread": False})
            if flaw == "connects-at-startup":
                ping(app.state.engine)
            if flaw == "startup-flag":
                try:
                    with anyio.fail_after(0.3):
                        await anyio.to_thread.run_sync(ping, app.state.engine, abandon_on_cancel=True)
                    app.state.ready = True
                except Exception:
                    app.state.ready = False
            app.state.sessions = sessionmaker(app.state.engine)
            yield
            app.state.engine.dispose()

        app = FastAPI(lifespan=lifespan)
        if style == "router-dependencies":
            app.include_router(router, dependencies=[Depends(get_db)])
        else:
            app.include_router(router)
        return app

    return {"create_app": create_app, "get_db": get_db}


_DEV_DB = make_demo_db(users=30, posts_per_user=1, seed=99)  # the learner's own development database
DEV_SESSIONS = sessionmaker(create_engine(_DEV_DB.url, connect_args={"check_same_thread": False}))


def module_level_engine() -> dict[str, Any]:
    """Wrong: /users/{user_id} uses a session factory made at import time, bound to a database of its own."""
    answer = written_another_way()
    create = answer["create_app"]

    def create_app(database_url: str) -> FastAPI:
        app = create(database_url)

        @app.get("/users/{user_id}", include_in_schema=False)
        def user_from_module_engine(user_id: int) -> Any:
            with DEV_SESSIONS() as session:
                user = session.get(User, user_id)
                if user is None:
                    raise HTTPException(404, "user not found")
                return {"id": user.id, "name": user.name, "country": user.country,
                        "post_count": session.scalar(select(func.count()).where(Post.user_id == user_id))}

        app.router.routes.insert(0, app.router.routes.pop())  # first match wins: it shadows the right one
        return app

    return {"create_app": create_app, "get_db": answer["get_db"]}


def tangled_answer() -> dict[str, Any]:
    """The tangled app handed in as is (with some function as get_db): nothing to override, no /health."""
    return {"create_app": lesson.make_tangled_app, "get_db": lambda: None}


# ------------------------------------------------------------------ grader


def test_reference_answer_passes() -> None:
    """The shipped solution passes, and the hung database is detected well under the stall."""
    result = grade("06.refactor", reference_answer())
    assert result.passed, result.message
    assert result.figures["identical_requests"] == 24
    assert result.figures["hung_db_answer_s"] < lesson.HANG_S / 2


@pytest.mark.parametrize("style", ["", "class-dependency", "router-dependencies", "extra-routes"])
def test_answer_written_another_way_passes(style: str) -> None:
    """A class-based service, response models, get_db with try/finally, anyio.fail_after, a class-based
    dependency, get_db declared on include_router too, and routes of one's own, all pass."""
    result = grade("06.refactor", written_another_way(style=style))
    assert result.passed, result.message
    # /users, /users/{2,12}, /users/{2,12}/posts (+ /users/{2,12}/likes; /now changes: left out)
    assert result.figures["routes_overridden"] == (7 if style == "extra-routes" else 5)


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (tangled_answer, "GET routes did not answer from the test database"),
        (lambda: written_another_way("half-refactor"), "database that holds other data (8 users, 2 posts each), "
                                                        "2 of 5 GET routes did not answer from the test database "
                                                        "(/users/2/posts, /users/12/posts). GET /users/2/posts "
                                                        "answered 200"),
        (lambda: written_another_way("engine-direct"), "GET /users/2/posts answered 200"),
        (lambda: written_another_way("calls-get-db"), "GET /users/2/posts answered 200"),
        (lambda: written_another_way("cached-session"), "used the same Session object as the earlier GET /users"),
        (lambda: written_another_way("unclosed"), "still held its transaction"),
        (module_level_engine, "answered differently from the tangled app: GET /users/1: body"),
        (lambda: written_another_way("own-route-own-engine", "extra-routes"), "GET /users/2/likes answered"),
        (lambda: written_another_way("no-404"), "answered differently from the tangled app: GET /users/8: status 200"),
        (lambda: written_another_way("always-ok"), "/health answered 200 with the database unreachable"),
        (lambda: written_another_way("leaky"), "/health's 503 body shows"),
        (lambda: written_another_way("live-pings-db"), "/health/live answered 503 with the database down"),
        (lambda: written_another_way("connects-at-startup"), "with its database unreachable your app did not even start"),
        (lambda: written_another_way("no-timeout"), "expected 503 in under half that (1.5 s)"),  # 200 or 503, after 3 s
        (lambda: written_another_way("ready-once"), "a result remembered from an earlier check (or from startup)"),
        (lambda: written_another_way("startup-flag"), "a result remembered from an earlier check (or from startup)"),
        (lambda: written_another_way("session-on-app-state"), "requests in flight at once"),
    ],
    ids=["tangled", "half-refactor", "engine-direct", "calls-get-db", "cached-session", "unclosed", "module-level-engine", "own-route-own-engine", "no-404", "always-ok", "leaky", "live-pings-db", "connects-at-startup", "no-timeout",
         "ready-once", "startup-flag", "session-on-app-state"],
)
def test_wrong_answers_fail_and_say_what_was_measured(answer: Any, says: str) -> None:
    """Each flaw fails, and the message names the request and what came back."""
    result = grade("06.refactor", answer())
    assert not result.passed
    assert says in result.message, result.message
    assert result.hint


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (None, "the answer is None"),
        ("create_app", "expected {'create_app': create_app, 'get_db': get_db}"),
        ({"create_app": 3, "get_db": print}, "create_app, a function"),
        ({"create_app": lambda url: None, "get_db": print}, "not a FastAPI app"),
        ({"create_app": lambda url: 1 / 0, "get_db": print}, "ZeroDivisionError"),
    ],
    ids=["none", "string", "not-callable", "returns-none", "raises"],
)
def test_odd_answers_get_a_clear_message(answer: Any, says: str) -> None:
    """Bad input fails with a message, never a crash."""
    result = grade("06.refactor", answer)
    assert not result.passed and says in result.message, result.message


def test_hanging_answer_is_stopped_by_the_time_limit() -> None:
    """A create_app that never returns is cut off at the time limit with a message."""
    result = grade("06.refactor", {"create_app": lambda url: time.sleep(5), "get_db": print}, timeout=1)
    assert not result.passed and "did not finish within 1 s" in result.message


# ------------------------------------------------------------------ package and helpers


def test_package_matches_the_tangled_app_on_every_probe() -> None:
    """blog_app answers every probe exactly like the tangled app."""

    async def run() -> list[str]:
        with make_demo_db(users=25, posts_per_user=2) as db:
            paths = lesson.probe_paths(25)
            before = await lesson.answers(lesson.make_tangled_app(db.url), paths)
            after = await lesson.answers(create_blog_app(Settings(database_url=db.url)), paths)
            assert {p.status for p in before} == {200, 404, 422}
            return lesson.same_answers(before, after)

    assert asyncio.run(run()) == []


def test_same_answers_reports_differences() -> None:
    """A differing status or body is reported, not hidden."""
    a = [lesson.Probe("/x", 200, [1]), lesson.Probe("/y", 404, {"detail": "no"})]
    b = [lesson.Probe("/x", 200, [2]), lesson.Probe("/y", 200, None)]
    assert lesson.same_answers(a, b) == ["GET /x: body [2], expected [1]", "GET /y: status 200, expected 404"]


def test_readiness_and_liveness_of_the_package() -> None:
    """Ready 200 when all is up; 503 naming only the failed check when the DB or Redis is down; live stays 200."""
    from course_lib.servers import free_port

    async def statuses(settings: Settings) -> tuple[int, int, str]:
        async with lesson.app_client(create_blog_app(settings)) as client:
            live, ready = await client.get("/health/live"), await client.get("/health")
        return live.status_code, ready.status_code, ready.text

    with make_demo_db(users=3, posts_per_user=1) as db:
        assert asyncio.run(statuses(Settings(database_url=db.url)))[:2] == (200, 200)
        live, ready, body = asyncio.run(statuses(Settings(database_url=lesson.unreachable_url())))
        assert (live, ready) == (200, 503) and '"database":"down"' in body and "nonexistent" not in body
        secret_url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
        live, ready, body = asyncio.run(statuses(Settings(database_url=db.url, redis_url=secret_url)))
        assert (live, ready) == (200, 503) and '"redis":"down"' in body and "hunter2" not in body


def test_timeout_bounds_detection_of_a_hung_database() -> None:
    """With the DB stalling 1 s, a 0.2 s timeout answers 503 in well under the stall; no timeout waits it out."""

    async def run() -> tuple[tuple[int, float], tuple[int, float]]:
        with make_demo_db(users=3, posts_per_user=1) as db, lesson.hanging_database(db, 1.0):
            bounded = await lesson.time_health(create_blog_app(Settings(database_url=db.url, health_timeout_s=0.2)))
            unbounded = await lesson.time_health(create_blog_app(Settings(database_url=db.url, health_timeout_s=None)))
        return bounded, unbounded

    bounded, unbounded = asyncio.run(run())
    assert bounded[0] == 503 and unbounded[0] == 200
    assert unbounded[1] / bounded[1] > 2.5


def test_hanging_database_only_stalls_its_own_file() -> None:
    """Another database is not slowed down by hanging_database."""
    with make_demo_db(users=2, posts_per_user=0) as hung, make_demo_db(users=2, posts_per_user=0) as other:
        with lesson.hanging_database(hung, 0.5), other.session() as session:
            start = time.perf_counter()
            session.execute(text("SELECT 1"))
            fast = time.perf_counter() - start
            with hung.session() as slow_session:
                start = time.perf_counter()
                slow_session.execute(text("SELECT 1"))
                slow = time.perf_counter() - start
    assert slow / fast > 5


def test_import_creates_no_engine_and_startup_needs_no_database() -> None:
    """The module-level app has no engine until its lifespan runs, and disposes of it at shutdown."""
    from course_lib.lessons.blog_app import main

    assert "engine" not in main.app.state._state

    async def run() -> int:
        app = create_blog_app(Settings(database_url=lesson.unreachable_url()))
        async with lesson.app_client(app) as client:
            assert app.state.engine is not None
            return (await client.get("/health/live")).status_code

    assert asyncio.run(run()) == 200


def test_package_tests_pass() -> None:
    """The package's own tests/ (dependency_overrides, readiness) pass under pytest."""
    summary, code = lesson.run_package_tests()
    assert (summary, code) == ("4 passed", 0)


def test_server_runs_the_package_and_refuses_to_start_without_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under uvicorn the package answers like in-process; without BLOG_DATABASE_URL startup fails clearly."""
    import httpx

    from course_lib.servers import serve

    with make_demo_db(users=5, posts_per_user=1) as db:
        with serve("course_lib.lessons.blog_app.main:app", env={"BLOG_DATABASE_URL": db.url},
                   ready_path="/health/live") as server:
            assert httpx.get(server.url + "/health").status_code == 200
            assert httpx.get(server.url + "/users/5").json()["id"] == 5
    monkeypatch.delenv("BLOG_DATABASE_URL", raising=False)
    with pytest.raises(RuntimeError, match="database_url"):
        with serve("course_lib.lessons.blog_app.main:app", ready_path="/health/live", startup_timeout=20):
            pass


def test_bench_rows_are_measured() -> None:
    """bench() returns the lesson's rows with a goal on the hung-database ratio (the runner stamps the lesson)."""
    rows = lesson.bench()
    assert len(rows) == 3 and all(r.lesson == "" for r in rows)
    assert rows[0].met is True and rows[0].value >= 3
    assert rows[1].value > 1


def test_hints_progress_and_never_give_the_answer() -> None:
    """Three levels: what the grader varies, the tools, a shape with gaps (no finished get_db or /health)."""
    from course_lib.grading import hint

    hints = [hint("06.refactor", level) for level in (1, 2, 3)]
    assert len(set(hints)) == 3
    assert "every route" in hints[0] and "Depends(get_db)" in hints[1] and "…" in hints[2]
    assert "session_factory() as s: yield s" not in " ".join(hints)


# ---------------------------------------------------------------- what the lesson shows (H11)

def test_a_warm_up_query_in_the_lifespan_stops_startup_when_the_database_is_down() -> None:
    """make_eager_app cannot start on an unreachable database (the package can), and serves on a live one."""
    async def start(app: Any) -> int:
        async with lesson.app_client(app) as client:
            return (await client.get("/health/live")).status_code

    down = lesson.unreachable_url("test")
    with pytest.raises(Exception, match="unable to open database file"):
        asyncio.run(start(lesson.make_eager_app(down)))
    assert asyncio.run(start(create_blog_app(Settings(database_url=down)))) == 200
    with make_demo_db(users=3, posts_per_user=1) as db:
        assert asyncio.run(start(lesson.make_eager_app(db.url))) == 200


def test_code_after_yield_runs_after_the_response_is_sent() -> None:
    """The lesson's claim on the installed FastAPI (0.118 or later): cleanup after the last body chunk."""
    from course_lib.lessons.blog_app.dependencies import get_db

    events: list[str] = []
    with make_demo_db(users=3, posts_per_user=1) as db:
        def recording_get_db() -> Iterator[Session]:
            with db.session() as session:
                events.append("opened")
                yield session
            events.append("closed")

        app = create_blog_app(Settings(database_url=lesson.unreachable_url("test")))
        app.dependency_overrides[get_db] = recording_get_db

        async def run() -> int:
            async with lesson.app_client(lesson.record_response_end(app, events)) as client:
                return (await client.get("/users/1")).status_code

        assert asyncio.run(run()) == 200
    assert events == ["opened", "response sent to the client", "closed"]


def test_layout_and_source_are_shown_as_tables_and_code_blocks() -> None:
    """Every .py file of the package is a row; the tangled app's source is a python code block."""
    table = lesson.layout_table().data
    for path in lesson.PACKAGE.rglob("*.py"):
        assert f"`blog_app/{path.relative_to(lesson.PACKAGE)}`" in table
    listing = lesson.source_listing(lesson.make_tangled_app).data
    assert listing.startswith("```python\ndef make_tangled_app") and listing.endswith("```")


def test_prose_helpers_use_the_figures_they_are_given() -> None:
    """The deadline story quotes the measured statuses, times and their ratio."""
    story = lesson.deadline_story({0.25: (503, 0.3), None: (200, 1.62)}).data
    assert "**503** after **0.30 s**" in story and "**200** after **1.62 s**" in story and "**5.4×**" in story
    assert "said the database was fine" in story
