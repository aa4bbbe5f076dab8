"""Liveness (the process answers) and readiness (its dependencies answer in time): 200 or 503, nothing secret."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..database import ping
from ..dependencies import RedisDep, SettingsDep

router = APIRouter(prefix="/health", tags=["health"])
logger = logging.getLogger("blog_app.health")


@router.get("/live")
async def live() -> dict[str, str]:
    """Liveness: touches no dependency, so a slow database never gets a healthy process restarted."""
    return {"status": "ok"}


async def _passes(name: str, check: Awaitable[Any], timeout: float | None) -> bool:
    """Await one dependency check with a deadline; log the reason server-side, return only up/down."""
    try:
        await asyncio.wait_for(check, timeout)
        return True
    except Exception as error:  # noqa: BLE001 - Timeout-, Operational-, ConnectionError, …: all mean "not ready"
        logger.warning("readiness: %s check failed: %s", name, type(error).__name__)
        return False


@router.get("", responses={503: {"description": "a dependency is down or too slow"}})
async def ready(request: Request, settings: SettingsDep, redis: RedisDep) -> JSONResponse:
    """Readiness: database and Redis checked concurrently, each with a short timeout; 503 if any fails."""
    timeout = settings.health_timeout_s
    database_up, redis_up = await asyncio.gather(
        _passes("database", asyncio.to_thread(ping, request.app.state.engine), timeout),
        _passes("redis", redis.ping(), timeout),
    )
    checks = {"database": "ok" if database_up else "down", "redis": "ok" if redis_up else "down"}
    healthy = database_up and redis_up
    return JSONResponse({"status": "ok" if healthy else "unavailable", "checks": checks},
                        status_code=200 if healthy else 503)
