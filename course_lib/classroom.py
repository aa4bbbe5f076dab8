"""Grade untrusted notebooks: a sandbox per learner, and a result channel learner code cannot write.

The sandbox (`Sandbox`) is a fresh temporary folder holding a private copy of one learner's folder, a
temporary COURSE_LAB_HOME, and the kernel's connection sockets (Unix sockets: the kernel has no network).
Its kernel starts through `_jail.py` (namespaces, limits, its own user; see there) and everything it
started is killed afterwards, then checked gone.

The result channel: the grader (this process, which runs no learner code) adds after each exercise's answer
a check cell of its own, which calls `report`. `report` verifies that the registered checker and the
grading functions are the shipped ones (`fingerprint`, computed here before any learner code ran), grades,
and shows the result as one output of a private MIME type carrying a random nonce made for that cell. The
grader reads a result only from the outputs of its own cell, with that nonce, exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jupyter_client import AsyncKernelManager
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_core.utils import run_sync
from traitlets import Type

__all__ = ["MIME", "Limits", "Sandbox", "isolation", "fingerprint", "report", "check_cell"]

MIME = "application/vnd.fastapi-perf-lab.result+json"
_JAIL = Path(__file__).resolve().parent / "_jail.py"


@dataclass(frozen=True)
class Limits:
    """What one learner's notebook may use while it is graded."""

    cpu_seconds: int = 900  # CPU time of any one process (the kernel, a server it starts)
    memory_bytes: int = 6 << 30  # address space of any one process
    file_bytes: int = 256 << 20  # largest file it may write
    processes: int = 256  # processes at once (with a user of its own)
    output_bytes: int = 2 << 20  # notebook output the grader keeps; one message above 8 MB is dropped whole
    cell_timeout: int = 300  # wall seconds per cell
    folder_bytes: int = 64 << 20  # the learner's folder copied into the sandbox (the rest is left out)


@lru_cache(maxsize=1)
def _namespaces() -> list[str]:
    """The `unshare` options that work here (new PID, network and mount namespaces), or [] where the OS refuses."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return []
    options = [unshare, "--net", "--pid", "--fork", "--kill-child", "--mount"]
    if os.geteuid() != 0:
        options.append("--map-root-user")  # a user namespace makes the others possible without root
    try:
        done = subprocess.run([*options, "true"], capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return options if done.returncode == 0 else []


def _needed_by_kernel() -> list[Path]:
    return [Path(sys.base_prefix), Path(sys.prefix), Path(sys.executable).resolve().parent,
            Path(__file__).resolve().parent]


def _own_user_possible() -> bool:
    """Root can run the kernel as a user of its own, if that user can reach Python (directly, or made visible)."""
    return os.geteuid() == 0 and (bool(_namespaces()) or not _blocked_for_others(_needed_by_kernel()))


def isolation() -> dict[str, bool]:
    """What this machine allows: namespaces (no network, nothing survives), a user of its own (root only)."""
    return {"namespaces": bool(_namespaces()), "own_user": _own_user_possible()}


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _processes() -> list[int]:
    try:
        return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    except OSError:  # no /proc (not Linux)
        return []


def _status_field(pid: int, name: str) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _blocked_for_others(needed: Sequence[Path]) -> list[list[Any]]:
    """[folder, [child, ...]] for each folder on the way to a needed path that other users may not enter."""
    blocked: dict[str, list[str]] = {}
    for path in needed:
        path = path.resolve()
        for parent in reversed(path.parents):
            if parent == path or parent == Path("/"):
                continue
            try:
                if parent.stat().st_mode & stat.S_IXOTH:
                    continue
            except OSError:
                break
            child = path.relative_to(parent).parts[0]
            if child not in blocked.setdefault(str(parent), []):
                blocked[str(parent)].append(child)
            break
    return [[folder, children] for folder, children in blocked.items()]


class _TolerantChannel(AsyncZMQSocketChannel):
    """A channel that skips a message it cannot read (garbled, or cut because it was over the size limit)."""

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:  # type: ignore[override]
        """The next readable message (skipping unreadable ones), or queue.Empty after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await super().get_msg(timeout=left)
            except ValueError:  # an invalid signature or a broken frame
                continue


class _SandboxClient(AsyncKernelClient):
    """A kernel client whose channels skip unreadable messages instead of failing the whole run."""

    iopub_channel_class = Type(_TolerantChannel)
    shell_channel_class = Type(_TolerantChannel)
    control_channel_class = Type(_TolerantChannel)


class _SandboxKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel is started inside the sandbox (through `_jail.py`)."""

    sandbox: Sandbox

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        """The command: unshare (where it works), then the jail's PID 1 with this kernel's connection file."""
        if self.sandbox.uid is not None:  # written by jupyter_client as 0600 for us: the kernel's user reads it
            os.chown(self.connection_file, self.sandbox.uid, self.sandbox.uid)
        return [*_namespaces(), sys.executable, "-P", str(_JAIL), "confine", str(self.sandbox.spec),
                self.connection_file]

    def client(self, **kwargs: Any) -> Any:
        """A client on this manager's zmq context (the one whose sockets drop oversized messages)."""
        return super().client(context=self.context, **kwargs)


class Sandbox:
    """One learner's grading sandbox; `close()` kills what it started and deletes it (use as a context manager)."""

    def __init__(self, limits: Limits = Limits(), hide: Sequence[Path] = (), own_user: bool | None = None) -> None:
        self.limits = limits
        self.base = Path(tempfile.mkdtemp(prefix="course-lab-grade-"))
        self.uid: int | None = None
        if own_user if own_user is not None else _own_user_possible():
            self.uid = 1_600_000_000 + secrets.randbelow(400_000_000)  # a user nobody else is
        self.work, self.home, self.ipc = self.base / "work", self.base / "home", self.base / "ipc"
        for folder in (self.work, self.home, self.ipc):
            folder.mkdir(mode=0o700)
        os.chmod(self.base, 0o711)
        self.spec = self.base / "spec.json"
        self.km: _SandboxKernelManager | None = None
        self._kernel_ns: str | None = None
        self._process: Any = None
        self._pgid: int | None = None

    # --- setting up -------------------------------------------------------------------------------------

    def copy_in(self, folder: Path) -> Path:
        """Copy the regular files of `folder` (no symlinks, devices or pipes) into the sandbox, up to the size cap."""
        budget = self.limits.folder_bytes
        for current, dirs, files in os.walk(folder, followlinks=False):
            relative = Path(current).relative_to(folder)
            for name in sorted(files):
                source = Path(current) / name
                try:
                    info = source.lstat()
                except OSError:
                    continue
                if not stat.S_ISREG(info.st_mode) or info.st_size > budget:
                    continue
                budget -= info.st_size
                target = self.work / relative / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target, follow_symlinks=False)
            dirs[:] = [d for d in sorted(dirs) if not (Path(current) / d).is_symlink()]
        if self.uid is not None:
            for path in [self.work, *self.work.rglob("*")]:
                os.lchown(path, self.uid, self.uid)
        return self.work

    def kernel_manager(self, hide: Sequence[Path] = ()) -> AsyncKernelManager:
        """A kernel manager for one notebook run in this sandbox (Unix-socket transport, no network needed)."""
        namespaces = bool(_namespaces())
        keep = [self.base, Path(sys.prefix), Path(__file__).resolve().parent]
        hidden = [str(p.resolve()) for p in hide
                  if p.exists() and not any(k.resolve().is_relative_to(p.resolve()) for k in keep)]
        env = {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
            "HOME": str(self.home), "USER": "learner", "LOGNAME": "learner", "LANG": os.environ.get("LANG", "C.UTF-8"),
            "COURSE_LAB_HOME": str(self.home / ".fastapi-perf-lab"), "TMPDIR": str(self.home),
            "MPLCONFIGDIR": str(self.home / ".matplotlib"), "PYTHONDONTWRITEBYTECODE": "1",
            "COURSE_LAB_SANDBOX": "1",
        }
        self.spec.write_text(json.dumps({
            "hide": hidden, "work": str(self.work), "reveal": _blocked_for_others(_needed_by_kernel())
            if self.uid is not None and namespaces else [], "uid": self.uid, "namespaces": namespaces,
            "limits": asdict(self.limits), "env": env, "python": sys.executable,
        }))
        os.chmod(self.spec, 0o600)
        if self.uid is not None:
            for folder in (self.work, self.home, self.ipc):
                os.chown(folder, self.uid, self.uid)
        import zmq
        import zmq.asyncio

        context = zmq.asyncio.Context()
        context.setsockopt(zmq.MAXMSGSIZE, 8 << 20)  # one giant message is dropped, not read into memory
        km = _SandboxKernelManager(kernel_name="python3", transport="ipc", ip=str(self.ipc / "k"),
                                   connection_file=str(self.ipc / "kernel.json"), cache_ports=False, context=context,
                                   client_class="course_lib.classroom._SandboxClient")
        km.sandbox = self
        self.km = km
        return km

    def watch(self) -> None:
        """Note where the kernel runs (its process group, its PID namespace), to find everything it starts."""
        provisioner = getattr(self.km, "provisioner", None)
        pid = getattr(provisioner, "pid", None)
        if pid is None:
            return
        self._pgid = getattr(provisioner, "pgid", None)
        self._process = getattr(provisioner, "process", None)
        if _namespaces():
            for _ in range(50):
                children = [p for p in _processes() if _status_field(p, "PPid") == str(pid)]
                if children and _pid_namespace(children[0]) != _pid_namespace(os.getpid()):
                    self._kernel_ns = _pid_namespace(children[0])
                    return
                time.sleep(0.02)

    def why_it_died(self) -> str:
        """Why the kernel ended, when a limit ended it ("" if unknown)."""
        code = self._process.poll() if self._process is not None else None
        signals = {128 + signal.SIGXCPU: "it used up its CPU time (--cpu-seconds)",
                   128 + signal.SIGKILL: "it was killed (over its CPU time or memory, or stopped by the grader)",
                   128 + signal.SIGXFSZ: "it wrote a file over the size limit", 128 + signal.SIGSEGV: "it crashed"}
        return signals.get(code, "") if code is not None else ""

    # --- tearing down -----------------------------------------------------------------------------------

    def _leftovers(self) -> list[int]:
        """Processes still running that the sandbox started: its PID namespace, its user, its process group."""
        if self._kernel_ns is None and self.uid is None and self._pgid is None:
            return []
        me = os.getpid()
        found = []
        for pid in _processes():
            if pid == me:
                continue
            if self._kernel_ns is not None and _pid_namespace(pid) == self._kernel_ns:
                found.append(pid)
            elif self.uid is not None and _status_field(pid, "Uid").split()[:1] == [str(self.uid)]:
                found.append(pid)
            elif self._pgid is not None and _status_field(pid, "NSpgid").split()[:1] == [str(self._pgid)]:
                found.append(pid)
        return found

    def close_kernel(self) -> list[str]:
        """Shut the kernel down and kill every process the sandbox started; describe any that survived."""
        if self.km is not None:
            if self._kernel_ns is None and self._pgid is None:
                self.watch()
            try:
                run_sync(self.km.shutdown_kernel)(now=True)
            except Exception:  # already dead, or never started
                pass
            try:
                self.km.context.destroy(linger=0)
            except Exception:
                pass
            self.km = None
        deadline = time.monotonic() + 10
        survivors = self._leftovers()
        while survivors and time.monotonic() < deadline:
            for pid in survivors:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
            survivors = self._leftovers()
        described = []
        for pid in survivors:
            try:
                described.append(f"pid {pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                                 .decode(errors="replace")[:200])
            except OSError:
                pass
        return described

    def close(self) -> list[str]:
        """Shut the kernel down, kill every process the sandbox started, delete its files; describe survivors."""
        described = self.close_kernel()
        if self.uid is not None:  # files its user left in the shared temporary folders
            for shared in ("/tmp", "/var/tmp", "/dev/shm"):
                try:
                    entries = list(os.scandir(shared))
                except OSError:
                    continue
                for entry in entries:
                    try:
                        if entry.stat(follow_symlinks=False).st_uid == self.uid:
                            if entry.is_dir(follow_symlinks=False):
                                shutil.rmtree(entry.path, ignore_errors=True)
                            else:
                                os.unlink(entry.path)
                    except OSError:
                        pass
        shutil.rmtree(self.base, ignore_errors=True)
        return described

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the result channel (the part that runs in the kernel) ------------------------------------------------

def _code_digest(code: types.CodeType, into: Any) -> None:
    into.update(repr((code.co_name, code.co_qualname, code.co_code, code.co_names, code.co_varnames,
                      code.co_freevars, code.co_cellvars, code.co_filename)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, into)
        else:
            into.update(_stable_repr(const).encode())


def _stable_repr(value: Any) -> str:
    """repr, but the same in every process (a frozenset's order depends on the hash seed)."""
    if isinstance(value, (frozenset, set)):
        return "{" + ",".join(sorted(_stable_repr(v) for v in value)) + "}"
    if isinstance(value, tuple):
        return "(" + ",".join(_stable_repr(v) for v in value) + ")"
    text = repr(value)
    return text.split(" at 0x")[0] if " at 0x" in text else text


def _grading_functions(exercise_id: str) -> list[tuple[str, Any]]:
    """What a verdict depends on that a learner could swap: the registered checker, grade and its helpers."""
    grading = sys.modules["course_lib.grading"]
    grading.exercises()  # loads every lesson
    registered = grading._REGISTRY.get(exercise_id)
    checking = grading.Checking
    return [("checker", getattr(registered, "checker", None)), ("grade", grading.grade),
            ("_lookup", grading._lookup), ("_run_with_time_limit", grading._run_with_time_limit),
            *[(f"Checking.{name}", getattr(checking, name, None))
              for name in ("__init__", "record", "fail", "expect", "require_callable", "build_app", "call")],
            ("Result.__init__", grading.Result.__init__), ("Checking", grading.Checking), ("Fail", grading.Fail)]


def fingerprint(exercise_id: str) -> dict[str, str]:
    """A digest of each function a verdict depends on (module, name and code), to compare in the kernel."""
    import course_lib.grading  # noqa: F401  (the shipped module, registered in sys.modules)

    prints = {}
    for name, fn in _grading_functions(exercise_id):
        digest = hashlib.sha256()
        if isinstance(fn, type):
            digest.update(f"{fn.__module__}.{fn.__qualname__}".encode())
        elif isinstance(fn, types.FunctionType):
            digest.update(f"{fn.__module__}.{fn.__qualname__}".encode())
            digest.update(_stable_repr((fn.__globals__.get("__name__"), fn.__defaults__,
                                        tuple(sorted((fn.__kwdefaults__ or {}).items())))).encode())
            _code_digest(fn.__code__, digest)
        else:
            digest.update(repr(type(fn)).encode())
        prints[name] = digest.hexdigest()
    return prints


def _tampered(exercise_id: str, expected: dict[str, str]) -> str:
    found = fingerprint(exercise_id)
    changed = [name for name, value in expected.items() if found.get(name) != value]
    if not changed:
        return ""
    return ("not graded: the notebook replaced the grader's own code (" + ", ".join(changed) + "), "
            "so no verdict from this kernel can be trusted")


def _show(record: dict[str, Any]) -> None:
    from IPython.display import display

    display({MIME: record, "text/plain": f"{record['exercise']}: {record['status']}"}, raw=True)


def report(nonce: str, exercise: str, expected: dict[str, str]) -> Callable[[Callable[..., Any]], None]:
    """What the grader's own cell calls: run the shipped check with `check` bound to a verifying grader, so that
    exactly one result with the nonce is shown, even when the answer cannot be evaluated."""
    shown: list[bool] = []

    def check(exercise_id: str, answer: Any, *, timeout: float | None = None) -> None:
        shown.append(True)
        record: dict[str, Any] = {"nonce": nonce, "exercise": exercise_id}
        try:
            problem = _tampered(exercise_id, expected)
            if not problem:
                result = sys.modules["course_lib.grading"].grade(exercise_id, answer, timeout=timeout)
                problem = _tampered(exercise_id, expected)  # the answer may swap the checker while it runs
                record.update(status="passed" if result.passed else "failed", message=str(result.message),
                              hint=str(result.hint or ""),
                              figures={str(k): v if isinstance(v, (int, float, str)) else str(v)
                                       for k, v in dict(result.figures).items()})
            if problem:
                record.update(status="error", message=problem, hint="", figures={})
        except BaseException as error:  # noqa: BLE001  whatever happens, the grader gets one record
            record.update(status="error", message=f"the check could not run: {type(error).__name__}: {error}"[:500],
                          hint="", figures={})
        _show(record)

    def run(shipped: Callable[..., Any]) -> None:
        try:
            shipped(check)
        except BaseException as error:  # noqa: BLE001  e.g. the answer's name is not defined
            if not shown:
                _show({"nonce": nonce, "exercise": exercise, "status": "failed", "hint": "", "figures": {},
                       "message": f"your answer could not be evaluated ({type(error).__name__}: {error}"[:400]
                                  + "): did the cell that defines it run without errors?"})

    return run


def check_cell(shipped: str, nonce: str, exercise: str, expected: dict[str, str]) -> str:
    """The grader's check cell: the shipped check cell's own code, with `check` bound to `report(...)`."""
    import ast

    tree = ast.parse(shipped)
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr):
        raise ValueError(f"a shipped check cell is one `check(...)` call, not {shipped!r}")
    return (f"__import__('course_lib.classroom', fromlist=['report']).report({nonce!r}, {exercise!r}, {expected!r})"
            f"(lambda check: {shipped.strip()})")


def new_nonce() -> str:
    """A fresh random nonce for one check cell."""
    return secrets.token_hex(16)
