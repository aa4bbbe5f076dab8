"""Real servers start on a free port and leave nothing behind: normal exit, exception, interrupt, dead parent."""

from __future__ import annotations

import asyncio
import os
import re
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


# ------------------------------------------------- FastAPI's docs pages through a hub's proxy (jupyter-server-proxy)

PREFIX = "/user/ada/proxy/8123"
PROBE_APP = '''
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


def _seen(request):
    return {"path": request.scope["path"], "root_path": request.scope.get("root_path", ""),
            "url_path": request.url.path}


async def _logo(request):
    return JSONResponse(_seen(request))


def make_app(docs_url="/docs", openapi_url="/openapi.json", relative_docs=False):
    app = FastAPI(title="Probe", docs_url=None if relative_docs else docs_url, openapi_url=openapi_url)

    @app.get("/items/{item_id}")
    def item(item_id: int, request: Request) -> dict:
        return _seen(request)

    if relative_docs:  # the docs page names the API definition relative to itself
        @app.get(docs_url, include_in_schema=False)
        def docs():
            return get_swagger_ui_html(openapi_url=openapi_url.rsplit("/", 1)[1], title="Probe")

    app.mount("/static", Starlette(routes=[Route("/logo", _logo)]))
    v2 = FastAPI(title="Probe v2")

    @v2.get("/things")
    def things(request: Request) -> dict:
        return _seen(request)

    app.mount("/v2", v2)  # a FastAPI app mounted in the app: its own docs pages at /v2/docs
    return app


app = make_app()
'''


def _probe_module(folder):
    """The probe app's module, written to `folder` (where a real server imports it from) and imported here."""
    import importlib.util

    path = folder / "probe_app.py"
    path.write_text(PROBE_APP)
    spec = importlib.util.spec_from_file_location(f"probe_app_{id(folder)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)


async def _proxy_problems(client: httpx.AsyncClient, docs: str = "/docs", prefix: str = PREFIX,
                          mounted: str = "/v2") -> list[str]:
    """What breaks for a browser that reaches the probe app through jupyter-server-proxy (which strips `prefix` from
    the path and sends it as X-Forwarded-Prefix, X-Forwarded-Context and X-ProxyContextPath), and for one that
    reaches it directly: the docs page, the API definition it names, the server "Try it out" uses, and the paths
    the app's own routes see (lessons 03 and 08 key cache entries and log lines on them)."""
    from urllib.parse import urljoin

    proxied = {"X-Forwarded-Prefix": prefix, "X-Forwarded-Context": prefix, "X-ProxyContextPath": prefix}

    async def via_proxy(public: str) -> httpx.Response | None:
        """The hub sends the app only what is under the prefix; the proxy strips it."""
        if not public.startswith(prefix + "/"):
            return None
        return await client.get(public[len(prefix):], headers=proxied)

    problems = []
    pages = [(where, fetch, at, base + at + page) for at, page in (("", docs), (mounted, "/docs"))
             for where, fetch, base in (("through the proxy", via_proxy, prefix), ("directly", client.get, ""))]
    for where, fetch, at, page_url in pages:
        page = await fetch(page_url)
        named = re.search(r"url: '([^']*)'", page.text) if page is not None and page.status_code == 200 else None
        if named is None:
            problems.append(f"{where}, {page_url} did not answer a Swagger page naming its API definition")
            continue
        spec_url = urljoin(page_url, named.group(1))
        spec = await fetch(spec_url)
        if spec is None or spec.status_code != 200:
            outside = f"is outside {prefix}/ (the hub sends it elsewhere)"
            why = outside if spec is None else f"answers {spec.status_code}"
            problems.append(f"{where}, the docs page at {page_url} asks for its API definition at {spec_url}, which "
                            f"{why}: Swagger shows 'Failed to load API definition'")
            continue
        servers = [entry.get("url") for entry in spec.json().get("servers", [])]
        expected = [server] if (server := (prefix if where == "through the proxy" else "") + at) else []
        if servers[:1] != expected:
            problems.append(f"{where}, the API definition lists servers {servers}: 'Try it out' would send its "
                            f"requests to {(servers or ['/'])[0]} instead of {(expected or ['/'])[0]}")
    for path in ("/items/7", "/static/logo", f"{mounted}/things"):
        answers = (("directly", await client.get(path)), ("through the proxy", await via_proxy(prefix + path)))
        for where, response in answers:
            if response is None or response.status_code != 200:
                problems.append(f"{path} {where} answered {response.status_code if response else 'nothing'}: "
                                "the app's own route no longer matches")
                continue
            seen = response.json()
            if (seen["path"], seen["url_path"]) != (path, path):
                problems.append(f"{path} {where}: the app sees path {seen['path']!r} (request.url.path "
                                f"{seen['url_path']!r}): its cache keys and access-log paths would change")
    return problems


def _in_process_problems(app) -> list[str]:
    async def run() -> list[str]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://lab") as client:
            return await _proxy_problems(client)

    return asyncio.run(run())


DOCS = ("/docs", "/redoc", "/openapi.json", "/v2/docs", "/v2/redoc", "/v2/openapi.json")


def _root_path_everywhere(app, compliant: bool, always: bool = False, only: tuple[str, ...] | None = None):
    """Wrong fixes: the prefix as root_path for every request (uvicorn --root-path does so `always`, with the path
    `compliant`ly prefixed; a header-reading middleware only for proxied requests), or `only` for some paths."""
    async def wrapped(scope, receive, send):
        headers = dict(scope.get("headers", ()))
        prefix = PREFIX if always else headers.get(b"x-forwarded-prefix", b"").decode()
        if scope["type"] == "http" and prefix and (only is None or scope["path"] in only):
            scope = {**scope, "root_path": prefix}
            if compliant:
                scope["path"] = prefix + scope["path"]
        await app(scope, receive, send)

    return wrapped


def test_the_docs_page_through_a_proxy_right_answers(tmp_path):
    from course_lib.proxy.docs_behind_proxy import DocsBehindProxy

    make_app = _probe_module(tmp_path)["make_app"]

    class Passthrough:  # a learner's pure ASGI middleware around the app: the docs paths are found through `.app`
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            await self.app(scope, receive, send)

    assert _in_process_problems(DocsBehindProxy(make_app())) == []
    assert _in_process_problems(DocsBehindProxy(Passthrough(make_app()))) == []
    assert _in_process_problems(DocsBehindProxy(make_app(), paths=DOCS)) == []
    custom = DocsBehindProxy(make_app(docs_url="/api-docs", openapi_url="/api/schema.json"))
    assert custom.paths == {"/api-docs", "/api/schema.json", "/redoc", "/v2/docs", "/v2/redoc", "/v2/openapi.json"}
    assert asyncio.run(_run(custom, "/api-docs")) == []


async def _run(app, docs: str) -> list[str]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://lab") as client:
        return await _proxy_problems(client, docs=docs)


def test_the_docs_page_through_a_proxy_wrong_answers_fail_and_say_why(tmp_path):
    make_app = _probe_module(tmp_path)["make_app"]
    plain = _in_process_problems(make_app())  # no fix: the state of issue 16
    assert any("asks for its API definition at /openapi.json, which is outside" in p for p in plain), plain
    relative = _in_process_problems(make_app(relative_docs=True))  # the page loads, "Try it out" goes to the root
    assert any("through the proxy, the API definition lists servers []" in p for p in relative), relative
    assert not any(p.startswith(f"through the proxy, the docs page at {PREFIX}/docs") for p in relative), relative
    uvicorn_root_path = _in_process_problems(_root_path_everywhere(make_app(), compliant=True, always=True))
    assert any("/items/7 directly: the app sees path '/user/ada/proxy/8123/items/7'" in p
               for p in uvicorn_root_path), uvicorn_root_path
    proxied_root_path = _in_process_problems(_root_path_everywhere(make_app(), compliant=True))
    assert proxied_root_path and all("through the proxy: the app sees path" in p for p in proxied_root_path), (
        proxied_root_path)
    root_path_only = _in_process_problems(_root_path_everywhere(make_app(), compliant=False))
    assert "/static/logo through the proxy answered 404: the app's own route no longer matches" in root_path_only
    assert "/v2/things through the proxy answered 404: the app's own route no longer matches" in root_path_only
    assert any(p.startswith("through the proxy, /user/ada/proxy/8123/v2/docs did not answer") for p in root_path_only)
    assert not any("/items/7" in p for p in root_path_only), root_path_only
    docs_only_root_path = _in_process_problems(_root_path_everywhere(make_app(), compliant=False, only=DOCS))
    assert docs_only_root_path == [  # a mounted FastAPI app's docs need the public path as well as root_path
        "through the proxy, /user/ada/proxy/8123/v2/docs did not answer a Swagger page naming its API definition"]


def test_a_forwarded_prefix_that_is_not_a_plain_path_is_ignored():
    from course_lib.proxy.docs_behind_proxy import forwarded_prefix

    assert forwarded_prefix([(b"x-forwarded-prefix", b"/user/ada%40x/proxy/8123/")]) == "/user/ada%40x/proxy/8123"
    for bad in (b"/x'</script><script>alert(1)//", b"relative/path", b"/a b", b"", b"\xff", b'/a"b'):
        assert forwarded_prefix([(b"x-forwarded-prefix", bad)]) == "", bad
    assert forwarded_prefix([(b"host", b"lab")]) == ""


@pytest.mark.parametrize(("kind", "workers"), [("uvicorn", 1), ("gunicorn", 2)])
def test_served_on_a_hub_the_docs_work_through_the_proxy_and_routes_see_their_own_paths(
        kind, workers, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    _probe_module(tmp_path)
    with serve("probe_app:app", server=kind, workers=workers, cwd=tmp_path) as server:
        assert server.app == "probe_app:app" and "docs_behind_proxy:app" in server.command

        async def check() -> list[str]:
            async with httpx.AsyncClient(base_url=server.url) as client:
                return await _proxy_problems(client)

        assert asyncio.run(check()) == []


def test_served_off_a_hub_the_command_is_unchanged_and_a_callers_pythonpath_is_kept(tmp_path, monkeypatch):
    _probe_module(tmp_path)
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
    with serve("probe_app:app", cwd=tmp_path) as server:
        assert "probe_app:app" in server.command and "docs_behind_proxy:app" not in server.command
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    with serve("probe_app:app", env={"PYTHONPATH": str(tmp_path)}) as server:  # found on the caller's PYTHONPATH
        assert httpx.get(server.url + "/items/7").json()["path"] == "/items/7"


def test_on_a_hub_a_broken_app_still_fails_fast_with_its_output(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/ada/")
    with pytest.raises(RuntimeError, match="exited with code") as caught:
        serve("course_lib.no_such_module:app", startup_timeout=20)
    assert "no_such_module" in str(caught.value)


# ------------------------------------------------- interrupts: whatever point Ctrl-C hits, no server is left running


def test_ctrl_c_inside_a_start_or_stop_is_held_until_it_is_done():
    from course_lib.servers import _sigint_deferred

    reached_the_end = False
    with pytest.raises(KeyboardInterrupt):
        with _sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the signal has arrived: still running
            reached_the_end = True
    assert reached_the_end


def test_a_group_stops_every_server_when_one_fails_to_start():
    import asyncio

    from course_lib.servers import ServerGroup

    async def main() -> list:
        with ServerGroup() as group:
            good = group.start(APP)
            group.start("course_lib.no_such_module:app")
            await group.ready()
        return [good]

    with pytest.raises(RuntimeError, match="exited with code"):
        asyncio.run(main())
    assert running_servers() == []


def test_a_group_restarts_a_server_whose_port_was_taken(monkeypatch):
    """The free port picked can be taken before the server binds it: that server starts again elsewhere."""
    import asyncio

    from course_lib import servers

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        real = servers.free_port
        monkeypatch.setattr(servers, "free_port", lambda: next(ports, None) or real())

        async def main() -> tuple[int, int]:
            with servers.ServerGroup() as group:
                server = group.start(APP)
                first = server.port
                await group.ready()
                assert httpx.get(server.url + "/").json() == {"hello": "lab"}
                return first, server.port

        first, final = asyncio.run(main())
        assert first == taken.getsockname()[1] and final != first
    assert running_servers() == []


def test_grade_interrupted_stops_its_check_and_the_server_the_check_started():
    """Ctrl-C in a check cell (the kernel's interrupt) stops the check running in its own thread, and its servers."""
    import threading

    from course_lib import grading
    from course_lib.grading import exercise, grade

    started = []

    @exercise("zz.interrupt-probe", title="t", expects="anything", hints=("h",), lesson="zz_tests")
    def checker(answer, checking):
        with serve(APP) as server:
            started.append(server)
            while True:
                time.sleep(0.05)

    def interrupt_once_started() -> None:
        while not started:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    began = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            grade("zz.interrupt-probe", object(), timeout=120, record=False)
    finally:
        grading._REGISTRY.pop("zz.interrupt-probe", None)  # a probe must not outlive its test (the catalogue test sees the registry)
    assert time.monotonic() - began < 60
    assert _gone(started[0].pid, started[0].port)
    assert not [t for t in threading.enumerate() if t.name == "grade-zz.interrupt-probe" and t.is_alive()]


def test_a_kernel_cell_interrupted_stops_the_servers_it_started_and_keeps_the_others():
    """A cell that starts a server and is interrupted later (any point): that server is stopped when the cell ends;
    a server an earlier cell started and kept keeps running."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        def run(code: str) -> list[str]:
            lines: list[str] = []
            kc.execute_interactive(code, timeout=120, output_hook=lambda m: lines.append(m["content"].get("text", "")))
            return "".join(lines).split()

        kept_pid, kept_port = map(int, run(f"from course_lib.servers import serve\nimport time\n"
                                           f"kept = serve({APP!r}, announce=False)\nprint(kept.pid, kept.port)"))
        msg_id = kc.execute(f"s = serve({APP!r}, announce=False)\nprint(s.pid, s.port, flush=True)\n"
                            "time.sleep(120)")
        while True:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                pid, port = map(int, msg["content"]["text"].split())
                break
        km.interrupt_kernel()
        stderr = []
        while True:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stderr":
                stderr.append(msg["content"]["text"])
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        assert _gone(pid, port)
        assert f"stopped the 1 server(s) it had started (port {port})" in "".join(stderr)
        assert not _gone(kept_pid, kept_port)
    finally:
        km.shutdown_kernel(now=True)
    deadline = time.monotonic() + 15  # the kept one dies with its kernel
    while not _gone(kept_pid, kept_port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(kept_pid, kept_port)
