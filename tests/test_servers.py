"""Real servers start on a free port and leave nothing behind: normal exit, exception, interrupt, dead parent."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from course_lib.servers import free_port, running_servers, serve, usable_cores

APP = "course_lib.lessons.l00_welcome:hello_app"


def _gone(pid: int, port: int) -> bool:
    """No process left in the server's group, and nothing listening on its port."""
    try:
        os.killpg(pid, 0)
        return False
    except ProcessLookupError:
        pass
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(("kind", "workers"), [("uvicorn", 1), ("uvicorn", 2), ("gunicorn", 2)])
def test_serves_then_stops_every_process(kind, workers):
    with serve(APP, workers=workers, server=kind) as server:
        assert httpx.get(server.url + "/").json() == {"hello": "lab"}
        # the main process plus one process per worker (uvicorn's supervisor may add a helper)
        assert len(server.processes()) >= workers + (1 if workers > 1 else 0)
        assert server in running_servers()
    assert _gone(server.pid, server.port)
    assert server not in running_servers()


def test_stops_on_exception_and_on_keyboard_interrupt():
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with serve(APP) as server:
                raise error
        assert _gone(server.pid, server.port)


def test_stop_twice_is_harmless():
    server = serve(APP)
    server.stop()
    server.stop()
    assert _gone(server.pid, server.port)


def test_a_broken_app_fails_fast_with_its_output():
    with pytest.raises(RuntimeError, match="exited with code") as caught:
        serve("course_lib.no_such_module:app", startup_timeout=20)
    assert "no_such_module" in str(caught.value)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="import string"):
        serve("not-an-import-string")
    with pytest.raises(ValueError, match="workers"):
        serve(APP, workers=0)
    with pytest.raises(ValueError, match="uvicorn"):
        serve(APP, server="hypercorn")  # type: ignore[arg-type]


def test_server_dies_with_a_hard_killed_parent():
    """A kernel killed with SIGKILL runs no atexit: PR_SET_PDEATHSIG must still stop its server."""
    script = textwrap.dedent(f"""
        import sys, time
        from course_lib.servers import serve
        server = serve({APP!r}, workers=2)
        print(server.pid, server.port, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid, port = map(int, parent.stdout.readline().split())
    assert not _gone(pid, port)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 15
    while not _gone(pid, port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(pid, port)


def test_atexit_stops_servers_left_running():
    script = textwrap.dedent(f"""
        from course_lib.servers import serve
        server = serve({APP!r})
        print(server.pid, server.port, flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60).stdout
    pid, port = map(int, out.split())
    assert _gone(pid, port)


def test_link_uses_the_jupyter_proxy_under_a_hub(monkeypatch):
    with serve(APP) as server:
        monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
        assert server.link("/docs") == f"{server.url}/docs"
        monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
        assert server.link("/docs") == f"/user/ada/proxy/{server.port}/docs"


def test_free_port_and_cores():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)


def test_announce_links_docs_where_the_learner_is_only_for_servers_that_outlive_their_cell(monkeypatch):
    import IPython
    import IPython.display
    from IPython.core.events import EventManager, available_events

    shell = type("Shell", (), {})()
    shell.events = EventManager(shell, available_events)
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    with serve(APP, announce=True):  # a `with` block: stopped before its cell ends, so no (dead) link
        pass
    shell.events.trigger("post_run_cell", None)
    assert shown == []
    server = serve(APP, announce=True)  # still running when the cell ends: linked once
    try:
        shell.events.trigger("post_run_cell", None)
        shell.events.trigger("post_run_cell", None)
    finally:
        server.stop()
    with serve(APP, announce=False):
        pass
    shell.events.trigger("post_run_cell", None)
    assert len(shown) == 1
    assert f"(/user/ada/proxy/{server.port}/docs)" in shown[0].data
    assert "through this hub's proxy" in shown[0].data


def test_logs_of_killed_kernels_are_swept_and_live_ones_kept(tmp_path):
    import subprocess as sp

    from course_lib.servers import sweep_orphan_logs

    dead = sp.Popen(["true"])
    dead.wait()
    orphan = tmp_path / f"lab-uvicorn-{dead.pid}-abc123.log"
    mine = tmp_path / f"lab-uvicorn-{os.getpid()}-def456.log"
    alive = tmp_path / "lab-gunicorn-1-ghi789.log"  # pid 1 always runs
    other = tmp_path / "lab-notes.log"
    for path in (orphan, mine, alive, other):
        path.write_text("x")
    assert sweep_orphan_logs(tmp_path) == [orphan]
    assert not orphan.exists() and mine.exists() and alive.exists() and other.exists()
