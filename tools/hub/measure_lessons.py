"""Measure what each lesson costs a learner's pod: peak memory (the kernel plus every server it starts: the summed
RSS of its process tree, sampled every 0.1 s) and CPU seconds (kernel and children), plus an idle Jupyter server.

    python tools/hub/measure_lessons.py [--out tools/hub/lesson_sizes.json] [NOTEBOOK ...]

Prints a table and writes JSON (lesson → peak_mib, cpu_s, wall_s) that INSTRUCTORS.md's sizing table and
binder/ config's memory limit are checked against (tests/test_image.py)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN = ("import sys; from pathlib import Path; from course_lib.notebooks import execute_notebook; "
       "execute_notebook(Path(sys.argv[1]), timeout=900)")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(stat.parent.name))
    return tree


def tree_rss_mib(pid: int, include_root: bool = True) -> float:
    """Summed resident memory (MiB) of a process and all its descendants (or only the descendants)."""
    tree, todo, total = _children(), [pid], 0.0
    while todo:
        current = todo.pop()
        todo.extend(tree.get(current, []))
        if current == pid and not include_root:
            continue
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024
        except (OSError, StopIteration, ValueError):
            continue
    return total


def measure(notebook: Path, every: float = 0.1) -> dict[str, float]:
    """Run one notebook in a fresh kernel; its peak tree memory (kernel and servers) and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lab-measure-") as home:
        driver = subprocess.Popen([sys.executable, "-c", RUN, str(notebook)], cwd=ROOT,
                                  env={**os.environ, "COURSE_LAB_HOME": home}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        peak = 0.0
        while driver.poll() is None:
            peak = max(peak, tree_rss_mib(driver.pid, include_root=False))  # the kernel's tree, not nbclient
            time.sleep(every)
        error = driver.stderr.read().decode(errors="replace") if driver.stderr else ""
        driver.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if driver.returncode != 0:
        raise RuntimeError(f"{notebook.name} failed:\n{error[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"peak_mib": round(peak, 1), "cpu_s": round(cpu, 1), "wall_s": round(time.monotonic() - start, 1)}


def idle_server_mib(timeout: float = 60.0) -> float:
    """Resident memory of an idle JupyterLab server (what every learner's pod holds before any kernel)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", "--IdentityProvider.token=", "--ServerApp.root_dir=" + str(ROOT)]
    if os.getuid() == 0:
        command.append("--allow-root")
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2)
                httpx.get(f"http://127.0.0.1:{port}/lab", timeout=30)  # the page a learner opens first
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        return round(tree_rss_mib(server.pid), 1)
    finally:
        server.terminate()
        server.wait(timeout=30)


def markdown_table(sizes: dict[str, dict[str, float]]) -> str:
    """The sizing table of INSTRUCTORS.md, from measure_lessons' JSON (tests/test_image.py checks they agree)."""
    server = sizes["jupyter-server (idle)"]["peak_mib"]
    lines = ["| lesson | kernel + its servers, peak MiB | CPU s | pod peak with the idle server, MiB |",
             "|---|---:|---:|---:|"]
    for name in sorted(n for n in sizes if n[:2].isdigit()):
        row = sizes[name]
        lines.append(f"| {name} | {row['peak_mib']:.0f} | {row['cpu_s']:.1f} | {server + row['peak_mib']:.0f} |")
    lines.append(f"| (idle JupyterLab server) | {server:.0f} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure the lessons given (default: every lesson notebook), print a table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write (default: print only)")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    results: dict[str, dict[str, float]] = {"jupyter-server (idle)": {"peak_mib": idle_server_mib()}}
    print(f"{'lesson':<28} {'peak MiB':>9} {'CPU s':>7} {'wall s':>7}")
    print(f"{'jupyter-server (idle)':<28} {results['jupyter-server (idle)']['peak_mib']:>9.0f}")
    for notebook in notebooks:
        results[notebook.stem] = measure(notebook)
        row = results[notebook.stem]
        print(f"{notebook.stem:<28} {row['peak_mib']:>9.0f} {row['cpu_s']:>7.1f} {row['wall_s']:>7.1f}", flush=True)
    if args.out:
        previous = json.loads(args.out.read_text()) if args.out.exists() else {}
        previous.update(results)
        meta = {"cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 1),
                "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        args.out.write_text(json.dumps({**previous, "_machine": meta}, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
