"""Many learners on one server: two kernels running the serving lesson at once must not collide
(no fixed ports, no shared database files or temp names), and neither leaves a server behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib.notebooks import ROOT

LESSON = ROOT / "notebooks" / "01_workers.ipynb"
RUN = "import sys; from pathlib import Path; from course_lib.notebooks import execute_notebook; " \
      "execute_notebook(Path(sys.argv[1]), timeout=900)"


def _servers_of_lesson_01() -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "l01_served" in text and "pytest" not in text:
            found.append(text)
    return found


@pytest.mark.timeout(1300)  # above the waits below, so a stuck run fails with its log, not pytest's default
def test_two_learners_run_the_serving_lesson_at_once(tmp_path):
    learners = {}
    try:
        for name in ("ada", "bob"):
            home = tmp_path / name
            home.mkdir()
            with (home / "run.log").open("w") as log:  # the child keeps its own copy of the descriptor
                learners[name] = (subprocess.Popen([sys.executable, "-c", RUN, str(LESSON)], stdout=log,
                                                   stderr=subprocess.STDOUT,
                                                   env={**os.environ, "COURSE_LAB_HOME": str(home)}), home)
        failures = {}
        for name, (process, home) in learners.items():
            if process.wait(timeout=1200) != 0:
                failures[name] = (home / "run.log").read_text()[-3000:]
    finally:
        for process, _ in learners.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    assert not failures, f"a learner's run failed while another ran the same lesson: {failures}"
    assert _servers_of_lesson_01() == []
