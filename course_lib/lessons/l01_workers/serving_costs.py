"""Lesson 01's serving costs nobody shows: uvloop + httptools vs asyncio + h11, workers sized on a mixed load and a
connection budget, and wrk's figures beside the course's own load generator."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ...load import LoadResult, load_test
from ...servers import Server, ServerGroup
from .l01_served import MIX_CPU_ROUNDS, MIX_DB_HOLD_MS, MIX_IO_MS, MIX_SHARES

SERVED_DIR_NAME = "l01_served"

STACKS: dict[str, tuple[str, ...]] = {
    "asyncio + h11 (plain uvicorn)": ("--loop", "asyncio", "--http", "h11"),
    "uvloop + httptools (uvicorn[standard])": ("--loop", "uvloop", "--http", "httptools"),
}
"""The two ways to run uvicorn compared: the course's default, and what `--loop auto --http auto` picks once
`uvicorn[standard]` is installed."""

STACK_ROUTES: dict[str, str] = {"trivial route": "/io?ms=0", "I/O-bound route (20 ms await)": "/io?ms=20"}


def _served_dir() -> Any:
    from . import SERVED_DIR

    return SERVED_DIR


def _median(results: list[LoadResult]) -> LoadResult:
    """The round with the median throughput (the lower middle one for an even count)."""
    return sorted(results, key=lambda r: r.throughput)[(len(results) - 1) // 2]


@dataclass
class StackRun:
    """One server stack on one route: its median round under load (keep-alive) and every round."""

    stack: str
    route: str
    load: LoadResult
    rounds: list[LoadResult] = field(default_factory=list)
    command: list[str] = field(default_factory=list)


async def compare_stacks(stacks: dict[str, tuple[str, ...]] | None = None, routes: dict[str, str] | None = None, *,
                         rounds: int = 2, seconds: float = 0.6, concurrency: int = 50) -> list[StackRun]:
    """Serve `io_app` on one uvicorn worker per stack (side by side), then load each route on each stack in turn,
    interleaved round by round, with kept-alive connections; each (stack, route) keeps its median round."""
    stacks = stacks or STACKS
    routes = routes or STACK_ROUTES
    with ServerGroup() as group:
        servers = {name: group.start(f"{SERVED_DIR_NAME}:io_app", cwd=_served_dir(), extra_args=args)
                   for name, args in stacks.items()}
        await group.ready()
        results: dict[tuple[str, str], list[LoadResult]] = {(s, r): [] for s in stacks for r in routes}
        for running in servers.values():  # warm up
            await load_test(f"{running.url}/io?ms=0", concurrency=concurrency, requests=200, seconds=1,
                            keep_alive=True, progress=False)
        for _ in range(rounds):
            for route, path in routes.items():
                for name, running in servers.items():
                    results[(name, route)].append(await load_test(
                        f"{running.url}{path}", concurrency=concurrency, requests=200_000, seconds=seconds,
                        keep_alive=True, progress=False))
        return [StackRun(name, route, _median(bucket), bucket, servers[name].command)
                for (name, route), bucket in results.items()]


@dataclass
class MixedRun:
    """A worker count under the mixed load: its median round, and each worker's pool as the workers reported it."""

    workers: int
    load: LoadResult
    pool_size: int
    max_overflow: int
    pools: dict[int, dict[str, int]] = field(default_factory=dict)
    rounds: list[LoadResult] = field(default_factory=list)

    @property
    def p95_ms(self) -> float:
        """95th-percentile latency of the median round."""
        return self.load.latency_ms(95)

    @property
    def worst_case_connections(self) -> int:
        """What the database must accept if every worker fills its pool and overflow: workers × (size + overflow)."""
        return self.workers * (self.pool_size + self.max_overflow)

    @property
    def connections_opened(self) -> int:
        """Connections the workers really opened during the runs (SQLAlchemy "connect" events, summed)."""
        return sum(pool["opened"] for pool in self.pools.values())

    @property
    def peak_held(self) -> int:
        """Sum over workers of the most connections each held at once."""
        return sum(pool["peak_checked_out"] for pool in self.pools.values())


async def _pools_of(client: httpx.AsyncClient, url: str, workers: int) -> dict[int, dict[str, int]]:
    """Ask GET /pool over new connections until every worker has answered (the kernel picks who accepts)."""
    seen: dict[int, dict[str, int]] = {}
    for _ in range(10):
        answers = await asyncio.gather(*(client.get(f"{url}/pool") for _ in range(6 * workers)))
        for answer in answers:
            body = answer.json()
            seen[int(body["pid"])] = body
        if len(seen) >= workers:
            break
    return seen


async def sweep_mixed(db_url: str, counts: tuple[int, ...] = (1, 2, 3), *, pool_size: int = 5, max_overflow: int = 10,
                      rounds: int = 2, seconds: float = 0.8, concurrency: int = 40) -> list[MixedRun]:
    """Serve `mixed_app` (70 % awaited I/O, 15 % CPU on the loop, 15 % a pooled query) under `uvicorn --workers n`
    for each count at once, every worker with a pool of `pool_size` + `max_overflow` on `db_url`; load them
    interleaved with a new connection per request (spread over the workers); report throughput, latency and pools."""
    env = {"LAB_MIX_DB": db_url, "LAB_POOL_SIZE": str(pool_size), "LAB_MAX_OVERFLOW": str(max_overflow)}
    with ServerGroup() as group:
        servers = [group.start(f"{SERVED_DIR_NAME}:mixed_app", workers=n, cwd=_served_dir(), env=env) for n in counts]
        await group.ready()
        for running, n in zip(servers, counts, strict=True):  # warm every worker up
            await load_test(f"{running.url}/mix", concurrency=concurrency, requests=20 * n, seconds=1, progress=False)
        results: list[list[LoadResult]] = [[] for _ in counts]
        for _ in range(rounds):
            for running, bucket in zip(servers, results, strict=True):
                bucket.append(await load_test(f"{running.url}/mix", concurrency=concurrency, requests=200_000,
                                              seconds=seconds, progress=False))
        runs = []
        async with httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            for running, n, bucket in zip(servers, counts, results, strict=True):
                pools = await _pools_of(client, running.url, n)
                runs.append(MixedRun(n, _median(bucket), pool_size, max_overflow, pools, bucket))
    return runs


def describe_mix() -> str:
    """What one request of `mixed_app`'s GET /mix does, with the shares it draws them in."""
    return (f"GET /mix: {MIX_SHARES['io']:.0%} await {MIX_IO_MS:g} ms of I/O, {MIX_SHARES['cpu']:.0%} compute "
            f"{MIX_CPU_ROUNDS:,} sha256 rounds on the event loop, {MIX_SHARES['db']:.0%} run a query holding a pooled "
            f"connection {MIX_DB_HOLD_MS:g} ms (in the thread pool)")


def connection_budget(db_url: str, stated: int) -> tuple[int, str]:
    """The connections a database accepts from applications: PostgreSQL's `max_connections` minus its reserved
    slots, read from the server; SQLite has no such limit, so the `stated` budget (a typical managed plan's)."""
    url = make_url(db_url)
    if url.get_backend_name() != "postgresql":
        return stated, f"stated (SQLite has no max_connections; {stated} stands for a small managed PostgreSQL plan)"
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            total = int(conn.execute(text("SHOW max_connections")).scalar_one())
            reserved = int(conn.execute(text("SHOW superuser_reserved_connections")).scalar_one())
    finally:
        engine.dispose()
    return total - reserved, f"this PostgreSQL: max_connections {total} − {reserved} reserved for superusers"


# --------------------------------------------------------------------------- wrk beside load_test


@dataclass
class WrkResult:
    """What wrk printed, parsed: requests/s, latency percentiles (ms), socket errors and non-2xx/3xx answers."""

    command: list[str]
    output: str
    requests_per_s: float
    requests: int
    percentiles_ms: dict[str, float]
    socket_errors: dict[str, int]
    non_2xx_3xx: int


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _to_ms(value: str) -> float:
    """'812.00us', '1.23ms', '2.01s' → milliseconds."""
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip()).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS_MS[unit]


def parse_wrk(output: str, command: list[str] | None = None) -> WrkResult:
    """Read wrk's text output (run with `--latency`) into a WrkResult; raise ValueError when it is not wrk's."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if not rate or not total:
        raise ValueError(f"not wrk output (no 'Requests/sec' line): {output[:200]!r}")
    percentiles = {f"p{m.group(1)}": _to_ms(m.group(2))
                   for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+(?:us|ms|s|m))\s*$", output, re.MULTILINE)}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True)) \
        if errors else {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    non_ok = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(command or [], output, float(rate.group(1)), int(total.group(1)), percentiles, socket_errors,
                     int(non_ok.group(1)) if non_ok else 0)


def wrk_command(url: str, *, connections: int = 50, seconds: int = 2, threads: int = 1,
                keep_alive: bool = True) -> list[str]:
    """The wrk command line: `threads` threads holding `connections` connections for `seconds`, with the latency
    distribution; without keep-alive, every request asks the server to close (a new connection each)."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if not keep_alive:
        command += ["-H", "Connection: close"]
    return [*command, url]


def wrk_available() -> bool:
    """True when the `wrk` binary is on PATH (Debian/Ubuntu: `apt-get install wrk`)."""
    return shutil.which("wrk") is not None


async def run_wrk(url: str, **options: Any) -> WrkResult | None:
    """Run wrk against `url` (a server on this machine) without blocking the event loop; None when not installed."""
    if not wrk_available():
        return None
    command = wrk_command(url, **options)
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return parse_wrk(out.decode(errors="replace"), command)


@dataclass
class ToolRun:
    """One load of the same server, by wrk or by `load_test`, in one mode (keep-alive or a new connection each)."""

    tool: str
    keep_alive: bool
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


async def wrk_beside_load_test(server: Server, path: str = "/io?ms=0", *, connections: int = 50,
                               seconds: int = 1) -> tuple[list[ToolRun], list[WrkResult]]:
    """Load `server` with wrk and with `load_test`, kept-alive then a new connection per request, same concurrency
    and duration; wrk's runs are skipped (and its list empty) when wrk is not installed."""
    url = f"{server.url}{path}"
    runs: list[ToolRun] = []
    raw: list[WrkResult] = []
    for keep in (True, False):
        wrk = await run_wrk(url, connections=connections, seconds=seconds, keep_alive=keep)
        if wrk is not None:
            raw.append(wrk)
            runs.append(ToolRun("wrk", keep, wrk.requests_per_s, wrk.percentiles_ms.get("p50", float("nan")),
                                wrk.percentiles_ms.get("p99", float("nan")),
                                sum(wrk.socket_errors.values()) + wrk.non_2xx_3xx))
        ours = await load_test(url, concurrency=connections, requests=200_000, seconds=seconds, keep_alive=keep,
                               progress=False)
        runs.append(ToolRun("load_test", keep, ours.throughput, ours.p50_ms, ours.p99_ms,
                            ours.errors + sum(n for code, n in ours.statuses.items() if code >= 400)))
    return runs, raw


__all__ = ["STACKS", "STACK_ROUTES", "StackRun", "compare_stacks", "MixedRun", "sweep_mixed", "describe_mix", "connection_budget",
           "WrkResult", "parse_wrk", "wrk_command", "wrk_available", "run_wrk", "ToolRun", "wrk_beside_load_test"]
