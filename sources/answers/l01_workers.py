"""Reference answers of 01.unblock, 01.timeout-client and 01.workers: spliced into solutions/01_workers.ipynb by the
build, imported by the tests."""

# ruff: noqa: B904  (the taught 504 is raised without `from`, as the notebook shows it)

from __future__ import annotations

from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, HTTPException, Request

from course_lib import usable_cores
from course_lib.lessons.l01_workers import slow_lookup


def make_items_app() -> FastAPI:
    """GET /items/{item_id} with the blocking lookup off the event loop."""
    app = FastAPI()

    # --8<-- [start:unblock]
    @app.get("/items/{item_id}")
    def read_item(item_id: int) -> dict:
        return slow_lookup(item_id)  # plain `def`: FastAPI runs it in the thread pool
    # --8<-- [end:unblock]

    return app


def make_weather_app(upstream_url: str) -> FastAPI:
    """GET /weather through one shared AsyncClient made in lifespan, answering 504 when the upstream hangs."""
    # --8<-- [start:timeout-client]
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with httpx.AsyncClient(timeout=httpx.Timeout(1.0)) as client:
            app.state.client = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/weather")
    async def weather(request: Request) -> dict:
        try:
            response = await request.app.state.client.get(upstream_url)
        except httpx.TimeoutException:
            raise HTTPException(504, "the weather service did not answer in time")
        return response.json()

    return app
    # --8<-- [end:timeout-client]


# --8<-- [start:workers]
server_config = {"server": "gunicorn", "workers": usable_cores()}
# --8<-- [end:workers]
