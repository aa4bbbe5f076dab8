"""Lesson 01 (workers): apps served for real, burst and worker-sweep helpers, graders and benchmark rows.

The apps real servers run live in `l01_served.py` next to this file (served as `l01_served:cpu_app` from
this folder, so a worker does not import the whole course toolkit); the factories here build the apps the
notebook runs in-process.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
import httpx
from fastapi import FastAPI, HTTPException, Request
from sqlalchemy import create_engine, select
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ...bench_rows import BenchRow
from ...client import app_client
from ...db import thread_safe_connect_args
from ...grading import Checking, Fail, _explain_exception, exercise
from ...load import LoadResult, load_test
from ...servers import Server, ServerGroup, serve, usable_cores
from ...timing import median_ms
from .l01_served import CPU_ROUNDS, cpu_app, io_app, upstream_app
from .serving_costs import *  # noqa: F403  (uvloop vs asyncio, the mixed load, wrk)
from .serving_costs import __all__ as _serving_costs_all

# --------------------------------------------------------------------------- apps served by real servers

SERVED_DIR = Path(__file__).resolve().parent
SERVED = "l01_served"


def serve_app(name: str, *, workers: int = 1, server: Literal["uvicorn", "gunicorn"] = "uvicorn",
              extra_args: tuple[str, ...] = (), announce: bool | None = None) -> Server:
    """Serve one of `l01_served`'s apps ("cpu_app", "io_app", "upstream_app") under a real server on loopback."""
    return serve(f"{SERVED}:{name}", workers=workers, server=server, cwd=SERVED_DIR, extra_args=extra_args,
                 announce=announce)


@dataclass
class KeepAliveRun:
    """Sequential requests to one trivial route: median ms on one reused connection, and with a new one each."""

    label: str
    keep_alive_ms: float
    new_connection_ms: float


async def keep_alive_latency(configs: Mapping[str, tuple[Literal["uvicorn", "gunicorn"], int]],
                             n: int = 60) -> list[KeepAliveRun]:
    """For each label → (server, workers): serve `io_app` and time `n` sequential GET /io?ms=0, first on one
    kept-alive connection (as browsers, proxies and httpx clients do), then with `Connection: close`."""
    runs: list[KeepAliveRun] = []
    for label, (server, workers) in configs.items():
        with serve_app("io_app", workers=workers, server=server, announce=False) as running:
            url = f"{running.url}/io?ms=0"
            timings: dict[str, list[float]] = {"keep": [], "close": []}
            for mode, headers in (("keep", {}), ("close", {"Connection": "close"})):
                async with httpx.AsyncClient(headers=headers) as client:
                    for _ in range(5):  # warm: every worker has answered, the connection is open
                        await client.get(url)
                    for _ in range(n):
                        start = time.perf_counter()
                        (await client.get(url)).raise_for_status()
                        timings[mode].append(time.perf_counter() - start)
        runs.append(KeepAliveRun(label, median_ms(timings["keep"]), median_ms(timings["close"])))
    return runs


def listener_protocols() -> dict[str, int]:
    """The `proto` of the listening socket each way of starting uvicorn makes (asyncio sets TCP_NODELAY on accepted
    connections only when it reads IPPROTO_TCP, 6, there): uvicorn's own bind (used by --workers) vs asyncio's."""
    import socket

    import uvicorn

    bound = uvicorn.Config(io_app, host="127.0.0.1", port=0, log_config=None).bind_socket()  # no logging setup
    proto_bound = bound.proto
    bound.close()
    family, kind, proto, _, _ = socket.getaddrinfo("127.0.0.1", 0, type=socket.SOCK_STREAM)[0]
    return {"uvicorn --workers N (Config.bind_socket)": proto_bound, "uvicorn, 1 worker (asyncio's getaddrinfo)": proto}


def serve_upstream() -> Server:
    """Start the slow upstream on loopback (one uvicorn worker, 1 s graceful shutdown so hung requests end).

    It stands for someone else's service, so no docs link is shown for it."""
    return serve_app("upstream_app", extra_args=("--timeout-graceful-shutdown", "1"), announce=False)


# --------------------------------------------------------------------------- measuring helpers


@dataclass
class Burst:
    """`n` requests sent at once: wall time for all of them, each latency, and the status codes."""

    n: int
    wall_s: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    bodies: list[Any] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        """Median latency of the burst's requests."""
        return median_ms(self.latencies_s) if self.latencies_s else float("nan")

    def __repr__(self) -> str:
        codes = ", ".join(f"{c}×{k}" for c, k in sorted(self.statuses.items()))
        return f"{self.n} concurrent requests: all done in {self.wall_s * 1000:,.0f} ms; status {codes}"


async def burst(client: httpx.AsyncClient, paths: list[str] | str, n: int | None = None,
                timeout: float = 30.0) -> Burst:
    """Send the requests all at once (one per path, or `n` copies of one path) and time them."""
    targets = [paths] * (n or 1) if isinstance(paths, str) else list(paths)
    latencies: list[float] = [0.0] * len(targets)
    responses: list[httpx.Response | None] = [None] * len(targets)

    async def one(i: int, path: str) -> None:
        t0 = time.perf_counter()
        responses[i] = await client.get(path)
        latencies[i] = time.perf_counter() - t0

    started = time.perf_counter()
    async with asyncio.timeout(timeout):
        await asyncio.gather(*(one(i, p) for i, p in enumerate(targets)))
    wall = time.perf_counter() - started
    result = Burst(len(targets), wall, latencies)
    for response in responses:
        assert response is not None
        result.statuses[response.status_code] += 1
        try:
            result.bodies.append(response.json())
        except ValueError:
            result.bodies.append(response.text)
    return result


@dataclass
class WorkerRun:
    """One server configuration under load: the median of its interleaved load tests and each process's memory."""

    workers: int
    server: str
    load: LoadResult
    memory_mib: dict[int, float]
    worker_pids_seen: int
    command: list[str] = field(default_factory=list)
    rounds: list[LoadResult] = field(default_factory=list)

    @property
    def total_mib(self) -> float:
        """Resident memory of the whole server process group."""
        return sum(self.memory_mib.values())


async def sweep_workers(counts: tuple[int, ...] = (1, 2, 3), *, server: Literal["uvicorn", "gunicorn"] = "uvicorn",
                        rounds: int = 3, seconds: float = 1.0, concurrency: int = 20,
                        rounds_of_work: int = CPU_ROUNDS) -> list[WorkerRun]:
    """Serve `cpu_app` with each worker count at once, then load them interleaved (1, 2, 3, 1, 2, 3 …).

    Interleaving lets whatever else the machine does hit every configuration alike; each keeps its median round
    (the lower middle one for an even count), not its luckiest. The servers start side by side, as a group that
    stops them all however the call ends (an interrupt lands within a poll, not after every start-up).
    """
    with ServerGroup() as group:
        servers = [group.start(f"{SERVED}:cpu_app", workers=n, server=server, cwd=SERVED_DIR) for n in counts]
        await group.ready()
        urls = [f"{s.url}/cpu?rounds={rounds_of_work}" for s in servers]
        for url, n in zip(urls, counts, strict=True):  # warm every worker up
            await load_test(url, concurrency=concurrency, requests=10 * n, seconds=1, progress=False)
        results: list[list[LoadResult]] = [[] for _ in counts]
        for _ in range(rounds):
            for url, bucket in zip(urls, results, strict=True):
                bucket.append(await load_test(url, concurrency=concurrency, requests=100_000, seconds=seconds,
                                              progress=False))
        runs = []
        fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection each time: spread over workers
        async with httpx.AsyncClient(timeout=5, limits=fresh) as client:
            for running, n, bucket in zip(servers, counts, results, strict=True):
                pids: set[int] = set()
                for _ in range(5):  # the kernel hands each connection to whichever worker accepts first
                    answers = await asyncio.gather(*(client.get(f"{running.url}/cpu") for _ in range(8 * n)))
                    pids |= {answer.json()["pid"] for answer in answers}  # busy workers leave accepts to others
                    if len(pids) >= n:
                        break
                median = sorted(bucket, key=lambda r: r.throughput)[(len(bucket) - 1) // 2]
                runs.append(WorkerRun(n, server, median, running.processes(), len(pids), running.command, bucket))
    return runs


def deprecation_warning_of_uvicorn_workers() -> str:
    """Import the old `uvicorn.workers` module in a fresh interpreter and return the warning it prints."""
    done = subprocess.run([sys.executable, "-W", "always", "-c", "import uvicorn.workers"],
                          capture_output=True, text=True, timeout=60)
    lines = [line.strip() for line in done.stderr.splitlines() if "Warning" in line or "uvicorn-worker" in line]
    return "\n".join(lines) or "(no warning: this uvicorn no longer ships uvicorn.workers)"


# --------------------------------------------------------------------------- in-process demo apps

SleepKind = Literal["async def + time.sleep", "def + time.sleep", "async def + await asyncio.sleep"]


def make_sleepy_app(kind: SleepKind, ms: float = 50) -> FastAPI:
    """An app whose GET /work waits `ms` milliseconds in one of three ways (the classic mistake is the first)."""
    app = FastAPI(title=kind)
    if kind == "async def + time.sleep":
        @app.get("/work")
        async def work_blocking() -> dict[str, str]:
            time.sleep(ms / 1000)  # blocks the event loop: nothing else runs meanwhile
            return {"done": kind}
    elif kind == "def + time.sleep":
        @app.get("/work")
        def work_threaded() -> dict[str, str]:
            time.sleep(ms / 1000)  # runs in the thread pool: the loop stays free
            return {"done": kind}
    elif kind == "async def + await asyncio.sleep":
        @app.get("/work")
        async def work_async() -> dict[str, str]:
            await asyncio.sleep(ms / 1000)  # yields to the loop while waiting
            return {"done": kind}
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return app


def make_threadpool_app(ms: float = 100, tokens: int | None = None) -> FastAPI:
    """GET /work is a blocking `def` endpoint; with `tokens`, lifespan resizes the thread pool (and restores it)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        before = limiter.total_tokens
        if tokens is not None:
            limiter.total_tokens = tokens
        try:
            yield
        finally:
            limiter.total_tokens = before

    app = FastAPI(lifespan=lifespan)

    @app.get("/work")
    def work() -> dict[str, float]:
        time.sleep(ms / 1000)
        return {"slept_ms": ms}

    return app


def thread_tokens() -> int:
    """Size of the default thread pool of the running event loop (AnyIO's limiter, used by Starlette for `def`)."""
    return int(anyio.to_thread.current_default_thread_limiter().total_tokens)


def make_gateway_app(upstream_url: str, *, timeout: float | None, shared_client: bool) -> FastAPI:
    """GET /weather relays `upstream_url`; a timeout turns an upstream outage into a clear, fast 504."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if shared_client:
            async with httpx.AsyncClient(timeout=httpx.Timeout(timeout)) as client:
                app.state.client = client
                yield
        else:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/weather")
    async def weather(request: Request) -> Any:
        try:
            if shared_client:
                response = await request.app.state.client.get(upstream_url)
            else:
                async with httpx.AsyncClient(timeout=httpx.Timeout(timeout)) as client:
                    response = await client.get(upstream_url)
        except httpx.TimeoutException as error:
            raise HTTPException(504, f"upstream did not answer within {timeout} s") from error
        return response.json()

    return app


def make_pool_app(db_url: str, *, pool_size: int, pool_timeout: float, hold_s: float) -> FastAPI:
    """GET /report holds one pooled DB connection for `hold_s`; a full pool answers 503 with SQLAlchemy's error."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(db_url, pool_size=pool_size, max_overflow=0, pool_timeout=pool_timeout,
                               connect_args=thread_safe_connect_args(db_url))
        app.state.engine = engine
        yield
        engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/report")
    def report(request: Request) -> dict[str, int]:
        try:
            with request.app.state.engine.connect() as conn:
                value = conn.execute(select(1)).scalar_one()
                time.sleep(hold_s)  # a slow query or slow work while holding the connection
                return {"value": value}
        except PoolTimeoutError as error:
            raise HTTPException(503, str(error).splitlines()[0]) from error

    return app


# --------------------------------------------------------------------------- exercise 01.unblock: helpers

_CATALOGUE: dict[int, dict[str, Any]] = {}
LOOKUP_MS = 100


def reseed_catalogue(seed: int) -> None:
    """Refill the catalogue that `slow_lookup` reads with prices drawn from `seed` (the grader varies it)."""
    rng = random.Random(seed)
    _CATALOGUE.clear()
    _CATALOGUE.update({i: {"id": i, "name": f"item-{i}", "price": rng.randrange(100, 10_000) / 100}
                       for i in range(1, 201)})


reseed_catalogue(0)


_ON_LOOP: list[int] = []  # ids looked up from a coroutine, on the event loop's own thread (blocking it)
_LOOKED_UP: list[int] = []  # every id looked up, by either function
_WATCHED: dict[str, asyncio.AbstractEventLoop | None] = {"loop": None}  # the loop serving the graded app


def slow_lookup(item_id: int) -> dict[str, Any]:
    """A blocking driver call (think: `requests.get`, a sync DB driver): 100 ms, then the item or a 'missing' marker."""
    try:
        if asyncio.get_running_loop() is _WATCHED["loop"]:  # only the loop's own thread has it: a worker raises
            _ON_LOOP.append(item_id)
    except RuntimeError:
        pass
    _LOOKED_UP.append(item_id)
    time.sleep(LOOKUP_MS / 1000)
    return dict(_CATALOGUE.get(item_id, {"id": item_id, "missing": True}))


async def slow_lookup_async(item_id: int) -> dict[str, Any]:
    """The same lookup from an async driver: waits without blocking the event loop."""
    _LOOKED_UP.append(item_id)
    await asyncio.sleep(LOOKUP_MS / 1000)
    return dict(_CATALOGUE.get(item_id, {"id": item_id, "missing": True}))


def make_blocking_items_app() -> FastAPI:
    """The broken app of exercise 01.unblock: a blocking call inside `async def`."""
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, Any]:
        return slow_lookup(item_id)

    return app


# --------------------------------------------------------------------------- graders

UNBLOCK_CONCURRENCY = 20
UNBLOCK_RATIO = 4.0


@asynccontextmanager
async def _loop_stalls(every: float = 0.005) -> AsyncIterator[list[float]]:
    """Yield a one-item list that holds, when the block ends, the longest time (s) the running event loop went
    without serving a `every`-second timer: how long something held the loop without awaiting."""
    longest = [0.0]

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(every)
            now = time.perf_counter()
            longest[0] = max(longest[0], now - last - every)
            last = now

    ticker = asyncio.ensure_future(tick())
    try:
        yield longest
    finally:
        ticker.cancel()
        with suppress(asyncio.CancelledError):
            await ticker


@exercise(
    "01.unblock",
    title="Stop blocking the event loop",
    expects="a function make_items_app() that returns a FastAPI app with GET /items/{item_id} answering slow_lookup(item_id)",
    hints=(
        "Look at the wall time of the 20 concurrent requests: about 20 × 100 ms means they ran one after "
        "another. Which call in your endpoint waits without letting the event loop serve anyone else?",
        "Tools: FastAPI runs a plain `def` endpoint in its thread pool, so a blocking call there no longer stops "
        "the loop; inside `async def`, `asyncio.to_thread(fn, *args)` or Starlette's `run_in_threadpool(fn, "
        "*args)` run one blocking call in a thread; `slow_lookup_async` is a non-blocking version to `await`.",
        "Shape (pick one): change how `read_item` is declared so that FastAPI runs it in its thread pool, with "
        "the same body; or keep `async def read_item(item_id: int)` and `return await …(slow_lookup, item_id)` "
        "with a thread-running helper in the gap.",
    ),
    timeout=60,
)
async def check_unblock(make_app: Any, checking: Checking) -> str:
    """20 concurrent requests against the broken app and the answer, interleaved; same bodies, ≥ 4× less wall time.

    Every round draws new ids and new prices, so remembering an earlier round's answers gains nothing."""
    checking.require_callable(make_app, "a function make_items_app() that builds the app")
    seed = random.randrange(1, 1_000_000)
    reseed_catalogue(seed)
    _WATCHED["loop"] = asyncio.get_running_loop()
    try:
        learner_app = checking.build_app(make_app)
        broken_walls: list[float] = []
        learner_walls: list[float] = []
        stalls: list[float] = []  # per round: the longest the loop was held during your app's burst
        async with app_client(make_blocking_items_app()) as broken, app_client(learner_app) as mine:
            for round_ in range(2):  # interleaved: broken, yours, broken, yours
                reseed_catalogue(seed + round_)
                ids = random.Random(seed + round_).sample(range(1, 200), UNBLOCK_CONCURRENCY - 1) + [10_000]
                paths = [f"/items/{i}" for i in ids]
                reference = await burst(broken, paths)
                broken_walls.append(reference.wall_s)
                _ON_LOOP.clear()
                _LOOKED_UP.clear()
                try:
                    async with _loop_stalls() as stall:
                        answer = await burst(mine, paths, timeout=20)
                    stalls.append(stall[0])
                except TimeoutError:
                    checking.fail(f"{UNBLOCK_CONCURRENCY} concurrent requests to your app did not finish in 20 s.")
                learner_walls.append(answer.wall_s)
                skipped = sorted(set(ids) - set(_LOOKED_UP))
                on_loop = len(_ON_LOOP)
                checking.record("lookups_on_the_loop", on_loop)
                checking.expect(on_loop == 0,
                                f"{on_loop} of your app's {len(paths)} calls to slow_lookup ran on the event loop's "
                                "own thread (called directly from `async def` code, e.g. "
                                f"GET /items/{_ON_LOOP[0] if _ON_LOOP else '…'}): each one stops every other "
                                f"request for {LOOKUP_MS} ms (your {len(paths)} concurrent requests took "
                                f"{answer.wall_s * 1000:,.0f} ms, the blocking app's {reference.wall_s * 1000:,.0f} ms). "
                                "Fixing some requests is not enough: no request may block the loop.")
                checking.expect(answer.statuses == Counter({200: len(paths)}),
                                f"your app answered status codes {dict(answer.statuses)} to {len(paths)} requests; "
                                "expected 200 for every one (an unknown id still answers slow_lookup's body).")
                for path, want, got in zip(paths, reference.bodies, answer.bodies, strict=True):
                    checking.expect(got == want, f"GET {path} returned {got!r}; slow_lookup gives {want!r}. "
                                                 "The answer must be the same, only faster.")
                checking.expect(not skipped,
                                f"your app answered {len(skipped)} of {len(paths)} requests (e.g. GET /items/"
                                f"{skipped[0] if skipped else '…'}) without calling slow_lookup or "
                                "slow_lookup_async: the exercise is to make the same lookup without blocking the "
                                "event loop, not to skip it (it stands for a database or service you cannot "
                                "read any other way).")
    finally:
        reseed_catalogue(0)
        _WATCHED["loop"] = None
    held_ms = min(stalls) * 1000  # both rounds: a machine busy elsewhere delays the loop once, a blocking wait always
    checking.record("loop_held_ms", round(held_ms))
    checking.expect(held_ms < 0.8 * LOOKUP_MS,
                    f"while your app answered {UNBLOCK_CONCURRENCY} concurrent requests, its event loop was held for "
                    f"{held_ms:,.0f} ms at a time, in each round (a lookup takes {LOOKUP_MS} ms): something in "
                    "`async def` waits without `await`, e.g. `future.result()` on a thread pool, `time.sleep`, or a "
                    "lock. Every request in flight waits with it. Fixing some requests is not enough (here one id "
                    "in 20 was not among the known ones): no request may block the loop.")
    before, after = min(broken_walls), min(learner_walls)
    ratio = before / after if after > 0 else float("inf")
    checking.record("blocking_wall_ms", round(before * 1000))
    checking.record("your_wall_ms", round(after * 1000))
    checking.record("ratio", ratio)
    checking.expect(ratio >= UNBLOCK_RATIO,
                    f"{UNBLOCK_CONCURRENCY} concurrent requests took {after * 1000:,.0f} ms on your app vs "
                    f"{before * 1000:,.0f} ms on the blocking one ({ratio:.1f}× faster); expected at least "
                    f"{UNBLOCK_RATIO:g}×. Each lookup waits {LOOKUP_MS} ms: if they still run one after another, "
                    "something in your endpoint still blocks the event loop. (`asyncio.to_thread` runs on the loop's "
                    f"default executor, only min(32, cores + 4) = {min(32, (os.cpu_count() or 1) + 4)} threads here; "
                    "FastAPI's own pool for `def` endpoints has 40.)")
    return f"{UNBLOCK_CONCURRENCY} concurrent requests {ratio:.0f}× faster, same bodies"


TIMEOUT_BOUND_S = 4.0


@exercise(
    "01.timeout-client",
    title="A timeout and one shared client for an outbound call",
    expects="a function make_weather_app(upstream_url) that returns a FastAPI app with GET /weather relaying upstream_url",
    hints=(
        "Two things are measured: how many TCP connections 8 requests open to the upstream (a new client per "
        "request opens a new one each time), and how long GET /weather takes when the upstream hangs "
        "(without a timeout, as long as the upstream).",
        "Tools: one `httpx.AsyncClient` created when the app starts and closed when it stops (a `lifespan` "
        "context manager that keeps it in `app.state`, or a client made in the factory); `httpx.Timeout(seconds)` "
        "on that client; catch `httpx.TimeoutException` and answer `HTTPException(504, …)`.",
        "Shape: `@asynccontextmanager async def lifespan(app): async with httpx.AsyncClient(timeout=…) as "
        "client: app.state.client = client; yield` → `FastAPI(lifespan=lifespan)`; the endpoint takes "
        "`request: Request`, and in a `try:` awaits `request.app.state.client.get(…)`; "
        "`except …: raise …`; finally returns the upstream's JSON.",
    ),
    timeout=90,
)
async def check_timeout_client(make_app: Any, checking: Checking) -> str:
    """A real upstream on loopback: bodies relayed over ≤ 2 TCP connections for 8 requests; then the same URL
    hangs (an outage switched on at the upstream): a gateway error within the bound; then it recovers."""
    checking.require_callable(make_app, "a function make_weather_app(upstream_url) that builds the app")
    sequential = 8
    with serve_upstream() as upstream:
        async with httpx.AsyncClient(base_url=upstream.url, timeout=10) as control:

            async def outage(hang_s: float) -> None:
                (await control.post("/_outage", params={"hang_s": hang_s})).raise_for_status()

            await outage(0)
            app = checking.build_app(make_app, f"{upstream.url}/data")
            connections: set[int] = set()
            async with app_client(app) as client:

                async def relayed(when: str) -> dict[str, Any]:
                    try:
                        async with asyncio.timeout(10):
                            response = await checking.request(client, "GET", "/weather", status=None)
                    except TimeoutError:
                        checking.fail(f"GET /weather {when} did not answer within 10 s.")
                    checking.expect(response.status_code == 200,
                                    f"GET /weather {when} gave {response.status_code}: {response.text[:200]}")
                    body = checking.json_body(response, f"GET /weather {when}")
                    checking.expect(isinstance(body, dict) and body.get("city") == "Lyon" and "connection" in body,
                                    f"GET /weather {when} returned {body!r}; expected the upstream's JSON unchanged, "
                                    "e.g. {'temperature_c': 21.5, 'city': 'Lyon', 'connection': …}")
                    return body

                for _ in range(sequential):
                    connections.add((await relayed("(upstream answering at once)"))["connection"])
                checking.record("requests", sequential)
                checking.record("tcp_connections", len(connections))
                checking.expect(len(connections) <= 2,
                                f"{sequential} requests one after another reached the upstream over {len(connections)} "
                                "different TCP connections (counted by the upstream): a new client (and connection) "
                                "per request. One shared client keeps its connection open and reuses it.")
                await outage(20)  # the same URL now hangs for 20 s
                started = time.perf_counter()
                try:
                    async with asyncio.timeout(TIMEOUT_BOUND_S + 3):
                        response = await client.get("/weather")
                except TimeoutError:
                    checking.fail(f"when the upstream hangs for 20 s, GET /weather had not answered after "
                                  f"{TIMEOUT_BOUND_S + 3:g} s: without a timeout your endpoint waits as long as the "
                                  "upstream, holding a connection and a request slot all that time.")
                except httpx.TimeoutException:
                    checking.fail("your endpoint let httpx's timeout error escape instead of answering an error status.")
                finally:
                    await outage(0)
                elapsed = time.perf_counter() - started
                checking.record("hang_answer_s", round(elapsed, 2))
                checking.record("hang_status", response.status_code)
                checking.expect(elapsed <= TIMEOUT_BOUND_S,
                                f"when the upstream hangs for 20 s your endpoint answered after {elapsed:.1f} s "
                                f"(status {response.status_code}); expected an answer within {TIMEOUT_BOUND_S:g} s. "
                                "httpx's default timeout is 5 s: set a shorter one.")
                checking.expect(response.status_code in (502, 503, 504),
                                f"when the upstream hangs your endpoint answered {response.status_code} after "
                                f"{elapsed:.1f} s; expected a clear gateway error: 504 Gateway Timeout (502/503 also "
                                "accepted). 500 is what an unhandled exception gives.")
                try:
                    await relayed("after the upstream recovered from its outage")
                except Fail:
                    raise
                except Exception as error:  # e.g. a shared client closed when the call timed out
                    checking.fail(f"after the upstream recovered from its outage, GET /weather failed: "
                                  f"{_explain_exception(error)}. The shared client must survive a timeout: "
                                  "answer the error, keep the client for the next request.")
    return (f"{len(connections)} connection(s) for {sequential} requests; hanging upstream → {response.status_code} "
            f"in {elapsed:.1f} s; recovered")


def workers_bar(cores: int) -> float:
    """The throughput ratio (vs one worker) a good worker count must reach with `cores` usable cores.

    Not 2× on 2 cores: the load generator, the OS and the test itself share those cores. A quiet 2-core machine
    measured 1.45–1.9× for 2 workers and 0.9–1.23× for one worker against itself, so 1.35× separates them."""
    return 1.35 if cores >= 2 else 0.8


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


PARALLEL_CORES = 1.15  # one worker (one process, one GIL) measured 0.79-0.97 cores under load, syscalls included
PARALLEL_RATIO = 1.1


def _group_cpu(running: Server) -> float:
    """CPU seconds (user + system, every thread) used so far by the server's live processes."""
    total = 0.0
    for pid in running.processes():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(stat[11]) + int(stat[12])) / _HZ
        except (OSError, IndexError, ValueError):
            continue
    return total


def _cpu_seconds(servers: list[Server]) -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds used by this process and the servers' processes)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / _HZ  # all but idle and iowait
    ours = sum(os.times()[:2])
    for running in servers:
        for pid in running.processes():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ours += (int(stat[11]) + int(stat[12])) / _HZ  # utime, stime
            except (OSError, IndexError, ValueError):
                continue
    return busy, ours


@dataclass
class ConfigMeasure:
    """One worker vs a configuration, loaded interleaved: throughputs, memory, and the CPU other programs took."""

    base_rps: list[float]
    mine_rps: list[float]
    one_mib: float
    mine_mib: float
    other_cores: float
    prioritised: bool = False  # the servers and the load generator ran ahead of other programs (nice -10)
    one_cores: float = 0.0  # cores one worker's server kept busy while loaded (never much above 1: one GIL)
    mine_cores: float = 0.0  # cores the configuration's server kept busy while loaded

    @property
    def parallel(self) -> bool:
        """The configuration ran CPU work on more cores at once than one worker can (proof its workers help)."""
        return self.mine_cores >= PARALLEL_CORES and self.ratio >= PARALLEL_RATIO

    @property
    def ratio(self) -> float:
        """Median throughput of the configuration over one worker's."""
        return statistics.median(self.mine_rps) / statistics.median(self.base_rps)


MEASURING_NICE = -10  # CFS weight ≈ 9× a default process: background programs barely dent the measurement


def _threads_of(pid: int) -> list[int]:
    try:
        return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return []


def _autogroup_nice(pid: int | str) -> int | None:
    """The nice value of a process's scheduling autogroup (Linux: one group per session), or None."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split("nice")[1])
    except (OSError, IndexError, ValueError):
        return None


def _set_autogroup_nice(pid: int | str, nice: int) -> bool:
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
        return True
    except OSError:
        return False


@contextmanager
def measuring_priority(servers: list[Server]) -> Iterator[bool]:
    """Where allowed (root, e.g. in a container), run the measured servers and this thread (the load generator)
    ahead of other programs, then put this thread back; yields False where the OS refuses (an ordinary user).

    Linux shares the CPU between sessions first (autogroups), then between the threads of a session: a server in
    its own session gets one session's share however many workers it has, so both levels are raised."""
    me = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, me)
    own_group = _autogroup_nice("self")
    try:
        os.setpriority(os.PRIO_PROCESS, me, MEASURING_NICE)
    except (OSError, AttributeError):
        yield False
        return
    try:
        if own_group is not None:
            _set_autogroup_nice("self", MEASURING_NICE)
        for running in servers:
            for pid in running.processes():
                _set_autogroup_nice(pid, MEASURING_NICE)
                for tid in _threads_of(pid):  # threads a worker starts later inherit its main thread's value
                    try:
                        os.setpriority(os.PRIO_PROCESS, tid, MEASURING_NICE)
                    except OSError:
                        continue
        yield True
    finally:
        os.setpriority(os.PRIO_PROCESS, me, before)
        if own_group is not None:
            _set_autogroup_nice("self", own_group)


async def measure_config(server: str, workers: int, rounds: int = 3, seconds: float = 1.2,
                         concurrency: int = 20, path: str = "/cpu") -> ConfigMeasure:
    """Serve cpu_app with one worker and with the given configuration, load `path` on them in turn (`rounds` of
    `seconds` each, `concurrency` clients), measure all costs."""
    base_rps: list[float] = []
    mine_rps: list[float] = []
    with serve_app("cpu_app", workers=1) as one, \
            serve_app("cpu_app", workers=workers, server=server) as mine:  # type: ignore[arg-type]
        for running in (one, mine):  # warm every worker up
            await load_test(f"{running.url}/cpu", concurrency=20, requests=10 * workers, seconds=1, progress=False)
        with measuring_priority([one, mine]) as boosted:
            busy0, ours0 = _cpu_seconds([one, mine])
            wall0 = time.perf_counter()
            used = {id(one): [0.0, 0.0], id(mine): [0.0, 0.0]}  # CPU seconds, wall seconds under load
            for _ in range(rounds):
                for running, bucket in ((one, base_rps), (mine, mine_rps)):
                    cpu0, t0 = _group_cpu(running), time.perf_counter()
                    result = await load_test(f"{running.url}{path}", concurrency=concurrency, requests=100_000,
                                             seconds=seconds, progress=False)
                    used[id(running)][0] += _group_cpu(running) - cpu0
                    used[id(running)][1] += time.perf_counter() - t0
                    if result.errors or set(result.statuses) != {200}:
                        raise RuntimeError(f"load test errors: {result!r}")
                    bucket.append(result.throughput)
            busy1, ours1 = _cpu_seconds([one, mine])
            wall = time.perf_counter() - wall0
        one_mib = sum(one.processes().values())
        mine_mib = sum(mine.processes().values())
    other = max(0.0, ((busy1 - busy0) - (ours1 - ours0)) / wall) if wall > 0 else 0.0
    one_cores, mine_cores = (cpu / wall_s if wall_s else 0.0 for cpu, wall_s in (used[id(one)], used[id(mine)]))
    return ConfigMeasure(base_rps, mine_rps, one_mib, mine_mib, other, boosted, one_cores, mine_cores)


@exercise(
    "01.workers",
    title="The worker count that maximises throughput here",
    expects='a dict like {"server": "uvicorn" or "gunicorn", "workers": <a whole number>}',
    hints=(
        "The endpoint is CPU-bound: a worker process can keep one core busy, no more. Count what this process "
        "may use, and think about what a worker beyond that adds (throughput? memory?).",
        "Tools: `usable_cores()` says how many cores this process may use (it respects CPU quotas, unlike "
        "`os.cpu_count()`). The 2 × cores + 1 rule is for gunicorn's *sync* workers that block on I/O, not for "
        "async workers running CPU-bound code.",
        'Shape: `server_config = {"server": …, "workers": …}`: "uvicorn" or "gunicorn" (both pass), and a worker '
        "count computed from the tool above, not a number typed in (the grader may run on another machine).",
    ),
    timeout=150,
)
async def check_workers(config: Any, checking: Checking) -> str:
    """Serve cpu_app as configured and with one worker, load both interleaved; ratio ≥ bar, no idle workers' memory."""
    checking.expect(isinstance(config, Mapping),
                    f"expected {checking.exercise.expects}, got {type(config).__name__} {config!r:.80}")
    server = config.get("server", "uvicorn")
    workers = config.get("workers")
    checking.expect(server in ("uvicorn", "gunicorn"), f'"server" must be "uvicorn" or "gunicorn", not {server!r}')
    checking.expect(isinstance(workers, int) and not isinstance(workers, bool),
                    f'"workers" must be a whole number, not {type(workers).__name__} {workers!r}')
    checking.expect(1 <= workers <= 16, f"workers={workers}: this checker serves 1 to 16 workers on this machine")
    cores = usable_cores()
    bar = workers_bar(cores)
    measured = await measure_config(server, workers)

    def good(m: ConfigMeasure) -> bool:
        return m.ratio >= bar or (cores >= 2 and m.parallel)

    close_call = bar * 0.9 <= measured.ratio < bar
    if not good(measured) and (measured.other_cores > 0.5 or close_call):
        # other programs took the spare cores, or a few % of noise decides: measure once more, keep the clearer run
        await asyncio.sleep(2)
        again = await measure_config(server, workers)
        measured = again if (good(again), again.ratio) > (good(measured), measured.ratio) else measured
    base, mine, one_mib, mine_mib, ratio = (measured.base_rps, measured.mine_rps, measured.one_mib,
                                            measured.mine_mib, measured.ratio)
    checking.record("usable_cores", cores)
    checking.record("one_worker_rps", round(statistics.median(base)))
    checking.record("your_rps", round(statistics.median(mine)))
    checking.record("ratio", ratio)
    checking.record("your_memory_mib", round(mine_mib))
    checking.record("other_programs_cores", round(measured.other_cores, 2))
    checking.record("prioritised", int(measured.prioritised))
    checking.record("one_worker_cores_used", round(measured.one_cores, 2))
    checking.record("your_cores_used", round(measured.mine_cores, 2))
    note = ("" if cores >= 2 else " Only 1 core is usable here (e.g. Binder's CPU quota), so no worker count can beat "
            "one worker on CPU-bound work: the bar is only 'not slower than 0.8× one worker'.")
    if measured.other_cores > 0.5:
        note += (f" Other programs on this machine used {measured.other_cores:.1f} of its {cores} cores during the "
                 "test, leaving your extra workers little to run on: run this check again when it is quieter.")
    checking.expect(good(measured),
                    f"{server} with {workers} worker(s) served {statistics.median(mine):,.0f} req/s vs "
                    f"{statistics.median(base):,.0f} req/s for one worker ({ratio:.2f}×) on {cores} usable core(s); "
                    f"expected at least {bar:g}×, or your server running on more than {PARALLEL_CORES:g} cores at "
                    f"once (it used {measured.mine_cores:.2f}; one worker cannot exceed about 1).{note}")
    # judged by the count, with the memory as the evidence: a budget in MiB put 3 gunicorn workers on 2 cores
    # (165-166 MiB against 165.6) on either side of the line from run to run
    checking.expect(workers <= cores,
                    f"{workers} workers reached {ratio:.2f}× one worker's throughput but the server used "
                    f"{mine_mib:,.0f} MiB vs {one_mib:,.0f} MiB for one worker: with {cores} usable core(s), "
                    f"workers beyond {cores} add memory (each has its own app, thread pool and DB pool) and no "
                    "throughput on CPU-bound work.")
    how = (f"{ratio:.2f}× one worker" if ratio >= bar else
           f"{ratio:.2f}× one worker while other programs used {measured.other_cores:.1f} cores, running on "
           f"{measured.mine_cores:.2f} cores at once (one worker: {measured.one_cores:.2f})")
    return f"{workers} {server} worker(s): {how} on {cores} usable core(s), {mine_mib:,.0f} MiB"


# --------------------------------------------------------------------------- benchmark rows


async def _bench_rows() -> list[BenchRow]:
    cores = usable_cores()
    workers = max(2, min(cores, 4))
    # longer rounds than the grader's, medians of 5, and 4 clients per worker: enough to keep every worker busy,
    # few enough that one worker's thread pool does not spend its core trading the GIL between 20 requests
    # (measured here: 20 clients gave 1.43-1.65×, 8 clients 1.70-1.98×, one worker's throughput alike). Twice: with
    # the lesson's request (20,000 sha256 rounds) and one twice as heavy, where the fixed cost of a request (a new
    # connection, HTTP parsing, the load generator's share of the cores) is half the share (bench, twice: 1.81× and 1.68× vs 1.88× and 1.72×)
    measured = await measure_config("uvicorn", workers, rounds=5, seconds=2.0, concurrency=4 * workers)
    heavy = await measure_config("uvicorn", workers, rounds=5, seconds=2.0, concurrency=4 * workers,
                                 path=f"/cpu?rounds={2 * CPU_ROUNDS}")
    blocking: list[float] = []
    asynchronous: list[float] = []
    async with app_client(make_sleepy_app("async def + time.sleep", 50)) as slow, \
            app_client(make_sleepy_app("async def + await asyncio.sleep", 50)) as fast:
        for _ in range(3):
            blocking.append((await burst(slow, "/work", 40)).wall_s)
            asynchronous.append((await burst(fast, "/work", 40)).wall_s)
    block_ratio = statistics.median(blocking) / statistics.median(asynchronous)
    # the claim: 85 % of the ideal min(workers, cores) (1.7× on 2 cores); one core: the grader's bar
    target = round(0.85 * min(workers, cores), 2) if cores >= 2 else workers_bar(cores)

    def busy(run: ConfigMeasure) -> str:
        return f"other programs used {run.other_cores:.1f} of {cores} cores" if run.other_cores > 0.5 else ""

    def setting(run: ConfigMeasure, rounds: int) -> str:
        return (f"{workers} uvicorn workers vs 1, {rounds:,} sha256 rounds a request ({cores} usable cores, "
                f"{4 * workers} clients, median of 5 × 2 s; other programs used {run.other_cores:.1f} cores)")

    return [
        BenchRow(f"CPU-bound throughput, the lesson's request: {setting(measured, CPU_ROUNDS)}", measured.ratio, "×",
                 level="server", limit=float(min(workers, cores)), inconclusive=busy(measured)),
        BenchRow(f"CPU-bound throughput, a request twice as heavy: {setting(heavy, 2 * CPU_ROUNDS)}", heavy.ratio, "×",
                 f"≥ {target:g}×", heavy.ratio >= target, level="server", limit=float(min(workers, cores)),
                 inconclusive=busy(heavy)),
        BenchRow("40 concurrent × 50 ms waits: blocking in async def vs awaiting (wall time, median of 3)",
                 block_ratio, "×", "≥ 20×", block_ratio >= 20, level="endpoint"),
    ]


def bench() -> list[BenchRow]:
    """Lesson 01's headline ratios: workers vs one worker, and blocking vs non-blocking waits."""
    return asyncio.run(_bench_rows())


__all__ = [
    "Burst", "WorkerRun", "burst", "sweep_workers", "serve_app", "SERVED_DIR", "cpu_app", "io_app", "upstream_app", "serve_upstream",
    "make_sleepy_app", "make_threadpool_app", "thread_tokens", "make_gateway_app", "make_pool_app",
    "slow_lookup", "slow_lookup_async", "make_blocking_items_app", "reseed_catalogue", "workers_bar",
    "deprecation_warning_of_uvicorn_workers", "measure_config", "ConfigMeasure", "keep_alive_latency", "KeepAliveRun",
    "listener_protocols", "bench", *_serving_costs_all,
]
