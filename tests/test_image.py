"""The user image for a JupyterHub (docker/Dockerfile, docker/z2jh-config.yaml) agrees with pyproject.toml, the
repository and the measured lesson sizes (tools/hub/lesson_sizes.json); the measuring tool works on a lesson."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from course_lib.notebooks import ROOT

DOCKERFILE = ROOT / "docker" / "Dockerfile"
CONFIG = ROOT / "docker" / "z2jh-config.yaml"
SIZES = ROOT / "tools" / "hub" / "lesson_sizes.json"
UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _bytes(quantity: str | int) -> int:
    number, unit = re.fullmatch(r"([\d.]+)([KMG]i?)?", str(quantity)).groups()  # type: ignore[union-attr]
    return int(float(number) * UNITS[unit or ""])


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_the_image_starts_from_a_python_the_project_supports():
    base = next(line.split()[1] for line in _instructions() if line.startswith("FROM "))
    match = re.fullmatch(r"python:(3)\.(\d+)-slim", base)
    assert match, f"the image should start from python:3.X-slim, not {base}"
    low = re.search(r">=3\.(\d+)", _project()["requires-python"]).group(1)  # type: ignore[union-attr]
    high = re.search(r"<3\.(\d+)", _project()["requires-python"]).group(1)  # type: ignore[union-attr]
    assert int(low) <= int(match.group(2)) < int(high)


def test_the_image_installs_the_course_with_the_binder_and_hub_extras():
    installs = [line for line in _instructions() if "pip install" in line]
    assert len(installs) == 1, installs
    words = shlex.split(installs[0].split("pip install", 1)[1].split("&&")[0])
    targets = [w for w in words if "/srv/course" in w]
    assert words[0] == "-e" and targets == ["/srv/course[binder,hub]"], words
    extras = set(re.search(r"\[(.*)\]", targets[0]).group(1).split(","))  # type: ignore[union-attr]
    defined = _project()["optional-dependencies"]
    assert extras <= set(defined), f"the image asks for extras pyproject.toml does not define: {extras - set(defined)}"
    assert any(dep.startswith("jupyterhub>") for dep in defined["hub"]), "jupyterhub-singleuser needs jupyterhub"
    assert any(dep.startswith("jupyter-server-proxy") for dep in defined["binder"]), "server.link() needs the proxy"
    assert any(line.startswith("COPY . /srv/course") for line in _instructions())


def test_the_build_context_leaves_out_the_venv_and_git():
    ignored = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git"} <= set(ignored)


def test_the_default_url_is_the_welcome_notebook_copied_into_the_learners_home():
    url = _config()["singleuser"]["defaultUrl"]
    assert url == "/lab/tree/notebooks/00_welcome.ipynb"
    path = url.removeprefix("/lab/tree/")
    assert (ROOT / path).is_file()
    start = (ROOT / "docker" / "start-course.sh").read_text()
    assert "for folder in notebooks exercises" in start and 'exec "$@"' in start
    cmd = next(line for line in _instructions() if line.startswith("CMD "))
    assert f"--LabApp.default_url={url}" in cmd, "the image run alone should open the same page as the hub"
    assert json.loads(next(line for line in _instructions() if line.startswith("ENTRYPOINT "))[11:]) == [
        "start-course"]


def test_memory_and_cpu_cover_the_measured_lessons():
    sizes = json.loads(SIZES.read_text())
    server = sizes["jupyter-server (idle)"]["peak_mib"]
    lessons = {name: row["peak_mib"] for name, row in sizes.items() if name[:2].isdigit()}
    assert len(lessons) >= 10, f"measure every lesson (tools/hub/measure_lessons.py): {sorted(lessons)}"
    memory = _config()["singleuser"]["memory"]
    limit_mib, guarantee_mib = _bytes(memory["limit"]) / 2**20, _bytes(memory["guarantee"]) / 2**20
    biggest = max(lessons, key=lessons.get)
    assert limit_mib >= 1.25 * (server + lessons[biggest]), (
        f"memory limit {memory['limit']} leaves < 25 % over the idle server ({server:.0f} MiB) plus {biggest} "
        f"({lessons[biggest]:.0f} MiB): a learner's kernel would be killed")
    typical = sorted(lessons.values())[len(lessons) // 2]
    assert guarantee_mib >= server + typical, (guarantee_mib, server, typical)
    cpu = _config()["singleuser"]["cpu"]
    assert cpu["limit"] >= 2 and cpu["guarantee"] >= 0.5
    workers = [p for p in _config()["singleuser"]["profileList"] if "01" in p["display_name"]]
    assert workers and workers[0]["kubespawner_override"]["cpu_guarantee"] >= 2, "lesson 01 needs 2 cores"


def test_idle_servers_are_culled():
    cull = _config()["cull"]
    assert cull["enabled"] is True and 0 < cull["timeout"] <= 4 * 3600 and cull["every"] <= cull["timeout"]


def test_every_lesson_of_the_catalogue_is_measured():
    from course_lib.catalogue import CATALOGUE

    measured = json.loads(SIZES.read_text())
    missing = [lesson.name for lesson in CATALOGUE if lesson.name not in measured]
    assert not missing, f"measure them: python tools/hub/measure_lessons.py --out ... notebooks/<lesson>.ipynb: {missing}"


def test_the_sizing_table_in_instructors_md_is_the_measured_one():
    sys.path.insert(0, str(ROOT / "tools" / "hub"))
    import measure_lessons

    table = measure_lessons.markdown_table(json.loads(SIZES.read_text()))
    assert table in (ROOT / "INSTRUCTORS.md").read_text(), (
        "INSTRUCTORS.md's sizing table differs from tools/hub/lesson_sizes.json; paste:\n" + table)


@pytest.mark.timeout(600)
def test_measure_lessons_measures_a_lesson_and_its_servers(tmp_path):
    out = tmp_path / "sizes.json"
    subprocess.run([sys.executable, str(ROOT / "tools" / "hub" / "measure_lessons.py"), "--out", str(out),
                    str(ROOT / "notebooks" / "00_welcome.ipynb")], check=True, timeout=540, capture_output=True)
    sizes = json.loads(out.read_text())
    row = sizes["00_welcome"]
    assert 50 < row["peak_mib"] < 2000 and row["cpu_s"] > 0.5 and row["wall_s"] > 0, row
    assert 50 < sizes["jupyter-server (idle)"]["peak_mib"] < 1000


def _docker_daemon() -> bool:
    """True when a docker CLI is installed and its daemon answers."""
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


@pytest.mark.timeout(1800)
def test_the_image_builds():
    if not _docker_daemon():
        pytest.skip("no container builder here (no docker daemon): the recipe's pieces are tested above")
    subprocess.run(["docker", "build", "-f", str(DOCKERFILE), "-t", "fastapi-performance-lab:test", str(ROOT)],
                   check=True, timeout=1700, env={**os.environ, "DOCKER_BUILDKIT": "1"})  # reads the .dockerignore
    run = subprocess.run(["docker", "run", "--rm", "fastapi-performance-lab:test", "sh", "-c",
                          "ls notebooks/00_welcome.ipynb exercises >/dev/null && jupyterhub-singleuser --version"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
