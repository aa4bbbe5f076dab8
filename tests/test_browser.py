"""The course in a real browser: Debian's Chromium, driven by Playwright, against JupyterLab.

Runs the welcome notebook (query-counter output and a widget must render), then types a right and a
wrong answer into the warm-up exercise and reads the pass line and the hint. Screenshots are written
to `artifacts/browser/` for a person to look at.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib.notebooks import ROOT, build_exercise
from course_lib.servers import free_port, launch

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "artifacts" / "browser"
TOKEN = secrets.token_hex(16)

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must install Debian's chromium for the browser test (see .ci/run)")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

WRONG_ANSWER = '''def make_app(db):
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/users/{user_id}")
    def read_user(user_id: int, session: Session = Depends(get_db)):
        user = session.get(User, user_id)
        return {"id": user.id, "name": user.name, "post_count": len(user.posts)} if user else {}

    return app
'''


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a free port over a scratch copy of the welcome lesson and its exercise."""
    root = tmp_path_factory.mktemp("lab-root")
    for folder in ("notebooks", "exercises"):  # stored outputs removed: whatever shows was produced here
        (root / folder).mkdir()
        nb = nbformat.read(ROOT / folder / "00_welcome.ipynb", as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, root / folder / "00_welcome.ipynb")
    for lesson in _with_diagrams():  # rendered, never run
        shutil.copy(ROOT / "notebooks" / lesson, root / "notebooks" / lesson)
    runtime = tmp_path_factory.mktemp("runtime")
    settings = runtime / "settings"
    # render every cell (no virtual scrolling), start the notebook's kernel without asking, no news pop-up
    for plugin, values in {
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false"},
    }.items():
        target = settings / f"{plugin}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    port = free_port()
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
        f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ] + (["--allow-root"] if os.geteuid() == 0 else [])
    env = {"JUPYTER_RUNTIME_DIR": str(runtime), "JUPYTER_CONFIG_DIR": str(runtime / "config"),
           "JUPYTERLAB_SETTINGS_DIR": str(runtime / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(runtime / "ws")}
    with launch(command, port, kind="jupyterlab", env=env, ready_path="/api", startup_timeout=90) as server:
        yield server


@pytest.fixture(scope="module")
def page(lab):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        yield context.new_page()
        browser.close()


def _with_diagrams() -> dict[str, int]:
    """Each lesson notebook with mermaid diagrams in its markdown, and how many."""
    found = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        count = sum(cell.source.count("```mermaid") for cell in nb.cells if cell.cell_type == "markdown")
        if count:
            found[path.name] = count
    return found


def _open(page: Page, lab, path: str) -> None:
    page.goto(f"{lab.url}/lab/tree/{path}?token={TOKEN}")
    expect(page.locator(".jp-Notebook:visible").first).to_be_visible(timeout=60_000)  # other tabs stay hidden
    select = page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True)
    try:  # JupyterLab may ask which kernel to start; the notebook's own (python3) is preselected
        select.click(timeout=10_000)
    except PlaywrightTimeout:
        pass
    # wait for the kernel to be ready before running anything
    expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=90_000)


def _run_all(page: Page) -> None:
    page.locator("#jp-MainMenu").get_by_text("Run", exact=True).click()
    page.locator(".lm-Menu-content").get_by_text("Run All Cells", exact=True).click()


def _replace_answer(page: Page, code: str) -> None:
    cell = page.locator(".jp-NotebookPanel:visible .jp-CodeCell").filter(has_text="def make_app").first
    cell.scroll_into_view_if_needed()
    editor = cell.locator(".cm-content")
    editor.scroll_into_view_if_needed()
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(code)  # inserted as is: no auto-indent from the editor


def test_welcome_notebook_runs_with_counter_output_and_widget(page, lab):
    _open(page, lab, "notebooks/00_welcome.ipynb")
    page.wait_for_timeout(2_000)  # the kernel's language_info has reached the notebook's metadata by now
    # complete metadata as shipped: opening a lesson is not a change (no "save your changes?" on close)
    expect(page.locator(".lm-TabBar-tab.jp-mod-dirty")).to_have_count(0)
    _run_all(page)
    expect(page.get_by_text("users: 50, posts: 250, queries: 51")).to_be_visible(timeout=120_000)
    expect(page.locator(".widget-slider").first).to_be_attached(timeout=120_000)
    expect(page.get_by_text("00.first-endpoint not yet").first).to_be_attached(timeout=120_000)
    page.screenshot(path=SHOTS / "welcome.png", full_page=False)
    page.locator(".widget-slider").first.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "welcome-widget.png")


def test_exercise_pass_then_hint(page, lab):
    solution = build_exercise(nbformat.read(ROOT / "solutions" / "00_welcome.ipynb", as_version=4), keep_answers=True)
    right = next(c.source for c in solution.cells if c.metadata.get("lab", {}).get("role") == "answer")

    _open(page, lab, "exercises/00_welcome.ipynb")
    _replace_answer(page, right)
    _run_all(page)
    passed = page.locator(".jp-NotebookPanel:visible").get_by_text("✓ 00.first-endpoint passed")
    expect(passed).to_be_visible(timeout=120_000)
    passed.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "exercise-pass.png")

    _replace_answer(page, WRONG_ANSWER)
    _run_all(page)
    hint = page.locator(".jp-NotebookPanel:visible .jp-OutputArea-output").filter(has_text="Hint:").first
    expect(hint).to_be_visible(timeout=120_000)
    expect(hint).to_contain_text("answered 200")
    hint.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / "exercise-hint.png")


@pytest.mark.parametrize(("notebook", "count"), list(_with_diagrams().items()))
def test_every_diagram_renders_in_jupyterlab(page, lab, notebook, count):
    """A mermaid block that JupyterLab cannot draw shows as an error or as code: each must become a picture."""
    _open(page, lab, f"notebooks/{notebook}")
    drawn = page.locator(".jp-NotebookPanel:visible .jp-RenderedMermaid").locator("img, svg")
    expect(drawn).to_have_count(count, timeout=60_000)  # JupyterLab draws each block as a picture
    expect(page.locator(".jp-NotebookPanel:visible").get_by_text("Syntax error in text")).to_have_count(0)
    drawn.first.scroll_into_view_if_needed()
    page.screenshot(path=SHOTS / f"diagram-{notebook.removesuffix('.ipynb')}.png")

