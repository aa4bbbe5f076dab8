"""Throwaway Unix users for the hub test when it runs as root, and the least access they need to run the course's venv.

`throwaway_users(names)` creates each learner with `useradd -m` (home mode 700, as a hub should make them) and removes
them with `userdel -r` on exit, even after a failure, killing whatever they still run first (a run killed outright
leaves them marked with its pid: the next run removes them). `traverse_grant(paths)`
adds only the search bit for others (o+x, no listing, no reading) to the folders on the way to `paths` that lack it
(here: /root, mode 700, which holds pyenv's Python the venv links to) and restores their exact modes on exit."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def can_create_users() -> bool:
    """True where this process may create Unix users (root, with useradd and userdel installed)."""
    return os.geteuid() == 0 and bool(shutil.which("useradd")) and bool(shutil.which("userdel"))


def uid_processes(uids: set[int]) -> list[int]:
    """Pids of live processes whose real uid is one of `uids`."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("Uid:"):
                    if int(line.split()[1]) in uids:
                        found.append(int(entry.name))
                    break
        except (OSError, ValueError):
            continue
    return found


def _remove(names: Iterable[str]) -> list[str]:
    """Kill the users' processes, then `userdel -r` each; return what could not be removed."""
    uids = set()
    for name in names:
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            pass
    deadline = time.monotonic() + 10
    while (left := uid_processes(uids)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    failed = []
    for name in names:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        done = subprocess.run(["userdel", "-r", name], capture_output=True, text=True)
        if done.returncode not in (0, 12):  # 12: the home folder could not be removed (reported below)
            done = subprocess.run(["userdel", "-r", "-f", name], capture_output=True, text=True)
        if done.returncode != 0:
            failed.append(f"{name}: userdel -r exited {done.returncode}: {done.stderr.strip()}")
    return failed


MARK = "fastapi-perf-lab hub test, pid "


def remove_stale() -> list[str]:
    """Remove the users a killed run left behind (their comment names a run whose process is gone); return them."""
    stale = [entry.pw_name for entry in pwd.getpwall() if entry.pw_gecos.startswith(MARK)
             and entry.pw_gecos.removeprefix(MARK).isdigit()
             and not Path(f"/proc/{entry.pw_gecos.removeprefix(MARK)}").exists()]
    failed = _remove(stale)
    if failed:
        raise RuntimeError(f"users of a killed run could not be removed: {failed}")
    return stale


@contextmanager
def throwaway_users(names: list[str]) -> Iterator[dict[str, Path]]:
    """Create the Unix users `names` (homes mode 700, marked with this run's pid); yield name → home; remove them and
    their homes on exit (and, first, the users of any killed run)."""
    remove_stale()
    created: list[str] = []
    try:
        for name in names:
            subprocess.run(["useradd", "-m", "-K", "HOME_MODE=0700", "-s", "/bin/bash", "-c", f"{MARK}{os.getpid()}",
                            name], check=True, capture_output=True, text=True)
            created.append(name)
        yield {name: Path(pwd.getpwnam(name).pw_dir) for name in names}
    finally:
        failed = _remove(created)
        if failed:
            raise RuntimeError(f"throwaway users left behind: {failed}")


def give(path: Path, user: str) -> None:
    """Make `path` (a file or a whole folder) owned by `user` and their group."""
    entry = pwd.getpwnam(user)
    for folder, dirs, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.lchown(name, entry.pw_uid, entry.pw_gid)


def folders_to_traverse(paths: Iterable[Path]) -> list[Path]:
    """The folders on the way to each path (symlinks followed) that others may not search (no o+x)."""
    needed: list[Path] = []
    for path in paths:
        target = Path(os.path.realpath(path))
        for folder in [*reversed(target.parents), *([target] if target.is_dir() else [])]:
            if not os.stat(folder).st_mode & stat.S_IXOTH and folder not in needed:
                needed.append(folder)
    return needed


@contextmanager
def traverse_grant(paths: Iterable[Path]) -> Iterator[dict[Path, int]]:
    """Add o+x (search only) to the folders others cannot pass on the way to `paths`; yield folder → previous mode;
    restore exactly those modes on exit."""
    previous: dict[Path, int] = {}
    try:
        for folder in folders_to_traverse(paths):
            mode = stat.S_IMODE(os.stat(folder).st_mode)
            previous[folder] = mode
            os.chmod(folder, mode | stat.S_IXOTH)
        yield previous
    finally:
        for folder, mode in previous.items():
            os.chmod(folder, mode)
