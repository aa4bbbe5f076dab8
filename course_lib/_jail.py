"""Inside the grading sandbox (a standalone script, run by path with `python -P`, importing nothing of course_lib).

`_jail.py confine SPEC CONNECTION_FILE` runs first, as PID 1 of fresh PID, network and mount namespaces when
the machine allows: it hides instructor-only folders under empty read-only tmpfs mounts, brings up loopback,
then forks the kernel with CPU, memory, file-size and process limits, as an unprivileged user (when started
as root) or with every capability dropped, stdin/stdout/stderr on /dev/null, and waits. When the kernel
ends, PID 1 ends, and the kernel of the OS kills every process left in the namespace (a learner's server,
a daemon that called setsid). `_jail.py kernel -f CONNECTION_FILE` is the kernel: it refuses sockets to
anything but loopback (an audit hook learner code cannot remove), then starts ipykernel.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import resource
import signal
import socket
import struct
import sys
from typing import Any

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 2, 4, 8, 32, 4096, 16384
_PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 24, 38
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _hide(paths: list[str]) -> None:
    """Cover each folder with an empty read-only tmpfs, each file with /dev/null (this mount namespace only)."""
    libc = _libc()
    for path in paths:
        if os.path.isdir(path):
            ok = libc.mount(b"tmpfs", path.encode(), b"tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                            b"size=4k,mode=555") == 0
        elif os.path.exists(path):
            ok = libc.mount(b"/dev/null", path.encode(), None, _MS_BIND, None) == 0
        else:
            continue
        if not ok:
            raise OSError(ctypes.get_errno(), f"could not hide {path}")


def _reveal(base: str, blocked: list[list[Any]]) -> None:
    """Make the Python install readable to the kernel's user when it sits in a folder others cannot enter (e.g.
    /root/.pyenv): cover that folder with an empty tmpfs others may enter, and bind back only what is needed."""
    libc = _libc()
    for n, (folder, children) in enumerate(blocked):
        staged = []
        for m, child in enumerate(children):
            stage = os.path.join(base, f"reveal-{n}-{m}")
            os.mkdir(stage, 0o700)
            if libc.mount(os.path.join(folder, child).encode(), stage.encode(), None, _MS_BIND | _MS_REC, None) != 0:
                raise OSError(ctypes.get_errno(), f"could not stage {folder}/{child}")
            staged.append((child, stage))
        if libc.mount(b"tmpfs", folder.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=64k,mode=755") != 0:
            raise OSError(ctypes.get_errno(), f"could not cover {folder}")
        for child, stage in staged:
            target = os.path.join(folder, child)
            os.mkdir(target, 0o755)
            if libc.mount(stage.encode(), target.encode(), None, _MS_BIND | _MS_REC, None) != 0:
                raise OSError(ctypes.get_errno(), f"could not bind back {target}")
            libc.mount(b"none", target.encode(), None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_REC, None)
        libc.mount(b"none", folder.encode(), None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, None)


def _loopback_up() -> None:
    """A new network namespace has only `lo`, and it is down: servers on 127.0.0.1 need it up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        import fcntl

        flags = struct.unpack("16sH", fcntl.ioctl(sock, _SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def _limit(spec: dict[str, Any]) -> None:
    limits = spec["limits"]
    cpu = int(limits["cpu_seconds"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    resource.setrlimit(resource.RLIMIT_AS, (int(limits["memory_bytes"]),) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limits["file_bytes"]),) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if spec.get("uid") is not None:  # counted per user: meaningful only for a user of its own
        resource.setrlimit(resource.RLIMIT_NPROC, (int(limits["processes"]),) * 2)


def _drop_privileges(spec: dict[str, Any]) -> None:
    libc = _libc()
    uid = spec.get("uid")
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    elif spec.get("namespaces"):  # root of a user namespace: no capabilities left (cannot unmount the hiding)
        for cap in range(64):
            if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                break
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def confine(spec_path: str, connection_file: str) -> None:
    """PID 1 of the sandbox: set it up, fork the kernel, reap every orphan, end with the kernel."""
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    if spec.get("namespaces"):
        _reveal(os.path.dirname(spec_path), spec.get("reveal", []))
        _hide(spec["hide"])
        _loopback_up()
    kernel = os.fork()
    if kernel == 0:
        try:
            _limit(spec)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            _drop_privileges(spec)
            os.chdir(spec["work"])
            python = spec["python"]
            os.execve(python, [python, "-P", os.path.abspath(__file__), "kernel", "-f", connection_file], spec["env"])
        finally:
            os._exit(127)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt is for the kernel (same process group)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if pid == kernel:
            code = os.waitstatus_to_exitcode(status)
            os._exit(128 - code if code < 0 else code & 0x7F)  # killed by a signal: 128 + its number


def _loopback_only(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook: a socket may bind, connect or send only to loopback (or a Unix socket)."""
    if event not in ("socket.bind", "socket.connect", "socket.sendto"):
        return
    sock, address = args[0], args[-1]
    if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return
    host = str(address[0]).split("%")[0]
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise PermissionError(f"the grading sandbox allows network only on loopback (127.0.0.1), not {host!r}")


def kernel(argv: list[str]) -> None:
    """The learner's kernel: loopback-only sockets, then ipykernel as `python -m ipykernel_launcher` would."""
    sys.addaudithook(_loopback_only)
    sys.path.insert(0, "")
    sys.argv = ["ipykernel_launcher", *argv]
    from ipykernel.kernelapp import launch_new_instance

    launch_new_instance()


if __name__ == "__main__":
    if sys.argv[1] == "confine":
        confine(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "kernel":
        kernel(sys.argv[2:])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
