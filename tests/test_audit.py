"""The auditor: every checklist item is shown to fire on a small app that violates it and to stay quiet on one that does not."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Query
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from sqlalchemy import select, text
from sqlalchemy.orm import Session, selectinload

from course_lib.auditor import AuditReport, audit, audit_main, postgres_scanned_tables, sqlite_scanned_tables
from course_lib.db import DemoDB, User, dialect, make_demo_db

SECRET = "sk_test_51Hq9ExampleKey"


def run(app: Any, **kwargs: Any) -> AuditReport:
    """Audit synchronously."""
    return asyncio.run(audit(app, **kwargs))


@pytest.fixture(scope="module")
def db() -> DemoDB:
    with make_demo_db(users=1_200, posts_per_user=2) as demo:
        yield demo


def users_app(db: DemoDB, *, eager: bool, capped: bool) -> FastAPI:
    app = FastAPI()
    app.state.engine = db.engine
    get_db = db.dependency()
    limit_q = Query(10, ge=1, le=100) if capped else Query(10, ge=1)

    @app.get("/users")
    def users(limit: int = limit_q, session: Session = Depends(get_db)) -> list[dict[str, Any]]:
        statement = select(User).order_by(User.id).limit(limit)
        if eager:
            statement = statement.options(selectinload(User.posts))
        return [{"id": u.id, "posts": len(u.posts)} for u in session.scalars(statement)]

    return app


# --- pagination -----------------------------------------------------------------------------------

def test_pagination_fires_without_a_cap(db: DemoDB) -> None:
    check = run(users_app(db, eager=True, capped=False))["pagination"]
    assert check.status == "✗"
    assert "limit=101 → 200 with 101 items" in check.evidence


def test_pagination_fires_for_a_list_without_limit() -> None:
    app = FastAPI()

    @app.get("/everything")
    async def everything() -> list[int]:
        return list(range(500))

    check = run(app)["pagination"]
    assert check.status == "✗" and "no limit parameter, 500 items" in check.evidence


def test_pagination_quiet_with_a_cap(db: DemoDB) -> None:
    check = run(users_app(db, eager=True, capped=True))["pagination"]
    assert check.status == "✓" and "limit=1000 → 422" in check.evidence


# --- N+1 --------------------------------------------------------------------------------------------

def test_n_plus_one_fires_on_lazy_loads(db: DemoDB) -> None:
    check = run(users_app(db, eager=False, capped=True))["n_plus_one"]
    assert check.status == "✗"
    assert "limit=5 → 6 queries, limit=20 → 21" in check.evidence


def test_n_plus_one_quiet_with_selectinload(db: DemoDB) -> None:
    check = run(users_app(db, eager=True, capped=True))["n_plus_one"]
    assert check.status == "✓" and "limit=5 → 2 queries, limit=20 → 2" in check.evidence


def test_n_plus_one_unknown_without_engine() -> None:
    app = FastAPI()

    @app.get("/x")
    async def x() -> dict[str, int]:
        return {"x": 1}

    assert run(app)["n_plus_one"].status == "?"


# --- indexes ----------------------------------------------------------------------------------------

def email_app(db: DemoDB) -> FastAPI:
    app = FastAPI()
    app.state.engine = db.engine
    get_db = db.dependency()

    @app.get("/users/by-email/{email}")
    def by_email(email: str, session: Session = Depends(get_db)) -> dict[str, Any]:
        user = session.scalars(select(User).where(User.email == email)).first()
        return {"id": user.id if user else None}

    return app


def test_indexes_fire_on_a_scan_and_quiet_with_an_index() -> None:
    with make_demo_db(users=1_500, posts_per_user=0) as db:
        check = run(email_app(db))["indexes"]
        scan = "SCAN users" if dialect() == "sqlite" else "Seq Scan on users"
        assert check.status == "✗" and f"{scan} (1,500 rows)" in check.evidence, check.evidence
        with db.engine.begin() as conn:
            conn.execute(text("CREATE INDEX ix_users_email ON users (email)"))
        check = run(email_app(db))["indexes"]
        assert check.status == "✓", check.evidence


def test_indexes_ignore_small_tables() -> None:
    with make_demo_db(users=50, posts_per_user=0) as db:
        assert run(email_app(db))["indexes"].status == "✓"


SQLITE_PLAN_SCAN = [(2, 0, 0, "SCAN users")]
SQLITE_PLAN_INDEXED = [(3, 0, 0, "SEARCH users USING INDEX ix_users_email (email=?)")]
SQLITE_PLAN_JOIN = [(3, 0, 0, "SCAN posts"), (5, 0, 0, "SEARCH users USING INTEGER PRIMARY KEY (rowid=?)"),
                    (9, 0, 0, "USE TEMP B-TREE FOR ORDER BY")]
PG_PLAN_SCAN = [{"Plan": {"Node Type": "Limit", "Plans": [
    {"Node Type": "Seq Scan", "Parent Relationship": "Outer", "Relation Name": "users", "Alias": "users",
     "Filter": "((email)::text = 'x'::text)"}]}}]
PG_PLAN_INDEXED = [{"Plan": {"Node Type": "Limit", "Plans": [
    {"Node Type": "Index Scan", "Relation Name": "users", "Index Name": "ix_users_email",
     "Index Cond": "((email)::text = 'x'::text)"}]}}]
PG_PLAN_BITMAP_AND_JOIN = [{"Plan": {"Node Type": "Hash Join", "Plans": [
    {"Node Type": "Seq Scan", "Relation Name": "authors"},
    {"Node Type": "Hash", "Plans": [{"Node Type": "Bitmap Heap Scan", "Relation Name": "books", "Plans": [
        {"Node Type": "Bitmap Index Scan", "Index Name": "ix_books_author_id"}]}]}]}}]


def test_plan_parsing_of_both_dialects_on_canned_plans() -> None:
    assert sqlite_scanned_tables(SQLITE_PLAN_SCAN) == ["users"]
    assert sqlite_scanned_tables(SQLITE_PLAN_INDEXED) == []
    assert sqlite_scanned_tables(SQLITE_PLAN_JOIN) == ["posts"]
    assert sqlite_scanned_tables([]) == []
    assert postgres_scanned_tables(PG_PLAN_SCAN) == ["users"]
    assert postgres_scanned_tables(json.dumps(PG_PLAN_SCAN)) == ["users"]  # the driver may hand back text
    assert postgres_scanned_tables(PG_PLAN_INDEXED) == []
    assert postgres_scanned_tables(PG_PLAN_BITMAP_AND_JOIN) == ["authors"]  # nested nodes are walked
    assert postgres_scanned_tables([]) == [] and postgres_scanned_tables(None) == []
    # one reader for the course (course_lib.plans): walking every entry of an index is a full scan too
    assert sqlite_scanned_tables([(2, 0, 0, "SCAN users USING COVERING INDEX ix_users_email")]) == ["users"]
    assert postgres_scanned_tables([{"Plan": {"Node Type": "Index Only Scan", "Relation Name": "users",
                                              "Index Name": "ix_users_email"}}]) == ["users"]


@pytest.mark.skipif(dialect() != "postgresql", reason="live PostgreSQL plans need DATABASE_URL")
def test_live_postgres_plans_seq_scan_then_index_scan() -> None:
    with make_demo_db(users=2_000, posts_per_user=0) as db, db.engine.connect() as conn:
        sql = "EXPLAIN (FORMAT JSON) SELECT id FROM users WHERE email = %(email)s"
        params = {"email": "ada.lovelace.7@example.com"}
        conn.exec_driver_sql("ANALYZE users")
        assert postgres_scanned_tables(conn.exec_driver_sql(sql, params).scalar_one()) == ["users"]
        conn.exec_driver_sql("CREATE INDEX ix_users_email ON users (email)")
        conn.exec_driver_sql("ANALYZE users")
        assert postgres_scanned_tables(conn.exec_driver_sql(sql, params).scalar_one()) == []
        conn.rollback()


# --- blocking ---------------------------------------------------------------------------------------

def test_blocking_fires_on_time_sleep_in_async_def() -> None:
    app = FastAPI()

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        time.sleep(0.05)
        return {"ok": "yes"}

    check = run(app)["blocking"]
    assert check.status == "✗" and "/slow (async def) stalled the event loop" in check.evidence


def test_blocking_quiet_for_awaited_sleep_and_for_def_routes() -> None:
    app = FastAPI()

    @app.get("/awaits")
    async def awaits() -> dict[str, str]:
        await asyncio.sleep(0.05)
        return {"ok": "yes"}

    @app.get("/threaded")
    def threaded() -> dict[str, str]:
        time.sleep(0.05)
        return {"ok": "yes"}

    check = run(app)["blocking"]
    assert check.status == "✓", check.evidence


# --- middleware and gzip ----------------------------------------------------------------------------

def big_app(*, base_http: bool, gzip: bool) -> FastAPI:
    app = FastAPI()
    if gzip:
        app.add_middleware(GZipMiddleware, minimum_size=1000)
    if base_http:
        @app.middleware("http")
        async def add_header(request: Any, call_next: Any) -> Any:
            response = await call_next(request)
            response.headers["X-Seen"] = "1"
            return response

    @app.get("/big")
    async def big() -> dict[str, str]:
        return {"text": "bookshop " * 3_000}

    return app


def test_middleware_fires_on_base_http_middleware() -> None:
    check = run(big_app(base_http=True, gzip=True))["middleware"]
    assert check.status == "✗" and "add_header" in check.evidence


def test_middleware_quiet_with_pure_asgi_middleware() -> None:
    assert run(big_app(base_http=False, gzip=True))["middleware"].status == "✓"


def test_gzip_fires_on_large_uncompressed_response() -> None:
    check = run(big_app(base_http=False, gzip=False))["gzip"]
    assert check.status == "✗" and "/big sent 26.4 KB uncompressed" in check.evidence


def test_gzip_quiet_when_compressed() -> None:
    check = run(big_app(base_http=False, gzip=True))["gzip"]
    assert check.status == "✓" and "all compressed" in check.evidence


# --- health -----------------------------------------------------------------------------------------

def health_app(db: DemoDB, kind: str) -> FastAPI:
    app = FastAPI()
    app.state.engine = db.engine
    if kind == "liar":
        @app.get("/health")
        async def health() -> dict[str, str]:
            return {"status": "ok"}
    elif kind == "real":
        @app.get("/health")
        def health() -> Any:
            try:
                with db.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            except Exception:
                return JSONResponse({"status": "down"}, status_code=503)
            return {"status": "ok"}
    return app


def test_health_fires_when_missing(db: DemoDB) -> None:
    check = run(health_app(db, "none"))["health"]
    assert check.status == "✗" and "GET /health → 404" in check.evidence


def test_health_fires_when_it_ignores_the_database(db: DemoDB) -> None:
    check = run(health_app(db, "liar"))["health"]
    assert check.status == "✗" and "with the database down → 200" in check.evidence


def test_health_quiet_when_it_checks_the_database(db: DemoDB) -> None:
    check = run(health_app(db, "real"))["health"]
    assert check.status == "✓" and "with the database down → 503" in check.evidence
    with db.engine.connect() as conn:  # the outage was simulated and is over
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


# --- outbound timeouts ------------------------------------------------------------------------------

def outbound_app(timeout: Any) -> FastAPI:
    app = FastAPI()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"rate": 0.9}))

    @app.get("/rate")
    async def rate() -> dict[str, float]:
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
            return (await client.get("http://rates.example/rate")).json()

    return app


def test_timeouts_fire_without_a_timeout() -> None:
    check = run(outbound_app(None))["timeouts"]
    assert check.status == "✗" and "http://rates.example/rate" in check.evidence


def test_timeouts_quiet_with_a_timeout() -> None:
    check = run(outbound_app(2.0))["timeouts"]
    assert check.status == "✓" and "outbound httpx requests, all with timeouts" in check.evidence


# --- caching hint -----------------------------------------------------------------------------------

def test_cache_hint_fires_on_a_slow_uncached_get_and_quiet_when_cached() -> None:
    app, memo = FastAPI(), {}

    @app.get("/report")
    async def report() -> dict[str, int]:
        await asyncio.sleep(0.05)
        return {"n": 1}

    @app.get("/cached-report")
    async def cached_report() -> dict[str, int]:
        if "r" not in memo:
            await asyncio.sleep(0.05)
            memo["r"] = {"n": 1}
        return memo["r"]

    check = run(app)["cache"]
    assert check.status == "?" and "/report" in check.evidence and "/cached-report" not in check.evidence
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") != "/report"]
    assert run(app)["cache"].status == "✓"


# --- secrets ----------------------------------------------------------------------------------------

def secret_app(where: str) -> FastAPI:
    app = FastAPI()
    log = logging.getLogger("test.audit.secret")

    @app.get("/config")
    async def config() -> dict[str, str]:
        if where == "log":
            log.info("connecting with key %s", SECRET)
        return {"key": SECRET if where == "response" else "****"}

    return app


@pytest.mark.parametrize("where", ["log", "response"])
def test_secrets_fire_when_leaked(where: str) -> None:
    check = run(secret_app(where), secrets=[SecretStr(SECRET)])["secrets"]
    assert check.status == "✗"
    assert ("log record" in check.evidence) if where == "log" else ("response of /config" in check.evidence)


def test_secrets_quiet_when_kept_and_unknown_when_none_given() -> None:
    assert run(secret_app("nowhere"), secrets=[SecretStr(SECRET)])["secrets"].status == "✓"
    assert run(secret_app("nowhere"))["secrets"].status == "?"


def test_secrets_found_on_app_state_settings() -> None:
    from pydantic_settings import BaseSettings

    class Settings(BaseSettings):
        api_key: SecretStr = SecretStr(SECRET)

    app = secret_app("response")
    app.state.settings = Settings(_env_file=None)
    assert run(app)["secrets"].status == "✗"


# --- report, odd input, terminal --------------------------------------------------------------------

def test_report_table_and_html(db: DemoDB) -> None:
    report = run(users_app(db, eager=False, capped=False))
    assert len(report.checks) == 10 and not report.ok
    assert "N+1" in repr(report) and "<table>" in report._repr_html_()
    assert set(report.failing()) >= {"pagination", "n_plus_one"}


def test_the_checklist_is_a_registry_of_small_documented_checks(db: DemoDB) -> None:
    """One registered check per checklist item, each with a one-line docstring; the report keeps its order."""
    from course_lib import auditor

    keys = [item.key for item in auditor.AUDIT_ITEMS]
    assert sorted(keys) == sorted(auditor.REPORT_ORDER) and len(set(keys)) == len(keys) == 10
    for item in auditor.AUDIT_ITEMS:
        doc = (item.check.__doc__ or "").strip()
        assert doc and "\n" not in doc, f"{item.key}: {doc!r}"
    report = run(users_app(db, eager=True, capped=True), health_path="/ready", large_response=2048)
    assert [c.key for c in report.checks] == list(auditor.REPORT_ORDER)
    titles = {c.key: c.title for c in report.checks}
    assert titles["health"] == "/ready says whether the app can serve"
    assert titles["gzip"] == "Responses over 2.0 KB are compressed"
    with pytest.raises(ValueError, match="registered twice"):
        auditor._item("gzip", "again", "04")


@pytest.mark.parametrize("bad", [None, 42, "app", FastAPI])
def test_audit_rejects_what_is_not_an_app(bad: Any) -> None:
    with pytest.raises(TypeError, match="audit needs a FastAPI app"):
        run(bad)


def test_audit_rejects_a_wrong_engine(db: DemoDB) -> None:
    with pytest.raises(TypeError, match="engine must be a SQLAlchemy Engine"):
        run(users_app(db, eager=True, capped=True), engine="sqlite://")


def test_audit_main_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = audit_main(["course_lib.lessons.l00_welcome:hello_app"])
    out = capsys.readouterr().out
    assert "practice" in out and "checks pass" in out
    assert code == 1  # hello_app has no /health: not all ✓


def test_audit_main_bad_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert audit_main(["no_such_module_xyz:app"]) == 2
    assert audit_main(["missing-colon"]) == 2
    assert "cannot load" in capsys.readouterr().err
