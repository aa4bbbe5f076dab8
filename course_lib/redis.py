"""One Redis client for the course (fakeredis in-process by default, a real server when REDIS_URL is set), and the
graders' view of a Redis shared by several processes: a server over TCP, a proxy that records every command, and a
watch on every key under a prefix."""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis as sync_redis
import redis.asyncio as aioredis

from .settings import course_settings

__all__ = ["get_redis", "redis_backend", "serve_redis", "RecordingProxy", "RedisCommand", "KeyWatch", "command_keys",
           "lock_attempt_key"]


def redis_backend() -> str:
    """'fakeredis' or the URL of the real server the course uses."""
    return course_settings().redis_url or "fakeredis"


def get_redis(decode_responses: bool = False) -> aioredis.Redis:
    """A new async Redis client: to `REDIS_URL` when set, else a fresh, private fakeredis server."""
    url = course_settings().redis_url
    if url:
        return aioredis.Redis.from_url(url, decode_responses=decode_responses)
    import fakeredis

    return fakeredis.FakeAsyncRedis(decode_responses=decode_responses)


# ---------------------------------------------------------------- a Redis that several processes can reach


_FAKE_SERVER = ("import sys; from fakeredis import TcpFakeServer; "
                "TcpFakeServer(('127.0.0.1', int(sys.argv[1]))).serve_forever()")


def _answers_ping(port: int) -> bool:
    """True once a Redis server answers PING on 127.0.0.1:`port`."""
    client = sync_redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (sync_redis.ConnectionError, sync_redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


REDIS_SERVER = "redis-server"  # the binary serve_redis() prefers when it is on PATH; None: always fakeredis


@contextmanager
def serve_redis() -> Iterator[str]:
    """The URL of a Redis every process of this machine can reach: `REDIS_URL` when set; else a throwaway
    `redis-server` on a free port when one is installed; else fakeredis served over TCP from its own process. A server
    started here is stopped when the block ends."""
    url = course_settings().redis_url
    if url:
        yield url
        return
    from .servers import free_port, launch

    binary = shutil.which(REDIS_SERVER) if REDIS_SERVER else None
    for attempt in range(3):  # the free port can be taken between picking and binding: try another
        port = free_port()
        if binary:
            command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            kind = "redis-server"
        else:
            command, kind = [sys.executable, "-c", _FAKE_SERVER, str(port)], "fakeredis"
        try:
            server = launch(command, port, kind=kind, app=kind, probe=partial(_answers_ping, port), startup_timeout=30)
        except RuntimeError as error:
            if "address already in use" not in str(error).lower() or attempt == 2:
                raise
            continue
        with server:
            yield f"redis://127.0.0.1:{port}/0"
        return


# ---------------------------------------------------------------- which keys a command names

_NO_KEYS = frozenset(
    "PING ECHO HELLO AUTH SELECT CLIENT INFO COMMAND SCRIPT FUNCTION MULTI EXEC DISCARD UNWATCH SCAN KEYS FLUSHDB "
    "FLUSHALL DBSIZE TIME CONFIG PUBLISH SUBSCRIBE UNSUBSCRIBE PSUBSCRIBE PUNSUBSCRIBE RESET QUIT READONLY WAIT "
    "LASTSAVE ROLE SLOWLOG DEBUG RANDOMKEY SWAPDB MONITOR LATENCY MEMORY".split())
_EVERY_ARG = frozenset("DEL UNLINK EXISTS TOUCH MGET WATCH SINTER SUNION SDIFF SINTERSTORE SUNIONSTORE SDIFFSTORE "
                       "PFCOUNT PFMERGE".split())
_KEY_VALUE_PAIRS = frozenset({"MSET", "MSETNX"})
_SCRIPTS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})
_TWO_KEYS = frozenset({"RENAME", "RENAMENX", "SMOVE", "COPY", "LMOVE", "RPOPLPUSH", "BLMOVE", "BRPOPLPUSH"})


def command_keys(args: tuple[bytes, ...]) -> list[bytes]:
    """The keys a Redis command names (scripts: the keys they declare), from its arguments as sent."""
    if not args:
        return []
    name = args[0].decode(errors="replace").upper()
    if name in _NO_KEYS:
        return []
    if name in _EVERY_ARG:
        return list(args[1:])
    if name in _KEY_VALUE_PAIRS:
        return list(args[1::2])
    if name in _TWO_KEYS:
        return list(args[1:3])
    if name in _SCRIPTS:
        try:
            count = int(args[2])
        except (IndexError, ValueError):
            return []
        return list(args[3:3 + count])
    return list(args[1:2])


@dataclass(frozen=True)
class RedisCommand:
    """One command a client sent through the proxy: when, on which connection, with which arguments."""

    at: float
    connection: int
    args: tuple[bytes, ...]

    @property
    def name(self) -> str:
        """The command's name in capitals, e.g. 'SET'."""
        return self.args[0].decode(errors="replace").upper() if self.args else ""

    def keys(self) -> list[bytes]:
        """The keys this command names."""
        return command_keys(self.args)

    def options(self) -> set[str]:
        """Every argument after the first two, in capitals (SET's NX, PX, EX …)."""
        return {a.decode(errors="replace").upper() for a in self.args[3:] if len(a) <= 8}

    def __str__(self) -> str:
        parts = [a.decode(errors="replace") for a in self.args]
        text = " ".join(p if len(p) <= 60 else p[:57] + "…" for p in parts)
        return text if len(text) <= 200 else text[:199] + "…"


class _RespParser:
    """Split the bytes a client sends into commands (RESP arrays of bulk strings, or inline commands), each with the
    bytes it came as. Bytes that are not RESP as clients send it turn the parser off (`broken`): pass them on as
    they are."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.broken = False

    def feed(self, data: bytes) -> list[tuple[tuple[bytes, ...], bytes]]:
        """Add received bytes; return the commands now complete, as (arguments, raw bytes)."""
        self.buffer += data
        found = []
        while not self.broken and (command := self._one()) is not None:
            if command[0]:
                found.append(command)
        return found

    def rest(self) -> bytes:
        """Take the bytes not parsed (all of them once broken)."""
        rest = bytes(self.buffer)
        self.buffer.clear()
        return rest

    def _one(self) -> tuple[tuple[bytes, ...], bytes] | None:
        buf = self.buffer
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        if buf[:1] != b"*":  # an inline command: one line, words separated by spaces
            raw = bytes(buf[:end + 2])
            del buf[:end + 2]
            return tuple(raw.split()), raw
        try:
            count, pos, args = int(buf[1:end]), end + 2, []
            for _ in range(count):
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    return None
                if buf[pos:pos + 1] != b"$":
                    raise ValueError("not a bulk string")
                start = end + 2
                stop = start + int(buf[pos + 1:end])
                if len(buf) < stop + 2:
                    return None
                args.append(bytes(buf[start:stop]))
                pos = stop + 2
        except ValueError:
            self.broken = True
            return None
        raw = bytes(buf[:pos])
        del buf[:pos]
        return tuple(args), raw


# commands the proxy records but does not pass on, so that an answer cannot wipe or stop a Redis others share; the
# client gets a harmless reply in their place (ECHO OK), in order with the replies to its other commands
REFUSED = frozenset({"FLUSHDB", "FLUSHALL", "SWAPDB", "SHUTDOWN"})
_HARMLESS = b"*2\r\n$4\r\nECHO\r\n$2\r\nOK\r\n"


_READS = frozenset({"GET", "MGET", "EXISTS", "TTL", "PTTL", "TYPE", "STRLEN", "GETRANGE", "OBJECT"})
_STORES = frozenset({"SET", "SETEX", "PSETEX", "MSET", "GETSET", "SETRANGE", "APPEND", "HSET", "HMSET"})


_SCRIPT_TAKES_A_LOCK = re.compile(rb"\bSETNX\b|['\"]NX['\"]", re.IGNORECASE)


def lock_attempt_key(command: RedisCommand) -> bytes | None:
    """The key a command tries to take as a lock (`SET key v NX …`, `SETNX key v`, an EVAL whose script sets its
    first key with NX), or None."""
    if command.name == "SETNX" or (command.name == "SET" and "NX" in command.options()):
        return command.args[1] if len(command.args) > 1 else None
    if command.name == "EVAL" and len(command.args) > 3 and _SCRIPT_TAKES_A_LOCK.search(command.args[1]):
        return command.keys()[0] if command.keys() else None
    return None


class RecordingProxy:
    """A TCP proxy on 127.0.0.1 in front of a Redis server that records every command sent through it, from any
    process: connect clients to `proxy.url` instead of the server's. Commands in `REFUSED` (FLUSHDB …) are recorded,
    not passed on. Runs in its own thread; use it in a `with`.

    `contend_locks` plays the schedule under which a lock's hand-over goes wrong, every time instead of by luck: a
    lock attempt (SET … NX, SETNX) on a key that is taken waits at the proxy until the key is gone (at most
    `PARKED_AT_MOST` attempts wait at once, each at most `PARK_SECONDS`), so a waiter that missed the cache before the
    answer was stored tries the lock just after its release; and a store (SET, MSET …) sent within
    `QUIET_AFTER_RELEASE` seconds after a command that releases a lock (DEL, UNLINK, a script naming it) waits until
    then, as if the releasing worker were descheduled right after its release."""

    PARKED_AT_MOST = 2
    PARK_SECONDS = 5.0
    QUIET_AFTER_RELEASE = 0.25

    def __init__(self, upstream_url: str, *, contend_locks: bool = False) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "redis":
            raise ValueError(f"the recording proxy needs a redis:// URL (no TLS, no unix socket), not {parts.scheme}://")
        self.upstream_url, self._parts = upstream_url, parts
        self.commands: list[RedisCommand] = []
        self.port = 0
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="redis-recording-proxy", daemon=True)
        self.contend_locks = contend_locks
        self.parked = 0  # lock attempts held back over the proxy's life (a figure for tests and graders)
        self._lock_keys: set[bytes] = set()
        self._parked_now = 0
        self._quiet_until = 0.0
        self._own: aioredis.Redis | None = None

    @property
    def url(self) -> str:
        """The URL clients use: the upstream URL (user, password, database) with the proxy's host and port."""
        userinfo = self._parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(self._parts._replace(netloc=netloc))

    def start(self) -> RecordingProxy:
        """Start listening; returns when clients can connect."""
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or not self.port:
            raise RuntimeError(f"the Redis recording proxy did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection, end the thread. Safe to call twice."""
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
            loop.call_soon_threadsafe(loop.stop)
        if self._thread.is_alive():
            self._thread.join(10)

    def mark(self) -> int:
        """A position in the record: `since(mark)` gives the commands sent after it."""
        return len(self.commands)

    def since(self, mark: int = 0) -> list[RedisCommand]:
        """The commands recorded after `mark` (all of them by default)."""
        return self.commands[mark:]

    def __enter__(self) -> RecordingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = int(self._server.sockets[0].getsockname()[1])
        except BaseException as error:  # noqa: BLE001 - reported by start()
            self._error = error
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own is not None:
            await self._own.aclose()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = next(self._ids)
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection(self._parts.hostname or "localhost",
                                                                self._parts.port or 6379)
            pumps = [asyncio.ensure_future(self._client_to_server(connection, reader, upstream)),
                     asyncio.ensure_future(self._copy(up_reader, writer))]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for end in (writer, upstream):
                if end is not None:
                    end.close()
            self._tasks.discard(task)

    async def _client_to_server(self, connection: int, reader: asyncio.StreamReader,
                                upstream: asyncio.StreamWriter) -> None:
        parser = _RespParser()
        while data := await reader.read(65536):
            if parser.broken:
                upstream.write(data)
            else:
                now = time.monotonic()
                for args, raw in parser.feed(data):
                    command = RedisCommand(now, connection, args)
                    self.commands.append(command)
                    if self.contend_locks:
                        await self._contend(command, upstream)
                    upstream.write(_HARMLESS if command.name in REFUSED else raw)
                if parser.broken:
                    upstream.write(parser.rest())
            await upstream.drain()

    async def _contend(self, command: RedisCommand, upstream: asyncio.StreamWriter) -> None:
        """Before `command` goes upstream: hold a lock attempt on a taken key, or a store just after a release."""
        if (lock_key := lock_attempt_key(command)) is not None:
            self._lock_keys.add(lock_key)
            if self._parked_now < self.PARKED_AT_MOST:
                self._parked_now += 1
                try:
                    await upstream.drain()  # the commands before it go on
                    await self._park(lock_key)
                finally:
                    self._parked_now -= 1
        elif command.name in _STORES and (wait := self._quiet_until - time.monotonic()) > 0:
            await upstream.drain()
            await asyncio.sleep(wait)  # once: waiters' attempts in the meantime do not push it further
        elif command.name not in _READS and self._lock_keys.intersection(command.keys()):
            self._quiet_until = time.monotonic() + self.QUIET_AFTER_RELEASE

    async def _park(self, lock_key: bytes) -> None:
        """Wait while `lock_key` exists upstream (at most PARK_SECONDS), polling every millisecond."""
        if self._own is None:
            self._own = aioredis.Redis.from_url(self.upstream_url)
        deadline = time.monotonic() + self.PARK_SECONDS
        if await self._own.exists(lock_key):
            self.parked += 1
            while await self._own.exists(lock_key) and time.monotonic() < deadline:
                await asyncio.sleep(0.001)

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


class KeyWatch:
    """Poll every key under `prefix` (SCAN, then PTTL of each) from a thread, to see keys that live only while
    requests are in flight (locks). Use it in a `with` block around the requests."""

    def __init__(self, url: str, prefix: str, every: float = 0.01) -> None:
        self.url, self.prefix, self.every = url, prefix, every
        self.samples: dict[bytes, list[tuple[float, int]]] = {}
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-key-watch", daemon=True)

    def _run(self) -> None:
        client = sync_redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            while not self._stop.is_set():
                keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
                if keys:
                    with client.pipeline(transaction=False) as pipe:
                        for key in keys:
                            pipe.pttl(key)
                        ttls = pipe.execute()
                    now = time.monotonic()
                    for key, ttl in zip(keys, ttls, strict=True):
                        if ttl != -2:  # -2: deleted between SCAN and PTTL
                            self.samples.setdefault(key, []).append((now, int(ttl)))
                self.polls += 1
                self._stop.wait(self.every)
        except (sync_redis.RedisError, OSError):
            pass  # the server went away: the grader's own checks will say what failed
        finally:
            client.close()

    def without_expiry(self, for_at_least: float = 0.015) -> list[bytes]:
        """Keys seen with no expiry (PTTL -1) in polls at least `for_at_least` seconds apart (so a SET followed at
        once by EXPIRE is not one)."""
        found = []
        for key, samples in self.samples.items():
            times = [at for at, ttl in samples if ttl == -1]
            if len(times) >= 2 and times[-1] - times[0] >= for_at_least:
                found.append(key)
        return found

    def __enter__(self) -> KeyWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
