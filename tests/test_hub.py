"""A class on a real JupyterHub (loopback, configurable-http-proxy, one single-user server per learner; as root each
learner a throwaway Unix user spawned with setuid, else all the hub's own user): four learners
run the data lesson and the caching lesson at the same time without meeting each other (ports, files, databases,
progress), a served app's docs link works through the hub's proxy for its learner only (its Swagger page loads its
API definition and runs a request, in Chromium), stopping a learner's server
stops everything it started, the collision watch flags planted collisions, and (real users) a learner's kernel is
refused another learner's home."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urljoin

import pytest

from course_lib.notebooks import ROOT

sys.path.insert(0, str(ROOT / "tools" / "hub"))
pytest.importorskip("jupyterhub")
pytest.importorskip("jupyter_server_proxy")
import collect_class  # noqa: E402
import hub_lab  # noqa: E402
import unix_users  # noqa: E402

pytestmark = [
    # six single-user servers and eight kernels: needs the cores to itself (in the parallel phase, beside 3 other
    # test processes on 2 cores, a learner's kernel websocket was dropped mid-lesson)
    pytest.mark.serial,
    pytest.mark.skipif(sys.platform != "linux", reason="the collision watch reads /proc"),
    pytest.mark.skipif(hub_lab.find_chp() is None, reason="configurable-http-proxy is not installed (see .ci/run)"),
]

# as root: every learner a throwaway Unix user, spawned with setuid (COURSE_HUB_REAL_USERS=0: the shared-account spawner)
REAL = unix_users.can_create_users() and os.environ.get("COURSE_HUB_REAL_USERS", "1") != "0"
PREFIX = f"lab{secrets.token_hex(2)}-" if REAL else ""  # unique per run: never meets a real account or a past run
ADA, BOB, CYD, DEE, EVE, FAY, GUS = (PREFIX + name for name in ("ada", "bob", "cyd", "dee", "eve", "fay", "gus"))
LEARNERS = [ADA, BOB, CYD, DEE]
PLANTED = [EVE, FAY]  # the hub is told to give these two one shared COURSE_LAB_HOME: a planted collision
IDLE = GUS  # the only learner the hub's jupyterhub-idle-culler may see: culled after 20 s without activity
EXERCISE = dict(zip(LEARNERS + PLANTED, ["00.first-endpoint", "01.timeout-client", "02.nested", "03.invalidate",
                                         "04.gzip", "04.keyset"], strict=True))
LESSONS = ["notebooks/02_n_plus_one.ipynb", "notebooks/03_caching.ipynb"]
HELLO = "course_lib.lessons.l00_welcome:hello_app"


def _nothing_outlived_the_hub() -> None:
    assert hub_lab.learner_processes(LEARNERS + PLANTED + [IDLE]) == {}, "a learner's process outlived the hub"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    root.chmod(0o700)
    everyone = LEARNERS + PLANTED + [IDLE]
    with contextlib.ExitStack() as stack:  # on exit, in reverse: stop the hub, check, restore modes, remove users
        granted: dict[Path, int] = {}
        if REAL:
            stack.enter_context(unix_users.throwaway_users(everyone))
            granted = stack.enter_context(unix_users.traverse_grant([Path(sys.executable), ROOT]))
        stack.callback(_nothing_outlived_the_hub)
        started = hub_lab.Hub(root, everyone, shared_home_users=PLANTED, cull_users=[IDLE], cull_timeout=20,
                              real_users=REAL)
        started.granted = granted
        stack.callback(started.stop)
        started.start()
        for user in LEARNERS + PLANTED:  # the course in every home, as nbgitpuller or the image's start script puts it
            for folder in ("notebooks", "exercises"):
                shutil.copytree(ROOT / folder, started.home(user) / folder)
                if REAL:
                    unix_users.give(started.home(user) / folder, user)
            started.start_server(user)
        for user in LEARNERS + PLANTED:
            started.wait_ready(user)
        started.tokens = {user: started.user_token(user) for user in LEARNERS + PLANTED}
        yield started


def _in_parallel(work: dict[str, object]) -> dict[str, str]:
    """Run work[user]() for every user at once; return user → error text for those that raised."""
    errors: dict[str, str] = {}

    def run(user: str) -> None:
        try:
            work[user]()  # type: ignore[operator]
        except BaseException as error:  # noqa: BLE001 - reported below
            errors[user] = f"{type(error).__name__}: {str(error)[-3000:]}"

    threads = [threading.Thread(target=run, args=(user,)) for user in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _as_user(name: str):
    """A preexec_fn that drops a child to the Unix user `name` (what LocalProcessSpawner does)."""
    import pwd

    entry = pwd.getpwnam(name)

    def drop() -> None:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    return drop


@pytest.mark.skipif(not REAL, reason="creates Unix users: only where the suite runs as root")
@pytest.mark.timeout(120)
def test_throwaway_users_and_the_traverse_grant_are_undone_even_when_the_test_fails(tmp_path):
    """A failing body still removes the user, their home and their processes, and restores every folder's mode; the
    grant is what lets a learner run the course's Python (without it the venv is refused or runs another Python). First in
    the file: the hub's own grant is not in place yet."""
    import pwd
    import subprocess

    name, deep = f"{PREFIX}tmp", tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    (tmp_path / "a").chmod(0o700)
    before = {folder: os.stat(folder).st_mode for folder in [*deep.parents, deep]}
    probe = [sys.executable, "-c", "import sys; print(sys.version)"]
    sleeper: subprocess.Popen[bytes] | None = None
    with pytest.raises(RuntimeError, match="planted failure"):
        with unix_users.throwaway_users([name]) as homes, unix_users.traverse_grant([Path(sys.executable), deep]) as g:
            home = homes[name]
            assert (home.stat().st_uid, home.stat().st_mode & 0o777) == (pwd.getpwnam(name).pw_uid, 0o700)
            assert all(not mode & 0o001 for mode in g.values()) and (tmp_path / "a") in g, g
            assert all(os.stat(folder).st_mode & 0o001 for folder in g), "the grant did not add o+x"
            ran = subprocess.run(probe, preexec_fn=_as_user(name), capture_output=True, text=True, cwd=home)
            assert ran.stdout.strip() == sys.version, (ran.stdout, ran.stderr[-500:])
            sleeper = subprocess.Popen(["sleep", "300"], preexec_fn=_as_user(name))  # left running by the learner
            raise RuntimeError("planted failure")
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    assert not home.exists(), f"{home} outlived userdel -r"
    assert sleeper is not None and sleeper.wait(timeout=10) == -9, "the learner's process outlived their removal"
    assert {folder: os.stat(folder).st_mode for folder in before} == before, "a folder's mode was not restored"
    dead = subprocess.Popen(["true"])
    dead.wait()  # a run killed outright (its pid is gone) left a user behind: the next run removes it
    subprocess.run(["useradd", "-m", "-c", f"{unix_users.MARK}{dead.pid}", name], check=True)
    stale_home = Path(pwd.getpwnam(name).pw_dir)
    assert unix_users.remove_stale() == [name] and not stale_home.exists(), "a killed run's user was left"
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    if unix_users.folders_to_traverse([Path(sys.executable)]):  # this machine: /root is 700
        with unix_users.throwaway_users([name]):
            try:
                ran = subprocess.run(probe, preexec_fn=_as_user(name), capture_output=True, text=True, cwd="/")
                seen = f"exit {ran.returncode}, Python {ran.stdout.strip()[:30]!r}"
            except PermissionError as error:
                seen = f"{type(error).__name__}: {error}"
        assert sys.version[:30] not in seen, "without the grant a learner ran the course's own Python"
        print(f"without the grant: {seen}")


@pytest.mark.timeout(900)
def test_four_learners_run_the_data_and_caching_lessons_at_once_without_colliding(hub):
    def learner(user: str):
        def work() -> None:
            for lesson in LESSONS:
                kernel = hub_lab.RemoteKernel(hub, user, hub.tokens[user], path=lesson)
                try:
                    kernel.run_notebook(ROOT / lesson)
                finally:
                    kernel.shutdown()
            kernel = hub_lab.RemoteKernel(hub, user, hub.tokens[user])
            try:  # each learner grades a different exercise: their progress must hold exactly that one
                kernel.execute(f"from course_lib import grading; grading.grade({EXERCISE[user]!r}, None)")
            finally:
                kernel.shutdown()
        return work

    started = time.monotonic()
    with hub_lab.CollisionWatch(LEARNERS, ignore={str(hub.root / "hub.log")}) as watch:
        errors = _in_parallel({user: learner(user) for user in LEARNERS})
    elapsed = time.monotonic() - started
    assert not errors, f"a learner's lesson failed while three others ran it at the same time: {errors}"
    assert watch.samples >= 10, f"the collision watch looked only {watch.samples} times in {elapsed:.0f} s"
    assert not watch.found, f"learners met each other: {sorted(watch.found)}"
    assert hub_lab.progress_mixups(hub, {user: {EXERCISE[user]} for user in LEARNERS}) == []
    assert all(len(watch.ports[user]) >= 2 for user in LEARNERS), dict(watch.ports)  # server + kernels were seen
    print(f"4 learners × {len(LESSONS)} lessons at once: {elapsed:.0f} s, {watch.samples} samples")


@pytest.mark.skipif(not REAL, reason="the learners share the hub's Unix account unless the suite runs as root")
@pytest.mark.timeout(300)
def test_a_learner_cannot_read_another_learners_home_from_their_kernel(hub):
    """Real Unix users: ada's kernel runs as ada, in her home, and the kernel refuses her bob's progress, notebook and
    folder listing (his home is his: mode 700), while her own notebook reads."""
    import pwd

    bob = hub.home(BOB)
    targets = {"own notebook": str(hub.home(ADA) / "exercises" / "00_welcome.ipynb"),
               "bob's progress": str(bob / ".fastapi-perf-lab" / "progress.json"),
               "bob's notebook": str(bob / "exercises" / "00_welcome.ipynb")}
    probe = ("import json, os\nseen = {'uid': os.getuid(), 'home': os.environ['HOME']}\n"
             f"for what, path in {targets!r}.items():\n"
             "    try:\n        open(path).read(1)\n        seen[what] = 'read'\n"
             "    except OSError as error:\n        seen[what] = type(error).__name__\n"
             f"try:\n    os.listdir({str(bob)!r})\n    seen['bob\\'s home listed'] = 'read'\n"
             "except OSError as error:\n    seen['bob\\'s home listed'] = type(error).__name__\n"
             "print(json.dumps(seen))")
    kernel = hub_lab.RemoteKernel(hub, ADA, hub.tokens[ADA])
    try:
        seen = json.loads("".join(kernel.execute(probe)))
        mode = bob.stat().st_mode & 0o777
        bob.chmod(0o755)  # planted: a home others may enter (useradd's default with UMASK 022 and no HOME_MODE)
        try:
            planted = json.loads("".join(kernel.execute(probe)))
        finally:
            bob.chmod(mode)
    finally:
        kernel.shutdown()
    assert (seen.pop("uid"), seen.pop("home")) == (pwd.getpwnam(ADA).pw_uid, str(hub.home(ADA))), (
        "ada's kernel does not run as her own Unix user in her own home: the hub did not spawn it with setuid")
    assert seen == {"own notebook": "read", "bob's progress": "PermissionError", "bob's notebook": "PermissionError",
                    "bob's home listed": "PermissionError"}, (
        f"from ada's kernel (uid {pwd.getpwnam(ADA).pw_uid}): {seen}; another learner's home must refuse her "
        "(PermissionError), else she can read or copy his answers and progress")
    assert planted["bob's notebook"] == "read" and planted["bob's home listed"] == "read", (
        f"with bob's home opened (755) ada's probe still saw {planted}: the probe would not notice an open home")


@pytest.mark.timeout(300)
def test_a_served_apps_docs_answer_through_the_hub_proxy_for_its_learner_only(hub):
    """As in a learner's notebook: serve() in a cell shows an "open its API docs" link when the cell ends. Through
    the hub's proxy, that page, the API definition it names and the server it lists answer for its learner only."""
    import httpx

    kernels = {user: hub_lab.RemoteKernel(hub, user, hub.tokens[user]) for user in (ADA, BOB)}
    try:
        links = {}
        for user, kernel in kernels.items():
            port = "".join(kernel.execute(f"from course_lib.servers import serve\nserver = serve({HELLO!r})\n"
                                          "print(server.port)")).strip()
            shown = [text for text in kernel.displayed if "open its API docs" in text]
            assert len(shown) == 1 and "through this hub's proxy" in shown[0], kernel.displayed
            link = re.search(r"\]\(([^)]*)\)", shown[0]).group(1)
            assert link == f"/user/{user}/proxy/{port}/docs", f"{user}'s docs link ignores the hub prefix: {link}"
            links[user] = link
        hub.docs_links = links  # ada's server stays up: the browser test below opens it, the next stop must end it
        for user, link in links.items():
            other = BOB if user == ADA else ADA
            headers = {"Authorization": f"token {hub.tokens[user]}"}
            own = httpx.get(hub.url + link, headers=headers, timeout=60)
            assert own.status_code == 200 and "swagger" in own.text.lower(), (own.status_code, own.text[:300])
            named = re.search(r"url: '([^']*)'", own.text)
            spec_url = urljoin(link, named.group(1) if named else "")
            prefix = link.removesuffix("/docs")
            assert spec_url == f"{prefix}/openapi.json", (
                f"{user}'s docs page asks for its API definition at {spec_url}, outside the proxy's {prefix}/: "
                "the hub does not send that to the learner's app, and Swagger shows 'Failed to load API definition'")
            spec = httpx.get(hub.url + spec_url, headers=headers, timeout=60)
            assert spec.status_code == 200 and spec.json()["info"]["title"] == "Hello", spec.text[:300]
            assert list(spec.json()["paths"]) == ["/"], spec.json()["paths"]
            assert spec.json().get("servers") == [{"url": prefix}], (
                f"the API definition lists servers {spec.json().get('servers')}: 'Try it out' would not go through "
                f"the proxy at {prefix}")
            route = httpx.get(hub.url + prefix + "/", headers=headers, timeout=60)  # what "Try it out" requests
            assert route.status_code == 200 and route.json() == {"hello": "lab"}, route.text[:300]
            foreign = httpx.get(hub.url + link, headers={"Authorization": f"token {hub.tokens[other]}"}, timeout=60)
            assert foreign.status_code == 403, f"{other} reached {user}'s server: {foreign.status_code}"
            anonymous = httpx.get(hub.url + link, timeout=60)  # a browser without the learner's login: to the hub
            where = anonymous.headers.get("location", "")
            assert anonymous.status_code in (302, 303) and where.startswith(("/hub/login", "/hub/api/oauth2/")), (
                anonymous.status_code, where)
    finally:
        kernels[BOB].shutdown()  # ada's kernel and its server stay up for the next tests: stopping must end them


@pytest.mark.timeout(300)
def test_the_docs_page_shows_the_apps_routes_in_a_browser_through_the_hub_proxy(hub):
    """Chromium opens ada's docs link through the hub: Swagger loads the API definition, shows the app's route, and
    "Try it out" gets the route's answer through the proxy."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    swagger = hub_lab.find_swagger_ui()
    missing = [what for what, ok in (("Debian's chromium", Path(chromium).exists()),
                                      ("swagger-ui-dist (npm, .venv/hub-node)", swagger is not None)) if not ok]
    if missing:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI must provide {missing} for the hub's browser test (see .ci/run and ./course)")
        pytest.skip(f"{' and '.join(missing)} not installed")
    from playwright.sync_api import expect, sync_playwright

    link = getattr(hub, "docs_links", {}).get(ADA)
    assert link, "the link test above did not leave ada's served app running"
    prefix = link.removesuffix("/docs")
    asked: list[str] = []
    shots = ROOT / "artifacts" / "browser"
    shots.mkdir(parents=True, exist_ok=True)

    def from_disk(route) -> None:  # no network here: Swagger UI's files come from swagger-ui-dist
        path = swagger / route.request.url.rsplit("/", 1)[1]
        route.fulfill(path=str(path)) if path.is_file() else route.fulfill(status=404)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:  # ada's login, as her browser's hub cookie would carry it
            context = browser.new_context(extra_http_headers={"Authorization": f"token {hub.tokens[ADA]}"})
            context.route("https://cdn.jsdelivr.net/**", from_disk)
            context.route("https://fastapi.tiangolo.com/**", lambda route: route.fulfill(status=404))
            page = context.new_page()
            page.on("request", lambda request: asked.append(request.url))
            page.goto(hub.url + link)
            expect(page.locator(".opblock-summary-path")).to_have_text(["/"], timeout=60_000)
            expect(page.get_by_text("Failed to load API definition")).to_have_count(0)
            page.locator(".opblock-summary").first.click()
            page.get_by_role("button", name="Try it out").click()
            page.get_by_role("button", name="Execute").click()
            expect(page.locator(".live-responses-table .response .response-col_status")).to_have_text(
                "200", timeout=60_000)
            body = page.locator(".live-responses-table .response .response-col_description")
            expect(body).to_contain_text('"hello": "lab"')
            page.screenshot(path=str(shots / "hub-docs-through-proxy.png"), full_page=True)
        finally:
            browser.close()
    assert f"{hub.url}{prefix}/openapi.json" in asked, asked
    assert f"{hub.url}{prefix}/" in asked, f"'Try it out' did not go through the proxy: {asked}"
    assert not any(url.startswith(f"{hub.url}/openapi.json") for url in asked), asked


@pytest.mark.timeout(300)
def test_stopping_a_learners_server_stops_everything_it_started(hub):
    ada = hub_lab.snapshot([ADA])
    ada_ports = set(ada.listening)
    served = [pid for pid in ada.pids if b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert served and len(ada_ports) >= 3, "ada's server, kernel and served app should be running before the stop"
    hub.stop_server(ADA)  # the REST call jupyterhub-idle-culler makes for an idle server
    deadline = time.monotonic() + 30
    while hub_lab.learner_processes([ADA]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert hub_lab.learner_processes([ADA]) == {}, "processes of ada outlived her stopped server"
    assert [port for port in ada_ports if _listening(port)] == [], "ada's ports still answer after the stop"
    assert hub.api("GET", f"/users/{BOB}").json()["servers"][""]["ready"], "stopping ada's server stopped bob's"


@pytest.mark.timeout(400)
def test_an_idle_learners_server_is_culled_with_everything_it_started(hub):
    hub.start_server(IDLE)
    hub.wait_ready(IDLE)
    kernel = hub_lab.RemoteKernel(hub, IDLE, hub.user_token(IDLE))
    kernel.execute(f"from course_lib.servers import serve; server = serve({HELLO!r}, announce=False)")
    kernel.ws.close()  # the learner walks away, leaving a kernel and a server running
    idle = hub_lab.snapshot([IDLE])
    assert len(idle.listening) >= 3 and any(b"uvicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
                                            for pid in idle.pids), "gus's server, kernel and app should run"
    deadline = time.monotonic() + 240
    while hub.api("GET", f"/users/{IDLE}").json().get("servers") and time.monotonic() < deadline:
        time.sleep(1)
    assert not hub.api("GET", f"/users/{IDLE}").json().get("servers"), "jupyterhub-idle-culler did not cull gus"
    while hub_lab.learner_processes([IDLE]) and time.monotonic() < deadline + 30:
        time.sleep(0.2)
    assert hub_lab.learner_processes([IDLE]) == {}, "processes of gus outlived the culled server"
    assert [port for port in idle.listening if _listening(port)] == [], "gus's ports still answer after culling"
    assert "idle-culler" in hub.log() and "Culling server" in hub.log()
    assert all(hub.api("GET", f"/users/{user}").json()["servers"] for user in (BOB, CYD)), (
        "the culler, limited to gus, stopped another learner")


@pytest.mark.timeout(300)
def test_the_collision_watch_flags_planted_collisions(hub):
    """eve and fay share a COURSE_LAB_HOME (the hub was told so) and both use one fixed port."""
    kernels = {user: hub_lab.RemoteKernel(hub, user, hub.tokens[user]) for user in PLANTED}
    port = hub_lab.free_port()
    fixed = f"import course_lib.servers as s; s.free_port = lambda: {port}\n"
    try:
        with hub_lab.CollisionWatch(PLANTED, every=0.1, ignore={str(hub.root / "hub.log")}) as watch:
            kernels[EVE].execute(fixed + f"server = s.serve({HELLO!r}, announce=False)")
            kernels[FAY].execute(  # fay's start fails (the port is taken) or finds eve's server answering
                fixed + f"try:\n    server = s.serve({HELLO!r}, announce=False)\nexcept Exception:\n    pass\n"
                "import httpx, time\nclient = httpx.Client()\n"
                f"client.get('http://127.0.0.1:{port}/')\ntime.sleep(1.5)\nclient.close()")
            for user in PLANTED:
                kernels[user].execute(f"from course_lib import grading; grading.grade({EXERCISE[user]!r}, None)")
    finally:
        for kernel in kernels.values():
            kernel.shutdown()
    found = "\n".join(sorted(watch.found))
    assert "COURSE_LAB_HOME" in found and str(sorted(PLANTED)) in found, found
    assert f"{FAY} is connected to port {port}, which {[EVE]} listen(s) on" in found, found
    mixups = hub_lab.progress_mixups(hub, {user: {EXERCISE[user]} for user in PLANTED})
    assert len(mixups) == 2 and all("no progress of their own" in m for m in mixups), mixups
    shared = set(json.loads((hub.shared_progress / "progress.json").read_text()))
    if REAL:  # two Unix users: the second one's save is refused by the first one's files (the lock is not theirs)
        assert shared == {EXERCISE[EVE]}, shared
    else:
        assert shared == {EXERCISE[u] for u in PLANTED}, shared


@pytest.mark.timeout(600)
def test_a_class_is_collected_from_the_learners_homes_and_graded(hub, tmp_path):
    """From the homes to `grade --class`: regular files only (a planted symlink to a private file is left behind)."""
    if REAL:  # each home is its learner's alone: only root (the instructor) can collect them
        assert all((hub.home(u).stat().st_uid, hub.home(u).stat().st_mode & 0o077) == (__import__("pwd").getpwnam(
            u).pw_uid, 0) for u in LEARNERS + PLANTED), "a learner's home is not theirs alone (owner, mode 700)"
    secret, marker = hub.root / "instructor-only.txt", f"only-for-the-instructor-{os.getpid()}-{time.time_ns()}"
    secret.write_text(marker)
    sneaky = hub.home(BOB) / "exercises" / "99_sneaky.ipynb"
    sneaky.symlink_to(secret)
    try:
        dest = tmp_path / "submissions"
        skipped = collect_class.collect([hub.home(user) for user in LEARNERS + PLANTED], dest)
    finally:
        sneaky.unlink()
    assert sorted(p.name for p in dest.iterdir()) == sorted(LEARNERS + PLANTED)
    assert skipped[BOB] == ["99_sneaky.ipynb: not a regular file"], skipped
    assert not any(p.is_symlink() for p in dest.rglob("*")) and marker not in "".join(
        p.read_text() for p in dest.rglob("*.ipynb"))
    assert (dest.stat().st_mode & 0o077) == 0 and all((p.stat().st_mode & 0o077) == 0 for p in dest.rglob("*"))
    shipped = sorted(p.name for p in (ROOT / "exercises").glob("*.ipynb"))
    assert sorted(p.name for p in (dest / ADA).iterdir()) == shipped

    from course_lib.notebooks import grade_class

    one = tmp_path / "one-notebook-each"
    for user in (ADA, BOB):  # grading every notebook of six learners takes minutes: one each shows the path
        (one / user).mkdir(parents=True)
        shutil.copy(dest / user / "00_welcome.ipynb", one / user)
    rows = grade_class(one)
    assert sorted({learner for learner, _ in rows}) == [ADA, BOB]
    assert [row.status for _, row in rows] == ["failed", "failed"], rows  # the shipped starters, graded: not passed
