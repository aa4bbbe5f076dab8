"""The terminal commands a learner uses: progress, hint, build-exercises --check, grade."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from course_lib.__main__ import main
from course_lib.notebooks import ROOT


def test_progress_lists_every_exercise_and_what_is_next(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_LAB_HOME", str(tmp_path))
    assert main(["progress"]) == 0
    out = capsys.readouterr().out
    assert "00.first-endpoint" in out and "· to do" in out
    assert "exercises done" in out and "Next: 00.first-endpoint" in out


def test_progress_ticks_a_passed_exercise(capsys, tmp_path, monkeypatch):
    from test_grading import reference

    from course_lib import grade

    monkeypatch.setenv("COURSE_LAB_HOME", str(tmp_path))
    assert grade("00.first-endpoint", reference).passed
    main(["progress"])
    assert "✓ done" in capsys.readouterr().out


def test_hint_levels(capsys):
    main(["hint", "00.first-endpoint", "--level", "2"])
    assert "session.get" in capsys.readouterr().out


def test_build_exercises_check_passes_on_the_committed_tree():
    assert main(["build-exercises", "--check"]) == 0


def test_grade_exits_non_zero_on_the_shipped_exercise():
    done = subprocess.run([sys.executable, "-m", "course_lib", "grade", str(ROOT / "exercises" / "00_welcome.ipynb")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "00.first-endpoint" in done.stdout and "✗ failed" in done.stdout
    assert "0 passed, 1 failed" in done.stdout


def test_audit_command_prints_the_checklist_and_fails_on_a_cross(capsys):
    assert main(["audit", "course_lib.lessons.l00_welcome:hello_app"]) == 1  # no /health: a ✗
    out = capsys.readouterr().out
    assert "/health says whether the app can serve" in out and "checks pass" in out


def test_hint_for_an_unknown_exercise_exits_non_zero(capsys):
    assert main(["hint", "02.no-such-exercise"]) == 2
    assert "no exercise" in capsys.readouterr().err


def test_grade_on_a_file_with_no_exercises_exits_non_zero(capsys, tmp_path):
    import nbformat

    path = tmp_path / "scratch.ipynb"
    path.write_text(nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])))
    assert main(["grade", str(path)]) == 1
    assert "no exercises" in capsys.readouterr().err


def test_class_csv_cells_cannot_be_formulas_or_escape_codes():
    from course_lib.__main__ import _csv_cell

    assert _csv_cell('=HYPERLINK("http://x","y")').startswith("'=")
    assert _csv_cell("@SUM(A1)").startswith("'@")
    assert "\x1b" not in _csv_cell("ada\x1b[31mred")
    assert _csv_cell("ada") == "ada"


def test_help_and_progress_do_not_import_the_notebook_machinery():
    """nbformat takes seconds to import (its JSON-schema formats): only commands that read notebooks pay for it."""
    code = ("import sys, contextlib, io\n"
            "from course_lib.__main__ import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['progress'])\n"
            "print('nbformat' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COURSE_LAB_HOME": tempfile.mkdtemp()})
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr


def test_ctrl_c_ends_a_command_with_a_sentence_and_exit_130(monkeypatch, capsys):
    import course_lib.__main__ as cli

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_hint", interrupted)
    assert main(["hint", "00.first-endpoint"]) == 130
    assert "interrupted: `hint` stopped before it finished" in capsys.readouterr().err


def _graded_processes(home: str) -> list[int]:
    """Processes (kernels, servers) still running with this COURSE_LAB_HOME in their environment."""
    from pathlib import Path

    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"COURSE_LAB_HOME={home}".encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def _interrupt_grading(tmp_path, slow_after_check: bool) -> tuple[subprocess.CompletedProcess, str]:
    """Run `grade` on a solved 00 notebook with a slow cell (after its check, or first), Ctrl-C it in that cell."""
    import signal
    import time

    import nbformat

    from course_lib.notebooks import build_exercise

    marker = tmp_path / "slow-cell-started"
    slow = nbformat.v4.new_code_cell(f"import time\nopen({str(marker)!r}, 'w').close()\ntime.sleep(300)")
    nb = build_exercise(nbformat.read(ROOT / "solutions" / "00_welcome.ipynb", as_version=4), keep_answers=True)
    nb.cells.insert(len(nb.cells) if slow_after_check else 0, slow)
    (tmp_path / "work").mkdir()
    path = tmp_path / "work" / "00_welcome.ipynb"
    nbformat.write(nb, path)
    home = str(tmp_path / "home")
    cli = subprocess.Popen([sys.executable, "-m", "course_lib", "grade", str(path)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, "COURSE_LAB_HOME": home},
                           start_new_session=True)
    deadline = time.monotonic() + 240
    while not marker.exists() and time.monotonic() < deadline and cli.poll() is None:
        time.sleep(0.2)
    assert marker.exists(), "the slow cell never started"
    os.killpg(cli.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the foreground group (the kernel has its own)
    out, err = cli.communicate(timeout=60)
    return subprocess.CompletedProcess(cli.args, cli.returncode, out, err), home


def test_ctrl_c_in_a_kernel_cell_during_grade_is_one_sentence_exit_130_and_no_kernel_left(tmp_path):
    done, home = _interrupt_grading(tmp_path, slow_after_check=True)
    assert done.returncode == 130, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr  # no ZMQ traceback, no kernel log lines
    assert "stopped by Ctrl-C while grading 00_welcome.ipynb" in lines[0]
    assert "the 1 check(s) that finished before it are saved in your progress" in lines[0]  # true: it is
    assert "Traceback" not in done.stdout + done.stderr and "AssertionError" not in done.stdout
    import json
    from pathlib import Path

    assert json.loads((Path(home) / "progress.json").read_text())["00.first-endpoint"]["passed"] is True
    assert _graded_processes(home) == [], "the kernel outlived the interrupted grade"


def test_ctrl_c_before_any_check_says_nothing_graded_was_saved(tmp_path):
    from pathlib import Path

    done, home = _interrupt_grading(tmp_path, slow_after_check=False)
    assert done.returncode == 130, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nothing graded was saved" in lines[0], done.stderr
    assert not (Path(home) / "progress.json").exists()
    assert _graded_processes(home) == []
