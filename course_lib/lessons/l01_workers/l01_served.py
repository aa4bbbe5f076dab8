"""Lesson 01's apps for real servers: a standalone module (only FastAPI imported) so each worker stays lean.

Served as `l01_served:cpu_app` from this folder (`serve(..., cwd=SERVED_DIR)`): importing it does not import
`course_lib` (matplotlib, widgets…), so the memory and start-up time measured per worker are an app's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

CPU_ROUNDS = 20_000  # sha256 rounds per request: ≈ 9 ms on the course's reference machine

cpu_app = FastAPI(title="CPU-bound")


@cpu_app.get("/")
def cpu_ready() -> dict[str, bool]:
    """Readiness probe."""
    return {"ok": True}


@cpu_app.get("/cpu")
def cpu_work(rounds: int = CPU_ROUNDS) -> dict[str, Any]:
    """Pure CPU work (chained sha256), answering which worker process did it."""
    digest = b"lab"
    for _ in range(max(0, min(rounds, 1_000_000))):
        digest = hashlib.sha256(digest).digest()
    return {"digest": digest.hex()[:16], "pid": os.getpid()}


io_app = FastAPI(title="I/O-bound")


@io_app.get("/")
async def io_ready() -> dict[str, bool]:
    """Readiness probe."""
    return {"ok": True}


@io_app.get("/io")
async def io_wait(ms: float = 100) -> dict[str, Any]:
    """Wait on something slow without blocking: the event loop serves other requests meanwhile."""
    await asyncio.sleep(min(ms, 5_000) / 1000)
    return {"waited_ms": ms, "pid": os.getpid()}


@io_app.get("/stack")
async def io_stack() -> dict[str, str]:
    """Which event loop serves this worker (asyncio's own, or uvloop's): what --loop chose, seen from outside."""
    loop = asyncio.get_running_loop()
    return {"loop": f"{type(loop).__module__}.{type(loop).__name__}"}


upstream_app = FastAPI(title="A slow upstream service")
_OUTAGE = {"hang_s": 0.0}  # set by POST /_outage: /data then hangs, so an outage is not visible in the URL


@upstream_app.get("/")
async def upstream_ready() -> dict[str, bool]:
    """Readiness probe."""
    return {"ok": True}


@upstream_app.get("/data")
async def upstream_data(request: Request, ms: float = 0) -> dict[str, Any]:
    """A quick answer that says which TCP connection (client port) carried the request (or an outage's hang)."""
    if _OUTAGE["hang_s"]:
        await asyncio.sleep(min(_OUTAGE["hang_s"], 60))
        return {"late": "finally"}
    if ms:
        await asyncio.sleep(min(ms, 5_000) / 1000)
    port = request.client.port if request.client else -1
    return {"temperature_c": 21.5, "city": "Lyon", "connection": port}


@upstream_app.get("/hang")
async def upstream_hang(seconds: float = 20) -> dict[str, str]:
    """An upstream that does not answer for `seconds` (20 s by default): the outage a timeout is for."""
    await asyncio.sleep(min(seconds, 60))
    return {"late": "finally"}


@upstream_app.post("/_outage")
async def upstream_outage(hang_s: float = 0) -> dict[str, float]:
    """Start (hang_s > 0) or end (0) an outage of /data: the grader's switch, the same URL before and during it."""
    _OUTAGE["hang_s"] = max(0.0, hang_s)
    return _OUTAGE


# A mixed, realistic load: each request draws its kind, most wait on I/O, some compute, some use the database pool.
MIX_SHARES = {"io": 0.7, "cpu": 0.15, "db": 0.15}
MIX_IO_MS, MIX_CPU_ROUNDS, MIX_DB_HOLD_MS = 30.0, 4_000, 10.0
_MIX: dict[str, Any] = {"engine": None, "opened": 0, "out": 0, "peak": 0}


@asynccontextmanager
async def _mixed_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Each worker makes its own engine (its own pool) from LAB_MIX_DB, LAB_POOL_SIZE and LAB_MAX_OVERFLOW,
    and counts the connections it opens and the most it holds at once."""
    from sqlalchemy import create_engine, event  # imported here: the other apps' workers stay lean

    url = os.environ["LAB_MIX_DB"]
    engine = create_engine(url, pool_size=int(os.environ.get("LAB_POOL_SIZE", "5")),
                           max_overflow=int(os.environ.get("LAB_MAX_OVERFLOW", "10")),
                           connect_args={"check_same_thread": False} if url.startswith("sqlite") else {})

    def opened(*_: object) -> None:
        _MIX["opened"] += 1

    def checked_out(*_: object) -> None:
        _MIX["out"] += 1
        _MIX["peak"] = max(_MIX["peak"], _MIX["out"])

    def checked_in(*_: object) -> None:
        _MIX["out"] -= 1

    event.listen(engine, "connect", opened)
    event.listen(engine, "checkout", checked_out)
    event.listen(engine, "checkin", checked_in)
    _MIX["engine"] = engine
    yield
    engine.dispose()


mixed_app = FastAPI(title="A mixed load", lifespan=_mixed_lifespan)


@mixed_app.get("/")
async def mixed_ready() -> dict[str, bool]:
    """Readiness probe."""
    return {"ok": True}


def _db_work() -> int:
    """Check a connection out of this worker's pool, run a query, hold it a little (a 10 ms query), give it back."""
    from sqlalchemy import text

    with _MIX["engine"].connect() as conn:
        users = int(conn.execute(text("SELECT count(*) FROM users")).scalar_one())
        time.sleep(MIX_DB_HOLD_MS / 1000)
    return users


@mixed_app.get("/mix")
async def mixed_request() -> dict[str, Any]:
    """One request of the mix: an awaited I/O wait, some CPU on the loop (rendering, hashing), or a pooled query
    run in the thread pool, drawn with MIX_SHARES."""
    draw = random.random()
    if draw < MIX_SHARES["io"]:
        await asyncio.sleep(MIX_IO_MS / 1000)
        return {"kind": "io", "pid": os.getpid()}
    if draw < MIX_SHARES["io"] + MIX_SHARES["cpu"]:
        digest = b"mix"
        for _ in range(MIX_CPU_ROUNDS):
            digest = hashlib.sha256(digest).digest()
        return {"kind": "cpu", "pid": os.getpid()}
    return {"kind": "db", "users": await run_in_threadpool(_db_work), "pid": os.getpid()}


@mixed_app.get("/pool")
def mixed_pool() -> dict[str, int]:
    """This worker's pool so far: connections opened, the most checked out at once."""
    return {"pid": os.getpid(), "opened": _MIX["opened"], "peak_checked_out": _MIX["peak"]}
