"""A small, bounded HTTP load generator for servers on this machine (loopback only).

Each client is a non-blocking socket driven by the event loop's reader/writer callbacks (no transport, no HTTP
library): the request bytes are built once, a response ends at its Content-Length, its last chunk or the server's
close. `keep_alive=True` reuses each client's connection the way wrk
does; the default (`Connection: close`, a new connection per request) is what the lessons measured so far. The
result reports the generator's own CPU per request, and `generator_significant` says when that CPU is a share of
the machine a throughput figure should mention.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .timing import percentile

__all__ = ["LoadResult", "load_test", "SIGNIFICANT_SHARE"]

MAX_REQUESTS = 200_000
MAX_SECONDS = 120.0
SIGNIFICANT_SHARE = 0.25
"""The generator is a significant share of the machine when it used more than this fraction of one core."""


def _cores() -> int:
    from .servers import usable_cores

    return usable_cores()


@dataclass
class LoadResult:
    """What a load test measured: throughput, latency percentiles, errors, and the generator's own CPU use."""

    url: str
    concurrency: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    generator_cpu_s: float = 0.0
    keep_alive: bool = False
    connections: int = 0
    cores: int = 0

    @property
    def requests(self) -> int:
        """Requests that got a complete HTTP response."""
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        """Completed requests per second over the whole run."""
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def latency_ms(self, q: float) -> float:
        """The q-th latency percentile in milliseconds (nan when nothing completed)."""
        return percentile(self.latencies_s, q) * 1000 if self.latencies_s else float("nan")

    @property
    def p50_ms(self) -> float:
        """Median latency in milliseconds."""
        return self.latency_ms(50)

    @property
    def p99_ms(self) -> float:
        """99th-percentile latency in milliseconds."""
        return self.latency_ms(99)

    @property
    def generator_cpu_share(self) -> float:
        """Fraction of one core the generator's process used during the run."""
        return self.generator_cpu_s / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def cpu_per_request_us(self) -> float:
        """The generator's own CPU time per attempted request, in microseconds (nan when nothing was attempted)."""
        attempted = self.requests + self.errors
        return self.generator_cpu_s / attempted * 1e6 if attempted else float("nan")

    @property
    def generator_share_of_cores(self) -> float:
        """Fraction of all usable cores the generator used: what the server under test did not get."""
        return self.generator_cpu_share / (self.cores or _cores())

    @property
    def generator_significant(self) -> bool:
        """True when the generator used more than SIGNIFICANT_SHARE of one core: a throughput figure should say so."""
        return self.generator_cpu_share > SIGNIFICANT_SHARE

    @property
    def generator_note(self) -> str:
        """A sentence for a lesson's prose when the generator was significant, else ""."""
        if not self.generator_significant:
            return ""
        cores = self.cores or _cores()
        return (f"the load generator itself used {self.generator_cpu_share:.2f} of a core "
                f"({self.generator_share_of_cores:.0%} of the {cores} usable cores, "
                f"{self.cpu_per_request_us:,.0f} µs of CPU per request), CPU the server did not get")

    def __repr__(self) -> str:
        codes = ", ".join(f"{code}×{n}" for code, n in sorted(self.statuses.items()))
        mode = "keep-alive" if self.keep_alive else "Connection: close"
        return (
            f"{self.throughput:,.0f} req/s over {self.duration_s:.1f} s at concurrency {self.concurrency} ({mode}): "
            f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms; status {codes or '—'}; errors {self.errors}; "
            f"generator used {self.generator_cpu_share:.0%} of a core ({self.cpu_per_request_us:,.0f} µs CPU/request)"
            + (" — significant" if self.generator_significant else "")
        )


def _loopback_target(url: str) -> tuple[str, int, str, str]:
    """(host as written, port, path with query, IP address to connect to) of a loopback http:// URL."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"load_test takes an http:// URL on this machine, not {url!r}")
    host = parts.hostname
    try:
        ip = socket.gethostbyname(host) if host != "::1" else host
        address = ipaddress.ip_address(ip)
    except (socket.gaierror, ValueError) as error:
        raise ValueError(f"load_test: cannot resolve {host!r}") from error
    if not address.is_loopback:
        raise ValueError(f"load_test only targets servers on this machine (127.0.0.1 / localhost), not {host!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return host, parts.port or 80, path, ip


def _header_value(head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (lower case, with colon) in a lower-cased header block, or None."""
    at = head.find(b"\r\n" + name)
    if at < 0:
        return None
    start = at + 2 + len(name)
    end = head.find(b"\r\n", start)
    return head[start:end if end >= 0 else len(head)].strip()


def _chunked_end(buffer: bytearray, pos: int) -> int | None:
    """Where a chunked body starting at `pos` ends, or None while it is incomplete."""
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)
            return None if trailer_end < 0 else trailer_end + 4
        pos = line_end + 2 + size + 2
        if pos > len(buffer):
            return None


def parse_response(buffer: bytearray, eof: bool = False) -> tuple[int, int, bool] | None:
    """(status, bytes used, server keeps the connection) of the complete response at the head of `buffer`, or None."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buffer[:head_end + 2]).lower()
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit() or not status_line[0].startswith(b"http/"):
        raise ConnectionError("no HTTP status line in the response")
    status = int(status_line[1])
    keep = status_line[0] == b"http/1.1" and _header_value(head, b"connection:") != b"close"
    body = head_end + 4
    length = _header_value(head, b"content-length:")
    if length is not None:
        end = body + int(length)
        return (status, end, keep) if len(buffer) >= end else None
    if b"chunked" in (_header_value(head, b"transfer-encoding:") or b""):
        chunked_end = _chunked_end(buffer, body)
        return None if chunked_end is None else (status, chunked_end, keep)
    if status in (204, 304) or 100 <= status < 200:
        return status, body, keep
    return (status, len(buffer), False) if eof else None  # the body runs until the server closes


class _Dropped(ConnectionError):
    """The connection ended before a full response; `received` says whether any of it had arrived."""

    def __init__(self, received: bool) -> None:
        super().__init__("the server closed the connection before a full response")
        self.received = received


class _Client:
    """One simulated client: a non-blocking socket watched by the event loop (no transport, no HTTP library).

    The socket stays registered for reading while it is open (no epoll change per request); `waiter` is the future
    the client awaits, which the watchdog fails with TimeoutError when a request takes longer than the timeout.
    """

    __slots__ = ("loop", "sock", "fd", "waiter", "started", "watching", "idle_wakes")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sock: socket.socket | None = None
        self.fd = -1
        self.waiter: asyncio.Future[None] | None = None
        self.started = 0.0
        self.watching = False
        self.idle_wakes = 0

    async def connect(self, ip: str, port: int) -> None:
        """Open a new connection to (ip, port)."""
        self.close()
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        self.sock, self.fd = sock, sock.fileno()
        try:
            sock.connect((ip, port))
        except BlockingIOError:
            await self._writable()
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error)) from None

    async def _writable(self) -> None:
        self.waiter = self.loop.create_future()
        self.loop.add_writer(self.fd, self._wake)
        try:
            await self.waiter
        finally:
            self.loop.remove_writer(self.fd)

    async def _readable(self) -> None:
        self.waiter = self.loop.create_future()
        if not self.watching:
            self.loop.add_reader(self.fd, self._wake)
            self.watching = True
        await self.waiter

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
            self.idle_wakes = 0
        else:
            self.idle_wakes += 1
            if self.idle_wakes > 2 and self.watching:  # readable with nobody reading: stop watching until asked
                self.loop.remove_reader(self.fd)
                self.watching = False

    def expire(self, now: float, timeout: float) -> None:
        """Fail the pending wait when the current request started more than `timeout` seconds ago."""
        waiter = self.waiter
        if waiter is not None and not waiter.done() and now - self.started > timeout:
            waiter.set_exception(TimeoutError(f"no response in {timeout:g} s"))

    async def exchange(self, request: bytes) -> tuple[int, bool]:
        """Send `request`, read one full response: (status, the server keeps the connection open)."""
        sock = self.sock
        assert sock is not None
        view = memoryview(request)
        while view:
            try:
                view = view[sock.send(view):]
            except BlockingIOError:
                await self._writable()
        buffer = bytearray()
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                await self._readable()
                continue
            except ConnectionResetError:
                raise _Dropped(bool(buffer)) from None
            if not data:
                parsed = parse_response(buffer, eof=True)
                if parsed is None:
                    raise _Dropped(bool(buffer))
                return parsed[0], False
            buffer += data
            parsed = parse_response(buffer)
            if parsed is not None:
                return parsed[0], parsed[2]

    async def until_closed(self) -> None:
        """Read until the server closes (so its side, not ours, keeps the TIME_WAIT)."""
        assert self.sock is not None
        while True:
            try:
                if not self.sock.recv(65536):
                    return
            except BlockingIOError:
                await self._readable()
            except ConnectionResetError:
                return

    def close(self) -> None:
        """Close the connection, if any."""
        if self.sock is not None:
            if self.watching:
                self.loop.remove_reader(self.fd)
                self.watching = False
            self.sock.close()
            self.sock, self.fd = None, -1


async def load_test(
    url: str,
    *,
    concurrency: int = 20,
    requests: int = 2_000,
    seconds: float = 5.0,
    timeout: float = 30.0,
    progress: bool | None = None,
    keep_alive: bool = False,
) -> LoadResult:
    """GET `url` from `concurrency` clients until `requests` or `seconds` run out; `keep_alive=True` reuses each
    client's connection (like wrk), the default opens a new connection per request (`Connection: close`)."""
    host, port, path, ip = _loopback_target(url)
    if not 1 <= concurrency <= 1_000:
        raise ValueError("concurrency must be from 1 to 1000")
    requests = min(max(1, requests), MAX_REQUESTS)
    seconds = min(max(0.1, seconds), MAX_SECONDS)
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               + ("" if keep_alive else "Connection: close\r\n") + "\r\n").encode()
    result = LoadResult(url=url, concurrency=concurrency, duration_s=0.0, keep_alive=keep_alive, cores=_cores())
    loop = asyncio.get_running_loop()
    remaining = requests
    started = time.perf_counter()
    deadline = started + seconds
    cpu_started = time.process_time()
    clock = time.perf_counter

    async def connect(one: _Client) -> None:
        await one.connect(ip, port)
        result.connections += 1

    async def client(one: _Client) -> None:
        nonlocal remaining
        try:
            while remaining > 0 and clock() < deadline:
                remaining -= 1
                one.started = t0 = clock()
                try:
                    reused = one.sock is not None
                    if not reused:
                        await connect(one)
                    try:
                        status, reusable = await one.exchange(request)
                    except (_Dropped, BrokenPipeError) as error:
                        if not reused or getattr(error, "received", False):
                            raise
                        await connect(one)  # the server dropped an idle connection: retry once on a new one
                        status, reusable = await one.exchange(request)
                    latency = clock() - t0
                    if not (keep_alive and reusable):
                        if not keep_alive:
                            await one.until_closed()
                        one.close()
                except (OSError, TimeoutError, ConnectionError, ValueError):
                    result.errors += 1
                    one.close()
                    continue
                result.latencies_s.append(latency)
                result.statuses[status] += 1
        finally:
            one.close()

    async def watchdog(clients: list[_Client]) -> None:
        while True:
            await asyncio.sleep(min(0.25, timeout / 10))
            now = clock()
            for one in clients:
                one.expire(now, timeout)

    bar = _progress_bar(seconds) if (progress if progress is not None else seconds > 2) else None
    clients = [_Client(loop) for _ in range(concurrency)]
    tasks = [asyncio.create_task(client(one)) for one in clients]
    guard = asyncio.create_task(watchdog(clients))
    try:
        if bar is None:
            await asyncio.gather(*tasks)
        else:
            pending = asyncio.gather(*tasks)
            while not pending.done():
                bar.value = min(100, int(100 * max(requests - remaining, 0) / requests),
                                int(100 * (time.perf_counter() - started) / seconds))
                await asyncio.wait([pending], timeout=0.2)
            await pending
    finally:
        for task in (*tasks, guard):
            task.cancel()
        if bar is not None:
            bar.close()
    result.duration_s = time.perf_counter() - started
    result.generator_cpu_s = time.process_time() - cpu_started
    return result


def _progress_bar(seconds: float) -> Any:
    """An ipywidgets progress bar when running in a Jupyter kernel, else None."""
    try:
        import ipywidgets
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is None or not hasattr(get_ipython(), "kernel"):
            return None
        bar = ipywidgets.IntProgress(value=0, min=0, max=100, description=f"load {seconds:g} s")
        display(bar)
        return bar
    except ImportError:
        return None
