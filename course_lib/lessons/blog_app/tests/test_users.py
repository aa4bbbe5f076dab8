"""The users routes answer from whatever database get_db hands them."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def test_list_is_paginated(client: httpx.AsyncClient) -> None:
    """limit and offset select a page; limit above 100 is rejected."""
    page = (await client.get("/users", params={"limit": 5, "offset": 10})).json()
    assert [u["id"] for u in page] == [11, 12]
    assert (await client.get("/users", params={"limit": 101})).status_code == 422


async def test_read_user_counts_posts(client: httpx.AsyncClient) -> None:
    """A known user comes back with their post count."""
    body = (await client.get("/users/3")).json()
    assert body["id"] == 3 and body["post_count"] == 3


async def test_unknown_user_is_404(client: httpx.AsyncClient) -> None:
    """Unknown users are 404 on both routes."""
    assert (await client.get("/users/999")).status_code == 404
    assert (await client.get("/users/999/posts")).status_code == 404


async def test_readiness_sees_the_real_database(client: httpx.AsyncClient) -> None:
    """Overriding get_db does not fool /health: it pings the configured (here unreachable) database."""
    assert (await client.get("/health/live")).status_code == 200
    response = await client.get("/health")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "down"
    assert "nonexistent-folder" not in response.text
