"""Many learners on one server: two kernels running the serving lesson at once must not collide
(no fixed ports, no shared database files or temp names), and neither leaves a server behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_two_learners_run_the_serving_lesson_at_once(tmp_path):
    learners = {}
    for name in ("ada", "bob"):
        home = tmp_path / name
        home.mkdir()
        log = (home / "run.log").open("w")
        learners[name] = (subprocess.Popen([sys.executable, "-c", RUN, str(LESSON)], stdout=log, stderr=subprocess.STDOUT,
                                           env={**__import__("os").environ, "COURSE_LAB_HOME": str(home)}), home)
    failures = {}
    for name, (process, home) in learners.items():
        if process.wait(timeout=1200) != 0:
            failures[name] = (home / "run.log").read_text()[-3000:]
    assert not failures, f"a learner's run failed while another ran the same lesson: {failures}"
    assert _servers_of_lesson_01() == []
