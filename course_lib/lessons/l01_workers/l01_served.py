"""Lesson 01's apps for real servers: a standalone module (only FastAPI imported) so each worker stays lean.

Served as `l01_served:cpu_app` from this folder (`serve(..., cwd=SERVED_DIR)`): importing it does not import
`course_lib` (matplotlib, widgets…), so the memory and start-up time measured per worker are an app's own.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

from fastapi import FastAPI, Request

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
