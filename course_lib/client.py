"""Talk to a FastAPI app in-process: lifespan really runs, requests go through httpx's ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

__all__ = ["app_client"]


@asynccontextmanager
async def app_client(
    app: Any, base_url: str = "http://lab.test", timeout: float = 30.0, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """Start `app`'s lifespan and yield an `httpx.AsyncClient` that sends requests to it without a network.

    With `raise_app_exceptions=False` an endpoint that raises answers 500, as under a real server."""
    if not callable(app):
        raise TypeError(f"app_client needs an ASGI app such as a FastAPI() instance, got {type(app).__name__}")
    async with LifespanManager(app, startup_timeout=timeout, shutdown_timeout=timeout) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url=base_url, timeout=timeout) as client:
            yield client
