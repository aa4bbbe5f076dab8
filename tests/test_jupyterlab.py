"""`./course lab` serves the course: JupyterLab answers on /lab, and the welcome notebook, opened through
the Jupyter server's REST API, runs cell by cell in a kernel the server started."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from tornado.websocket import websocket_connect

from course_lib.notebooks import ROOT
from course_lib.servers import free_port, launch

TOKEN = secrets.token_hex(16)


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory):
    """The README's first command, `./course lab`, with options for a headless run on a free port."""
    port = free_port()
    runtime = tmp_path_factory.mktemp("jupyter-runtime")
    command = [str(ROOT / "course"), "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
               f"--IdentityProvider.token={TOKEN}", "--ServerApp.port_retries=0"]
    env = {"JUPYTER_RUNTIME_DIR": str(runtime), "JUPYTER_CONFIG_DIR": str(runtime / "config")}
    with launch(command, port, kind="jupyterlab", cwd=ROOT, env=env, ready_path="/api", startup_timeout=300) as server:
        yield server


def _execute_request(code: str, session: str) -> dict:
    return {
        "header": {"msg_id": uuid.uuid4().hex, "username": "test", "session": session, "msg_type": "execute_request",
                   "version": "5.3", "date": datetime.now(UTC).isoformat()},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }


async def _run_cells(base: str, cells: list[str]) -> list[str]:
    """Start a kernel through the server, run each cell over its websocket, return each cell's stdout."""
    headers = {"Authorization": f"token {TOKEN}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        kernel = (await client.post("/api/kernels", json={"name": "python3"})).json()
        try:
            ws = await websocket_connect(f"{base.replace('http', 'ws')}/api/kernels/{kernel['id']}/channels?token={TOKEN}")
            session, outputs = uuid.uuid4().hex, []
            for code in cells:
                request = _execute_request(code, session)
                ws.write_message(json.dumps(request))
                printed, reply, idle = [], None, False
                while reply is None or not idle:  # outputs (iopub) may come after the reply (shell): wait for idle
                    message = json.loads(await asyncio.wait_for(ws.read_message(), timeout=120))
                    if message.get("parent_header", {}).get("msg_id") != request["header"]["msg_id"]:
                        continue
                    if message["msg_type"] == "stream":
                        printed.append(message["content"]["text"])
                    elif message["msg_type"] == "execute_reply":
                        reply = message["content"]
                    elif message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                        idle = True
                assert reply["status"] == "ok", f"cell failed in JupyterLab's kernel:\n{code}\n{reply}"
                outputs.append("".join(printed))
            ws.close()
        finally:
            await client.delete(f"/api/kernels/{kernel['id']}")
    return outputs


def test_lab_page_is_served(jupyter):
    response = httpx.get(f"{jupyter.url}/lab?token={TOKEN}", timeout=30)
    assert response.status_code == 200
    assert "JupyterLab" in response.text


def test_welcome_notebook_runs_in_a_server_kernel(jupyter):
    headers = {"Authorization": f"token {TOKEN}"}
    model = httpx.get(f"{jupyter.url}/api/contents/notebooks/00_welcome.ipynb", headers=headers, timeout=30).json()
    assert model["type"] == "notebook"
    cells = ["import os; os.chdir('notebooks')"]
    cells += [cell["source"] for cell in model["content"]["cells"] if cell["cell_type"] == "code"]
    outputs = asyncio.run(_run_cells(jupyter.url, cells))
    assert "users: 50, posts: 250, queries: 51" in "".join(outputs)


def test_lab_opens_on_the_welcome_notebook(jupyter):
    landing = httpx.get(f"{jupyter.url}/?token={TOKEN}", follow_redirects=False, timeout=30)
    assert landing.status_code in (301, 302, 303, 307)
    assert landing.headers["location"].split("?")[0].endswith("/lab/tree/notebooks/00_welcome.ipynb")
