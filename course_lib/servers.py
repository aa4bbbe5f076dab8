"""Run an app under a real server (uvicorn or gunicorn) on 127.0.0.1, and always stop every process it started."""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

__all__ = ["Server", "ServerGroup", "serve", "launch", "free_port", "usable_cores", "running_servers"]

ServerKind = Literal["uvicorn", "gunicorn"]
_RUNNING: dict[int, Server] = {}
_PR_SET_PDEATHSIG = 1


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then deliver it: a process is never started or stopped halfway,
    or left unregistered. Only the main thread receives signals; elsewhere the block simply runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:  # deliver it now, as the handler in force would have
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def usable_cores() -> int:
    """The CPU cores this process may really use: CPU affinity, capped by a cgroup CPU quota (containers, Binder)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


try:  # loaded once here: the child between fork and exec should only make the one system call
    _LIBC: Any = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # not Linux: atexit and explicit stops still apply
    _LIBC = None


def _die_with_parent() -> None:
    """Run in the child before exec: ask Linux to SIGTERM it when the thread that started it ends (in a notebook
    the kernel's main thread, so: when the kernel dies). Servers started from a worker thread must be stopped
    before that thread ends, as every `with serve(...)` block does."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


DEFAULT_LOOP, DEFAULT_HTTP = "asyncio", "h11"
"""What every course server runs on unless asked otherwise: uvicorn's `--loop auto --http auto` would silently pick
uvloop and httptools once installed (`uvicorn[standard]`), changing every measurement; lesson 01 compares the two."""
DEFAULT_GUNICORN_WORKER = "uvicorn_worker.UvicornH11Worker"  # uvicorn-worker's UvicornWorker fixed to asyncio + h11


def _given(extra: Sequence[str], *options: str) -> bool:
    """True when `extra` sets one of `options` (as `--opt value` or `--opt=value`)."""
    return any(arg in options or arg.split("=", 1)[0] in options for arg in extra)


def _command(kind: ServerKind, app: str, port: int, workers: int, extra: Sequence[str]) -> list[str]:
    if kind == "uvicorn":
        chosen = [*(() if _given(extra, "--loop") else ("--loop", DEFAULT_LOOP)),
                  *(() if _given(extra, "--http") else ("--http", DEFAULT_HTTP))]
        return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(workers), "--no-access-log", "--log-level", "warning", *chosen, *extra]
    if kind == "gunicorn":
        worker = () if _given(extra, "-k", "--worker-class") else ("--worker-class", DEFAULT_GUNICORN_WORKER)
        return [sys.executable, "-m", "gunicorn", app, *worker,
                "--workers", str(workers), "--bind", f"127.0.0.1:{port}", "--no-control-socket",
                "--log-level", "warning", *extra]
    raise ValueError(f"server must be 'uvicorn' or 'gunicorn', not {kind!r}")


_PROXY_DIR = Path(__file__).resolve().parent / "proxy"  # holds docs_behind_proxy.py, importable on its own


def _behind_proxy(app: str, env: Mapping[str, str] | None) -> tuple[str, Mapping[str, str] | None]:
    """Where the docs link goes through a hub's proxy, serve `app` wrapped so that its docs pages learn the prefix the
    proxy strips (`course_lib/proxy/docs_behind_proxy.py`; its other routes see the same paths); elsewhere as is."""
    if not os.environ.get("JUPYTERHUB_SERVICE_PREFIX"):
        return app, env
    merged = {**(env or {}), "COURSE_LAB_PROXIED_APP": app}
    python_path = (env or {}).get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    merged["PYTHONPATH"] = os.pathsep.join(part for part in (str(_PROXY_DIR), python_path) if part)
    return "docs_behind_proxy:app", merged


@dataclass
class Server:
    """A server process group started by `serve`: its URL, and `stop()` to end every process in it."""

    kind: str
    app: str
    workers: int
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    command: list[str] = field(default_factory=list)
    cell: int = 0  # the notebook cell that started it (see `_stop_servers_of_an_interrupted_cell`)

    @property
    def url(self) -> str:
        """Base URL on the loopback interface."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the server's main process (also its process-group id)."""
        return self.process.pid

    def link(self, path: str = "/docs") -> str:
        """A URL the learner's browser can open: through jupyter-server-proxy on Binder/JupyterHub, else direct."""
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
        if prefix:
            return f"{prefix.rstrip('/')}/proxy/{self.port}{path}"
        return f"{self.url}{path}"

    def log(self) -> str:
        """What the server printed so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def processes(self) -> dict[int, float]:
        """Every live process of the server's group, pid → resident memory in MiB."""
        found: dict[int, float] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) != self.pid:  # field 5 of /proc/PID/stat: process group
                    continue
                pid = int(stat.parent.name)
                status = (stat.parent / "status").read_text()
                rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
                found[pid] = rss_kb / 1024
            except (OSError, IndexError, ValueError, StopIteration):
                continue
        return found

    def is_running(self) -> bool:
        """True while any process of the server's group is alive."""
        self.process.poll()  # reap the main process if it has exited, so it no longer counts
        try:
            os.killpg(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole process group, wait, then SIGKILL whatever is left. Safe to call twice; a Ctrl-C
        meanwhile is held until it is done (a stop cut short would leave the server running, forgotten)."""
        with _sigint_deferred():
            for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                if not self.is_running():
                    break
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + grace
                while self.is_running() and time.monotonic() < deadline:
                    time.sleep(0.05)
            self.log_path.unlink(missing_ok=True)
            _RUNNING.pop(self.pid, None)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.process.poll() is None else "stopped"
        return f"<{self.kind} {self.app} × {self.workers} worker(s) at {self.url}, {state}>"


def _answers_http(url: str) -> bool:
    """True once something answers an HTTP GET of `url` (any status)."""
    try:
        httpx.get(url, timeout=1.0)
    except httpx.HTTPError:
        return False
    return True


def _exit_problem(server: Server) -> str | None:
    """Why the server cannot become ready (its process exited), or None while it still may."""
    if server.process.poll() is None:
        return None
    return (f"{server.kind} exited with code {server.process.returncode} before answering. "
            f"Its output:\n{server.log()[-2000:]}")


def _timeout_problem(server: Server, timeout: float) -> str:
    return (f"{server.kind} did not answer on {server.url} within {timeout:g} s. "
            f"Its output:\n{server.log()[-2000:]}")


def _wait_ready(server: Server, ready_path: str, timeout: float, probe: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        problem = _exit_problem(server)
        if problem:
            raise RuntimeError(problem)
        # a server that does not speak HTTP (e.g. Redis) says it is ready its own way
        if probe() if probe is not None else _answers_http(server.url + ready_path):
            return
        time.sleep(0.05)
    raise TimeoutError(_timeout_problem(server, timeout))


_LOG_NAME = re.compile(r"lab-[\w.]+-(\d+)-\w+\.log")


def sweep_orphan_logs(folder: str | Path | None = None) -> list[Path]:
    """Delete server logs (lab-<kind>-<pid>-*.log) whose kernel is gone, e.g. killed before it could clean up."""
    removed = []
    for path in Path(folder or tempfile.gettempdir()).glob("lab-*-*-*.log"):
        match = _LOG_NAME.fullmatch(path.name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # its kernel still runs: its log is live
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's live process
        try:
            if path.stat().st_uid == os.getuid():
                path.unlink()
                removed.append(path)
        except OSError:
            pass
    return removed


def _current_cell() -> int:
    """Which notebook cell runs now, counted from the first that started a server (0 outside a kernel)."""
    return _CELL[0]


def _spawn(command: Sequence[str], port: int, *, kind: str, app: str, workers: int,
           env: Mapping[str, str] | None, cwd: str | Path | None) -> Server:
    """Start the process in its own session and register it, Ctrl-C held meanwhile: once started it is known."""
    sweep_orphan_logs()
    _watch_cells()
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with _sigint_deferred():
        fd, log_name = tempfile.mkstemp(prefix=f"lab-{kind}-{os.getpid()}-", suffix=".log")
        try:
            process = subprocess.Popen(
                list(command), stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT, cwd=cwd, env=child_env,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        except BaseException:  # e.g. a missing cwd or executable: no log file left behind
            Path(log_name).unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        started = Server(kind, app, workers, port, process, Path(log_name), list(command), _current_cell())
        _RUNNING[started.pid] = started
    return started


def launch(
    command: Sequence[str],
    port: int,
    *,
    kind: str,
    app: str = "",
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    ready_path: str = "/",
    startup_timeout: float = 30.0,
    probe: Callable[[], bool] | None = None,
) -> Server:
    """Start any server command that will listen on 127.0.0.1:`port`, in its own process group; wait until it answers
    (an HTTP GET of `ready_path`, or `probe()` returning True for a server that does not speak HTTP)."""
    started: Server | None = None
    try:
        started = _spawn(command, port, kind=kind, app=app, workers=workers, env=env, cwd=cwd)
        _wait_ready(started, ready_path, startup_timeout, probe)
    except BaseException:  # failed start, timeout, KeyboardInterrupt: never leave it running
        if started is not None:
            started.stop()
        raise
    return started


def serve(
    app: str,
    *,
    workers: int = 1,
    server: ServerKind = "uvicorn",
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    extra_args: Sequence[str] = (),
    ready_path: str = "/",
    startup_timeout: float = 30.0,
    announce: bool | None = None,
) -> Server:
    """Start `app` ("module:attribute") under uvicorn or gunicorn on a free port; use as `with serve(...) as s:`.

    In a notebook cell, if the server outlives the cell, a link to its /docs that works where the learner is
    (`announce`)."""
    _check_arguments(app, workers)
    target, child_env = _behind_proxy(app, env)
    for attempt in range(3):  # the free port can be taken between picking and binding: try another
        port = free_port()
        try:
            started = launch(_command(server, target, port, workers, extra_args), port, kind=server, app=app,
                             workers=workers, env=child_env, cwd=cwd, ready_path=ready_path,
                             startup_timeout=startup_timeout)
        except RuntimeError as error:
            if _IN_USE not in str(error).lower() or attempt == 2:
                raise
            continue
        if announce if announce is not None else _in_notebook_main_thread():
            _announce(started)
        return started
    raise AssertionError("unreachable")



_IN_USE = "address already in use"


def _check_arguments(app: Any, workers: Any) -> None:
    """Refuse an app that is not an import string and a worker count that is not 1–64, before starting anything."""
    if not isinstance(app, str) or ":" not in app:
        raise ValueError(f"app must be an import string like 'course_lib.lessons.l01_workers:app', not {app!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 64:
        raise ValueError(f"workers must be a whole number from 1 to 64, not {workers!r}")


async def _answers_async(client: httpx.AsyncClient, url: str) -> bool:
    """True once something answers an HTTP GET of `url` (any status), without blocking the event loop."""
    try:
        await client.get(url)
    except httpx.HTTPError:
        return False
    return True


@dataclass
class _Pending:
    """A server of a group not answering yet: where to ask, until when, and how to start it again elsewhere."""

    ready_path: str
    deadline: float
    timeout: float
    respawn: Callable[[int], list[str]]
    env: Mapping[str, str] | None
    cwd: str | Path | None
    attempts: int = 1


class ServerGroup:
    """Servers started side by side and stopped together, however the block ends (an error, a cancelled cell,
    Ctrl-C at any point): `with ServerGroup() as group: s = group.start(app, ...); await group.ready()`.

    `start` only launches the process (milliseconds) and registers it before returning; `ready` then waits for
    all of them at once, so their imports overlap and the event loop stays free (an interrupt lands there)."""

    def __init__(self) -> None:
        self.servers: list[Server] = []
        self._pending: dict[int, _Pending] = {}

    def start(self, app: str, *, workers: int = 1, server: ServerKind = "uvicorn", env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None, extra_args: Sequence[str] = (), ready_path: str = "/",
              startup_timeout: float = 30.0) -> Server:
        """Launch `app` under uvicorn or gunicorn on a free port, without waiting for it (see `ready`)."""
        _check_arguments(app, workers)
        _command(server, app, 0, workers, extra_args)  # an unknown server kind fails here, before anything starts

        def command(port: int) -> list[str]:
            return _command(server, app, port, workers, extra_args)

        with _sigint_deferred():  # launched and in the group, or neither
            port = free_port()
            started = _spawn(command(port), port, kind=server, app=app, workers=workers, env=env, cwd=cwd)
            self.servers.append(started)
            self._pending[id(started)] = _Pending(ready_path, time.monotonic() + startup_timeout, startup_timeout,
                                                  command, env, cwd)
        return started

    def _respawn(self, server: Server, pending: _Pending) -> None:
        """Its port was taken between picking and binding: start it again on another, as the same Server."""
        with _sigint_deferred():
            server.stop()
            port = free_port()
            fresh = _spawn(pending.respawn(port), port, kind=server.kind, app=server.app, workers=server.workers,
                           env=pending.env, cwd=pending.cwd)
            _RUNNING.pop(fresh.pid, None)
            server.port, server.process, server.log_path, server.command = (fresh.port, fresh.process,
                                                                            fresh.log_path, fresh.command)
            _RUNNING[server.pid] = server
            pending.attempts += 1
            pending.deadline = time.monotonic() + pending.timeout

    async def ready(self) -> list[Server]:
        """Wait until every started server answers; raise (RuntimeError, TimeoutError) when one exits or is late."""
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                waiting = [s for s in self.servers if id(s) in self._pending]
                if not waiting:
                    return list(self.servers)
                for server in waiting:
                    pending = self._pending[id(server)]
                    problem = _exit_problem(server)
                    if problem and _IN_USE in problem.lower() and pending.attempts < 3:
                        self._respawn(server, pending)
                    elif problem:
                        raise RuntimeError(problem)
                    elif await _answers_async(client, server.url + pending.ready_path):
                        del self._pending[id(server)]
                    elif time.monotonic() > pending.deadline:
                        raise TimeoutError(_timeout_problem(server, pending.timeout))
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        """Stop every server of the group (each stop holds Ctrl-C until it is done). Safe to call twice."""
        for server in reversed(self.servers):
            server.stop()
        self._pending.clear()

    def __enter__(self) -> ServerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> ServerGroup:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()


_WATCHING: list[Any] = []  # the IPython shell whose cells are watched (at most one)
_CELL = [0]  # cells run in it since it was first watched (the kernel's own count differs between versions)


def _watch_cells() -> None:
    """In a Jupyter kernel, once: when a cell is interrupted, stop the servers it started that still run."""
    if _WATCHING:
        return
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return
    _WATCHING.append(shell)
    _CELL[0] = 1  # the cell running now

    def next_cell(*_: object) -> None:
        _CELL[0] += 1

    shell.events.register("pre_run_cell", next_cell)
    shell.events.register("post_run_cell", _stop_servers_of_an_interrupted_cell)


def _stop_servers_of_an_interrupted_cell(result: Any) -> list[Server]:
    """After a cell stopped by an interrupt (KeyboardInterrupt, or CancelledError for a cell that awaits), stop
    the servers that cell started and say so: whatever point the interrupt hit, nothing it started keeps running."""
    error = getattr(result, "error_in_exec", None)
    if not isinstance(error, (KeyboardInterrupt, asyncio.CancelledError)):
        return []
    left = [s for s in running_servers() if s.cell == _CELL[0]]
    for server in left:
        server.stop(timeout=5)
    if left:
        ports = ", ".join(str(s.port) for s in left)
        print(f"the cell was interrupted: stopped the {len(left)} server(s) it had started (port {ports})",
              file=sys.stderr)
    return left


def _in_notebook_main_thread() -> bool:
    """True in a Jupyter kernel's main thread (a learner's cell), not in a grader's thread or a script."""
    import threading

    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel") and threading.current_thread() is threading.main_thread()


def _announce(server: Server) -> None:
    """Once the cell ends, link to the server's API docs if it still runs (a `with` block's server is gone by then)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def after_cell(*_: object) -> None:
        shell.events.unregister("post_run_cell", after_cell)
        if server.is_running():
            _show_link(server)

    shell.events.register("post_run_cell", after_cell)


def _show_link(server: Server) -> None:
    """Show a clickable link to the server's API docs: direct locally, through jupyter-server-proxy on a hub."""
    from IPython.display import Markdown, display

    where = "through this hub's proxy" if os.environ.get("JUPYTERHUB_SERVICE_PREFIX") else "on this machine"
    display(Markdown(f"{server.kind} × {server.workers} worker(s) serving `{server.app}` {where}: "
                     f"[open its API docs]({server.link('/docs')}) (until `.stop()` or the kernel ends)"))


def running_servers() -> list[Server]:
    """Servers started by this process and not stopped yet."""
    return list(_RUNNING.values())


def _stop_all() -> None:
    for started in list(_RUNNING.values()):
        started.stop(timeout=3)


atexit.register(_stop_all)
