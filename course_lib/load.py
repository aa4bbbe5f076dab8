"""A small, bounded HTTP load generator for servers on this machine (loopback only)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .timing import percentile

__all__ = ["LoadResult", "load_test"]

MAX_REQUESTS = 200_000
MAX_SECONDS = 120.0


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

    def __repr__(self) -> str:
        codes = ", ".join(f"{code}×{n}" for code, n in sorted(self.statuses.items()))
        return (
            f"{self.throughput:,.0f} req/s over {self.duration_s:.1f} s at concurrency {self.concurrency}: "
            f"p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms; status {codes or '—'}; errors {self.errors}; "
            f"generator used {self.generator_cpu_share:.0%} of a core"
        )


def _loopback_target(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"load_test takes an http:// URL on this machine, not {url!r}")
    host = parts.hostname
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host) if host != "::1" else host)
    except (socket.gaierror, ValueError) as error:
        raise ValueError(f"load_test: cannot resolve {host!r}") from error
    if not address.is_loopback:
        raise ValueError(f"load_test only targets servers on this machine (127.0.0.1 / localhost), not {host!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return host, parts.port or 80, path


async def _one_request(host: str, port: int, request: bytes, timeout: float) -> int:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request)
            await writer.drain()
            data = await reader.read()  # "Connection: close": the server closes after the response
        finally:
            writer.close()
    status_line = data.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ConnectionError("no HTTP status line in the response")
    return int(status_line[1])


async def load_test(
    url: str,
    *,
    concurrency: int = 20,
    requests: int = 2_000,
    seconds: float = 5.0,
    timeout: float = 30.0,
    progress: bool | None = None,
) -> LoadResult:
    """GET `url` from `concurrency` clients, a new connection per request, until `requests` or `seconds` run out."""
    host, port, path = _loopback_target(url)
    if not 1 <= concurrency <= 1_000:
        raise ValueError("concurrency must be from 1 to 1000")
    requests = min(max(1, requests), MAX_REQUESTS)
    seconds = min(max(0.1, seconds), MAX_SECONDS)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    result = LoadResult(url=url, concurrency=concurrency, duration_s=0.0)
    remaining = requests
    started = time.perf_counter()
    deadline = started + seconds
    cpu_started = time.process_time()

    async def client() -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            t0 = time.perf_counter()
            try:
                status = await _one_request(host, port, request, timeout)
            except (OSError, TimeoutError, ConnectionError):
                result.errors += 1
                continue
            result.latencies_s.append(time.perf_counter() - t0)
            result.statuses[status] += 1

    bar = _progress_bar(seconds) if (progress if progress is not None else seconds > 2) else None
    tasks = [asyncio.create_task(client()) for _ in range(concurrency)]
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
        for task in tasks:
            task.cancel()
        if bar is not None:
            bar.close()
    result.duration_s = time.perf_counter() - started
    result.generator_cpu_s = time.process_time() - cpu_started
    return result


def _progress_bar(seconds: float):  # type: ignore[no-untyped-def]
    """An ipywidgets progress bar when running in a Jupyter kernel, else None."""
    try:
        from IPython import get_ipython
        from IPython.display import display
        import ipywidgets

        if get_ipython() is None or not hasattr(get_ipython(), "kernel"):
            return None
        bar = ipywidgets.IntProgress(value=0, min=0, max=100, description=f"load {seconds:g} s")
        display(bar)
        return bar
    except ImportError:
        return None
