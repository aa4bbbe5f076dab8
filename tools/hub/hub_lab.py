"""A real JupyterHub on loopback for tests and measurements: start it, drive learners' servers and kernels through
its REST API and websockets, and watch every learner's processes for collisions (ports, files, progress)."""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_swagger_ui() -> Path | None:
    """Swagger UI's files (npm swagger-ui-dist, in .venv/hub-node as `./course test` installs it): a browser without
    network gets the docs page's scripts from here instead of the CDN FastAPI names."""
    folder = ROOT / ".venv" / "hub-node" / "node_modules" / "swagger-ui-dist"
    return folder if (folder / "swagger-ui-bundle.js").exists() else None


def find_chp() -> str | None:
    """The configurable-http-proxy executable: on PATH, or in .venv/hub-node (where .ci/run installs it)."""
    local = ROOT / ".venv" / "hub-node" / "node_modules" / ".bin" / "configurable-http-proxy"
    return str(local) if local.exists() else shutil.which("configurable-http-proxy")


@dataclass
class Hub:
    """A JupyterHub process (tools/hub/jupyterhub_config.py) with an admin token; `stop()` ends it and its servers.

    `real_users`: the learners are existing Unix users (tools/hub/unix_users.py) and the hub, run as root, spawns each
    server as its learner; otherwise every server runs as this process's user with a home folder under `root`."""

    root: Path
    users: list[str]
    shared_home_users: list[str] = field(default_factory=list)
    cull_users: list[str] = field(default_factory=list)
    cull_timeout: int = 10
    real_users: bool = False
    port: int = 0
    shared_progress: Path | None = None
    token: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The hub's public URL (the proxy)."""
        return f"http://127.0.0.1:{self.port}"

    def home(self, user: str) -> Path:
        """A learner's home folder (a real user's from the password database)."""
        return Path(pwd.getpwnam(user).pw_dir) if self.real_users else self.root / "home" / user

    def start(self, timeout: float = 120.0) -> Hub:
        """Start the hub and wait until its REST API answers."""
        chp = find_chp()
        if chp is None:
            raise RuntimeError("configurable-http-proxy is not installed (npm install -g configurable-http-proxy)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.port, self.token = free_port(), secrets.token_hex(16)
        if self.real_users:  # the planted pair must both reach it, as two Unix users: outside the private root
            self.shared_progress = Path(tempfile.mkdtemp(prefix="hub-shared-progress-"))
            self.shared_progress.chmod(0o777)
        else:
            self.shared_progress = self.root / "shared-progress"
        env = {**os.environ, "COURSE_HUB_ROOT": str(self.root), "COURSE_HUB_PORT": str(self.port),
               "COURSE_HUB_API_PORT": str(free_port()), "COURSE_HUB_PROXY_API_PORT": str(free_port()),
               "COURSE_HUB_ADMIN_TOKEN": self.token, "COURSE_HUB_USERS": ",".join(self.users),
               "COURSE_HUB_SHARED_HOME_USERS": ",".join(self.shared_home_users), "COURSE_HUB_CHP": chp,
               "COURSE_HUB_CULL_USERS": ",".join(self.cull_users), "COURSE_HUB_CULL_TIMEOUT": str(self.cull_timeout),
               "COURSE_HUB_REAL_USERS": "1" if self.real_users else "0",
               "COURSE_HUB_SHARED_LAB_HOME": str(self.shared_progress),
               "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
        log = (self.root / "hub.log").open("wb")
        self.process = subprocess.Popen([str(VENV_BIN / "jupyterhub"), "-f", str(HERE / "jupyterhub_config.py")],
                                        cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyterhub exited ({self.process.returncode}):\n{self.log()[-3000:]}")
            try:
                if self.api("GET", "/").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"jupyterhub did not answer within {timeout:g} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        """What the hub (and the proxy, and the single-user servers) printed."""
        return (self.root / "hub.log").read_text(errors="replace")

    def api(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """A call to the hub's REST API with the admin token."""
        return httpx.request(method, f"{self.url}/hub/api{path}", headers={"Authorization": f"token {self.token}"},
                             timeout=60, **kwargs)  # type: ignore[arg-type]

    def start_server(self, user: str) -> None:
        """Ask the hub to start a learner's server (creating the user if needed)."""
        if self.api("GET", f"/users/{user}").status_code == 404:
            self.api("POST", f"/users/{user}").raise_for_status()
        response = self.api("POST", f"/users/{user}/server")
        if response.status_code not in (201, 202, 400):  # 400: already running
            raise RuntimeError(f"starting {user}'s server: {response.status_code} {response.text}")

    def wait_ready(self, user: str, timeout: float = 240.0) -> None:
        """Wait until the hub reports the learner's server ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"/users/{user}").json()
            server = model.get("servers", {}).get("", {})
            if server.get("ready"):
                return
            if not server.get("pending") and not server.get("ready") and time.monotonic() > deadline - timeout + 5:
                raise RuntimeError(f"{user}'s server is neither pending nor ready:\n{self.log()[-3000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"{user}'s server was not ready within {timeout:g} s:\n{self.log()[-3000:]}")

    def stop_server(self, user: str, timeout: float = 60.0) -> None:
        """Stop a learner's server the way jupyterhub-idle-culler does (DELETE /users/<name>/server), and wait."""
        self.api("DELETE", f"/users/{user}/server")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.api("GET", f"/users/{user}").json().get("servers"):
                return
            time.sleep(0.3)
        raise TimeoutError(f"{user}'s server did not stop within {timeout:g} s")

    def user_token(self, user: str) -> str:
        """A new API token of the learner (what their browser's cookie stands for)."""
        response = self.api("POST", f"/users/{user}/tokens", json={"note": "hub test", "expires_in": 3600})
        response.raise_for_status()
        return str(response.json()["token"])

    def stop(self) -> None:
        """Stop the hub (it stops the learners' servers and the proxy), then kill anything left of its group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        for pid, _ in learner_processes(self.users).items():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.real_users and self.shared_progress is not None:
            shutil.rmtree(self.shared_progress, ignore_errors=True)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class KernelError(RuntimeError):
    """A cell raised in a learner's kernel."""


class RemoteKernel:
    """A kernel in a learner's single-user server, reached through the hub's proxy: REST to start, websocket to run."""

    def __init__(self, hub: Hub, user: str, token: str, path: str = "") -> None:
        self.hub, self.user, self.token = hub, user, token
        self.base = f"{hub.url}/user/{user}"
        response = httpx.post(f"{self.base}/api/kernels", json={"name": "python3", "path": path},
                              headers={"Authorization": f"token {token}"}, timeout=120)
        response.raise_for_status()
        self.id = response.json()["id"]
        import websocket  # websocket-client, a dependency of jupyter_server

        self.session = uuid.uuid4().hex
        self.displayed: list[str] = []  # what cells displayed (text/markdown, else text/plain), in order
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{hub.port}/user/{user}/api/kernels/{self.id}/channels?session_id={self.session}",
            header=[f"Authorization: token {token}"], timeout=600)

    def execute(self, code: str, timeout: float = 600.0) -> list[str]:
        """Run `code`; return its stream output (what it displayed goes to `displayed`); raise KernelError with the
        traceback if it raised."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": self.user, "session": self.session, "msg_type": "execute_request",
                       "version": "5.3", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        output: list[str] = []
        error: str | None = None
        replied = idle = False
        deadline = time.monotonic() + timeout
        while not (replied and idle):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.user}'s cell did not finish within {timeout:g} s: {code[:200]}")
            message = json.loads(self.ws.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = message["msg_type"]
            if kind == "stream":
                output.append(message["content"]["text"])
            elif kind in ("display_data", "execute_result"):
                data = message["content"]["data"]
                self.displayed.append(data.get("text/markdown") or data.get("text/plain", ""))
            elif kind == "error":
                error = "\n".join(message["content"]["traceback"])
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                idle = True
            elif kind == "execute_reply":
                replied = True
                if message["content"]["status"] != "ok" and error is None:
                    error = str(message["content"])
        if error is not None:
            raise KernelError(f"{self.user}: {_ANSI.sub('', error)[-3000:]}")
        return output

    def run_notebook(self, path: Path, timeout: float = 600.0) -> int:
        """Run every code cell of a notebook in order (stopping at the first error); return the cells run."""
        import nbformat

        cells = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        for source in cells:
            self.execute(source, timeout=timeout)
        return len(cells)

    def shutdown(self) -> None:
        """Close the websocket and shut the kernel down."""
        try:
            self.ws.close()
        finally:
            httpx.delete(f"{self.base}/api/kernels/{self.id}", headers={"Authorization": f"token {self.token}"},
                         timeout=60)


# ---------------------------------------------------------------- who runs what: processes, sockets, files


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def learner_processes(users: Iterable[str]) -> dict[int, str]:
    """pid → learner of every live process whose environment says it belongs to a learner's server (the server,
    its kernels and everything they start inherit JUPYTERHUB_USER)."""
    wanted = set(users)
    found: dict[int, str] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            user = _environ(int(entry.name)).get("JUPYTERHUB_USER")
        except (OSError, ValueError):
            continue
        if user is not None and user in wanted:
            found[int(entry.name)] = user
    return found


def _tcp_table() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of every loopback TCP socket of the machine."""
    rows = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
            rows.append((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state, inode))
    return rows


@dataclass
class Snapshot:
    """What every learner's processes hold at one moment."""

    listening: dict[int, set[str]]  # port → learners listening on it
    connections: list[tuple[str, int]]  # (learner, remote port) of their established loopback connections
    files: dict[str, dict[str, bool]]  # path → learner → opened for writing
    lab_homes: dict[str, set[str]]  # resolved COURSE_LAB_HOME → learners
    pids: dict[int, str]


def snapshot(users: Iterable[str]) -> Snapshot:
    """Read /proc once: the learners' listening ports, connections, open files and progress folders."""
    pids = learner_processes(users)
    socket_owner: dict[int, str] = {}
    files: dict[str, dict[str, bool]] = defaultdict(dict)
    lab_homes: dict[str, set[str]] = defaultdict(set)
    for pid, user in pids.items():
        try:
            env = _environ(pid)
            home = env.get("COURSE_LAB_HOME") or str(Path(env.get("HOME", "/")) / ".fastapi-perf-lab")
            lab_homes[os.path.realpath(home)].add(user)
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    socket_owner[int(target[8:-1])] = user
                elif target.startswith("/") and not target.startswith(("/dev/", "/proc/")):
                    flags = int(Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().split("flags:")[1].split()[0], 8)
                    files[target][user] = files[target].get(user, False) or bool(flags & os.O_ACCMODE)
        except (OSError, ValueError, IndexError):
            continue  # the process ended while being read
    listening: dict[int, set[str]] = defaultdict(set)
    connections = []
    for local, remote, state, inode in _tcp_table():
        owner = socket_owner.get(inode)
        if owner is None:
            continue
        if state == "0A":
            listening[local].add(owner)
        elif state == "01":
            connections.append((owner, remote))
    return Snapshot(dict(listening), connections, dict(files), dict(lab_homes), pids)


def collisions(shot: Snapshot, ignore: Iterable[str] = ()) -> set[str]:
    """Everything in a snapshot where one learner's work meets another's (`ignore`: files shared by design, e.g. the
    hub's log that every single-user server writes its output to)."""
    found = set()
    ignored = set(ignore)
    for port, users in shot.listening.items():
        if len(users) > 1:
            found.add(f"port {port} listened on by several learners: {sorted(users)}")
    for user, port in shot.connections:
        owners = shot.listening.get(port, set())
        if owners and user not in owners:
            found.add(f"{user} is connected to port {port}, which {sorted(owners)} listen(s) on")
    for path, writers in shot.files.items():
        if path in ignored:
            continue
        shared_db = any(s in path for s in (".db", ".sqlite")) and not path.startswith(str(VENV_BIN.parent))
        if len(writers) > 1 and (any(writers.values()) or shared_db):
            found.add(f"file {path} is open by several learners (writing: {sorted(u for u, w in writers.items() if w)})")
    for home, users in shot.lab_homes.items():
        if len(users) > 1:
            found.add(f"COURSE_LAB_HOME {home} is shared by {sorted(users)}")
    return found


class CollisionWatch:
    """Sample the learners' processes every `every` seconds in a thread; collect every collision seen."""

    def __init__(self, users: Iterable[str], every: float = 0.25, ignore: Iterable[str] = ()) -> None:
        self.users, self.every, self.ignore = list(users), every, set(ignore)
        self.found: set[str] = set()
        self.samples = 0
        self.ports: dict[str, set[int]] = defaultdict(set)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            shot = snapshot(self.users)
            self.found |= collisions(shot, self.ignore)
            for port, users in shot.listening.items():
                for user in users:
                    self.ports[user].add(port)
            self.samples += 1
            self._stop.wait(self.every)

    def __enter__(self) -> CollisionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def progress_mixups(hub: Hub, expected: dict[str, set[str]]) -> list[str]:
    """Learners whose progress.json (in their own home) is missing or holds results other than their own."""
    problems = []
    for user, exercises in expected.items():
        path: Path | str = f"{user}'s home"
        try:
            path = hub.home(user) / ".fastapi-perf-lab" / "progress.json"
            found = set(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError) as error:
            problems.append(f"{user} has no progress of their own ({type(error).__name__}: {path})")
            continue
        if found != exercises:
            problems.append(f"{user}'s progress.json holds {sorted(found)}, but they graded only {sorted(exercises)}")
    return problems
