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


# ------------------------------------------------------------------ keep-alive, response framing, own CPU


class TinyServer:
    """An asyncio HTTP server on 127.0.0.1 that counts the connections it accepted and answers in a chosen framing."""

    def __init__(self, framing: str = "length", close_after: int = 0) -> None:
        self.framing, self.close_after, self.accepted, self.port = framing, close_after, 0, 0

    async def __aenter__(self) -> TinyServer:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def response(self, close: bool) -> bytes:
        body = b'{"hello": "world"}'
        if self.framing == "length":
            return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
                    % (len(body), b"Connection: close\r\n" if close else b"", body))
        if self.framing == "chunked":
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:5], body[5:]))
            return b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        if self.framing == "silent":
            return b""
        if self.framing == "until-close":
            return b"HTTP/1.0 202 Accepted\r\n\r\n" + body
        return b"garbage, not HTTP\r\n\r\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                close = b"connection: close" in head.lower() or self.framing in ("until-close", "garbage")
                writer.write(self.response(close))
                await writer.drain()
                served += 1
                if close or served == self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _against(server: TinyServer, **options) -> object:
    async with server:
        return await load_test(server.url, progress=False, **options)


def test_keep_alive_reuses_one_connection_per_client():
    server = TinyServer()
    result = asyncio.run(_against(server, concurrency=4, requests=200, keep_alive=True))
    assert result.requests == 200 and result.errors == 0 and result.statuses == {200: 200}
    assert server.accepted == result.connections == 4
    assert "keep-alive" in repr(result)


def test_default_opens_a_connection_per_request():
    server = TinyServer()
    result = asyncio.run(_against(server, concurrency=4, requests=60))
    assert result.requests == 60 and result.errors == 0
    assert server.accepted == result.connections == 60
    assert not result.keep_alive and "Connection: close" in repr(result)


def test_keep_alive_reconnects_when_the_server_drops_an_idle_connection():
    server = TinyServer(close_after=3)  # closes after 3 responses without saying so
    result = asyncio.run(_against(server, concurrency=2, requests=60, keep_alive=True))
    assert result.requests == 60 and result.errors == 0
    assert 20 <= server.accepted <= 60


@pytest.mark.parametrize("framing, status", [("chunked", 201), ("until-close", 202)])
@pytest.mark.parametrize("keep_alive", [True, False])
def test_reads_chunked_and_close_delimited_bodies(framing, status, keep_alive):
    result = asyncio.run(_against(TinyServer(framing), concurrency=3, requests=30, keep_alive=keep_alive))
    assert result.statuses == {status: 30} and result.errors == 0


def test_a_response_that_is_not_http_is_an_error_not_a_crash():
    result = asyncio.run(_against(TinyServer("garbage"), concurrency=2, requests=10, timeout=5))
    assert result.errors == 10 and result.requests == 0


def test_a_server_that_never_answers_times_out_as_errors():
    import time

    started = time.perf_counter()
    result = asyncio.run(_against(TinyServer("silent"), concurrency=2, requests=4, timeout=0.3, keep_alive=True))
    assert result.errors == 4 and result.requests == 0
    assert time.perf_counter() - started < 5


def test_reports_its_own_cpu_per_request(server):
    result = asyncio.run(load_test(server.url + "/", concurrency=8, requests=400, keep_alive=True, progress=False))
    assert result.requests == 400 and result.errors == 0 and result.connections == 8  # uvicorn kept them open
    assert result.generator_cpu_s > 0 and 0 < result.cpu_per_request_us < 1e5
    assert result.cores >= 1 and 0 < result.generator_share_of_cores <= result.generator_cpu_share
    assert "µs CPU/request" in repr(result)


def test_flags_a_generator_that_takes_a_significant_share_of_the_cores():
    from course_lib.load import SIGNIFICANT_SHARE, LoadResult

    busy = LoadResult("http://127.0.0.1/", 10, duration_s=2.0, latencies_s=[0.001] * 1000, generator_cpu_s=1.2, cores=2)
    assert busy.generator_significant and busy.generator_cpu_share == pytest.approx(0.6)
    assert "0.60 of a core" in busy.generator_note and "30% of the 2 usable cores" in busy.generator_note
    assert "1,200 µs" in busy.generator_note and "significant" in repr(busy)
    quiet = LoadResult("http://127.0.0.1/", 10, duration_s=2.0, latencies_s=[0.01] * 100,
                       generator_cpu_s=2.0 * SIGNIFICANT_SHARE * 0.9, cores=2)
    assert not quiet.generator_significant and quiet.generator_note == ""
