"""The load generator stays on loopback, respects its bounds, and counts errors."""

from __future__ import annotations

import asyncio

import pytest

from course_lib import load_test, serve
from course_lib.servers import free_port


@pytest.fixture(scope="module")
def server():
    with serve("course_lib.lessons.l00_welcome:hello_app") as running:
        yield running


def test_stops_after_the_requested_number(server):
    result = asyncio.run(load_test(server.url + "/", concurrency=8, requests=200, seconds=30))
    assert result.requests == 200 and result.errors == 0
    assert result.statuses == {200: 200}
    assert result.throughput > 0 and result.p99_ms >= result.p50_ms > 0
    assert "req/s" in repr(result)


def test_stops_after_the_time_limit(server):
    result = asyncio.run(load_test(server.url + "/", concurrency=4, requests=10_000_000, seconds=0.5))
    assert result.requests > 0
    assert result.duration_s < 10 * 0.5  # the time limit ended it, not the 10 million requests


def test_counts_status_codes_of_other_paths(server):
    result = asyncio.run(load_test(server.url + "/missing?x=1", concurrency=2, requests=10))
    assert result.statuses == {404: 10}


def test_connection_errors_are_counted_not_raised():
    result = asyncio.run(load_test(f"http://127.0.0.1:{free_port()}/", concurrency=2, requests=6))
    assert result.errors == 6 and result.requests == 0


@pytest.mark.parametrize("url", ["http://10.0.0.1/", "http://192.168.1.1:8000/", "https://127.0.0.1/", "ftp://x"])
def test_refuses_anything_but_loopback_http(url):
    with pytest.raises(ValueError):
        asyncio.run(load_test(url, requests=1))
