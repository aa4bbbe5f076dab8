"""The in-process client runs the app's lifespan and sends real requests through httpx."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI

from course_lib import app_client


def test_lifespan_runs_and_requests_work():
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        events.append("startup")
        app.state.greeting = "hello"
        yield
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/greet")
    async def greet() -> dict[str, str]:
        return {"greeting": app.state.greeting}

    async def scenario() -> tuple[int, dict]:
        async with app_client(app) as client:
            assert events == ["startup"]
            response = await client.get("/greet")
            missing = await client.get("/nope")
        assert missing.status_code == 404
        return response.status_code, response.json()

    assert asyncio.run(scenario()) == (200, {"greeting": "hello"})
    assert events == ["startup", "shutdown"]


def test_refuses_what_is_not_an_app():
    async def scenario() -> None:
        async with app_client("main:app"):
            pass

    with pytest.raises(TypeError, match="ASGI app"):
        asyncio.run(scenario())
