"""Grading a class: one folder per learner, graded by cell metadata with the shipped checks, into a CSV.

A synthetic class covers what instructors meet: solved, unsolved, partly solved, cells reordered,
an answer cell deleted, a tampered check cell, and a corrupt file. None of them crashes the run.
It also holds mischievous learners (graded before the honest ones, alphabetically): one who reads other
learners' answers, the course's solutions and tests, rewrites others' notebooks and the instructor's progress,
forges the old results file, leaves a server and a crowd of processes running, calls the network, and prints
100 MB; one who replaces the registered checker; one who monkeypatches `grade`; one whose answer shows a
forged result; one who spins on the CPU ignoring interrupts; and one whose folder name is a formula with
escape codes. Every attack must fail to have any effect, and the honest rows must stay right.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import resource
import socket
import threading
import time
from pathlib import Path

import nbformat
import pytest

from course_lib.__main__ import main
from course_lib.classroom import MIME, isolation
from course_lib.grading import exercises
from course_lib.notebooks import ROOT, build_exercise

WELCOME = "00_welcome"


def _notebook(lesson: str, solved: set[str] | None = None) -> nbformat.NotebookNode:
    """The shipped exercise notebook of `lesson`, with the reference answer filled in for `solved` ids."""
    solution = nbformat.read(ROOT / "solutions" / f"{lesson}.ipynb", as_version=4)
    blank, filled = build_exercise(solution), build_exercise(solution, keep_answers=True)
    for cell, answer in zip(blank.cells, filled.cells, strict=True):
        if cell.metadata.get("lab", {}).get("exercise") in (solved or set()) and cell.metadata["lab"]["role"] == "answer":
            cell.source = answer.source
    return blank


# a lesson with several exercises for the partly-solved learner; 02 grades in seconds (01 starts real servers)
PARTIAL = "02_n_plus_one"


def _multi_exercise_lesson() -> str:
    assert len(exercises(PARTIAL)) >= 2, f"{PARTIAL} no longer has two exercises to test partial solutions on"
    return PARTIAL


def _answer_cell(nb: nbformat.NotebookNode, source: str, exercise: str = "00.first-endpoint") -> nbformat.NotebookNode:
    """`nb` with the answer cell of `exercise` replaced by `source`."""
    for cell in nb.cells:
        if cell.metadata.get("lab", {}) == {"role": "answer", "exercise": exercise}:
            cell.source = source
    return nb


# the vandal's answer cell: every attack it makes leaves its trace in EFFECTS (read by the tests), if it works
VANDAL = r"""
import json, os, socket, subprocess, sys, pathlib
CLASS, COURSE, HOME, PORT, HOST_PORT = {class_!r}, {course!r}, {home!r}, {port!r}, {host_port!r}
make_app = None
stolen = [pathlib.Path("../ada_solved/00_welcome.ipynb"), pathlib.Path(CLASS) / "ada_solved" / "00_welcome.ipynb",
          pathlib.Path(COURSE) / "solutions" / "00_welcome.ipynb"]
try:  # a file of the instructor's outside the hidden folders, in a folder only its owner may enter
    exec(pathlib.Path({secret!r}).read_text())
except Exception:
    pass
for path in stolen:  # another learner's answer, then the course's solution: exec it and pass with it
    try:
        cells = json.loads(path.read_text())["cells"]
        source = ["".join(c["source"]) for c in cells if c["cell_type"] == "code" and ("BEGIN SOLUTION" in "".join(
            c["source"]) or c.get("metadata", {{}}).get("lab", {{}}).get("role") == "answer")][0]
        exec(source)
        break
    except Exception:
        pass
for path in [pathlib.Path("../bob_unsolved/00_welcome.ipynb"), pathlib.Path(CLASS) / "ada_solved" / "00_welcome.ipynb",
             pathlib.Path(HOME) / "progress.json"]:  # overwrite another learner's notebook, the instructor's progress
    try:
        path.write_text("vandalised")
    except Exception:
        pass
for name in ("tests/test_class_grading.py", "instructors/00_welcome.md", ".git/HEAD"):  # instructor-only files
    try:
        (pathlib.Path("stolen") / name.replace("/", "_")).parent.mkdir(exist_ok=True)
        (pathlib.Path("stolen") / name.replace("/", "_")).write_text((pathlib.Path(COURSE) / name).read_text())
        (pathlib.Path(CLASS) / "loot.txt").write_text(name)
    except Exception:
        pass
log = os.environ.get("COURSE_LAB_RESULTS")  # the old results file: append a pass
if log:
    with open(log, "a") as handle:
        handle.write(json.dumps({{"exercise": "00.first-endpoint", "passed": True, "message": "forged",
                                  "figures": {{}}}}) + "\n")
try:  # the grader's machine, on its loopback
    socket.create_connection(("127.0.0.1", HOST_PORT), timeout=2).close()
except OSError:
    pass
for address in [("0.0.0.0", 0), ("1.1.1.1", 80)]:
    try:
        s = socket.socket(); s.settimeout(2)
        s.bind(address) if address[1] == 0 else s.connect(address)
    except OSError:
        pass
subprocess.Popen([sys.executable, "-m", "http.server", str(PORT), "--bind", "127.0.0.1"], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(400):  # a crowd of detached processes
    try:
        subprocess.Popen(["sleep", "987654"], start_new_session=True)
    except OSError:
        break
print("x" * 100_000_000)
for _ in range(30):
    print("y" * 1_000_000)
"""

REGISTRY = """
import course_lib.grading as grading
grading.exercises()  # every lesson registered
grading._REGISTRY["00.first-endpoint"].checker = lambda answer, checking: "looks fine"
make_app = None
"""

GRADE_PATCH = """
import course_lib.grading as grading
grading.grade = lambda exercise_id, answer, **kw: grading.Result(exercise_id, True, "passed, honestly")
make_app = None
"""

DISPLAY_FORGER = """
from IPython.display import display
def make_app(db):
    record = {"nonce": "0" * 32, "exercise": "00.first-endpoint", "status": "passed", "message": "forged",
              "hint": "", "figures": {}}
    display({MIME!r: record}, raw=True)
    raise RuntimeError("never mind")
""".replace("MIME!r", repr(MIME))

SPINNER = """
import signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
while True:
    pass
"""

FORMULA = '=HYPERLINK("evil.example","x")\x1b[2J\x07'
CPU_SECONDS, CELL_TIMEOUT = 20, 150


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_with(marker: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in text:
            found.append(text)
    return found


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class")
    home = tmp_path_factory.mktemp("instructor-home")
    everything = {e.id for e in exercises(WELCOME)}

    def put(learner: str, lesson: str, nb: nbformat.NotebookNode | str) -> None:
        (folder / learner).mkdir(exist_ok=True)
        target = folder / learner / f"{lesson}.ipynb"
        target.write_text(nb if isinstance(nb, str) else nbformat.writes(nb))

    put("ada_solved", WELCOME, _notebook(WELCOME, everything))
    put("bob_unsolved", WELCOME, _notebook(WELCOME))

    moved = _notebook(WELCOME, everything)  # reordered: code cells shuffled after the imports, extra cells
    head, tail = moved.cells[:2], moved.cells[2:]
    random.Random(3).shuffle(tail)
    moved.cells = head + [nbformat.v4.new_code_cell("scratch = 1 + 1")] + tail
    put("cy_reordered", WELCOME, moved)

    deleted = _notebook(WELCOME, everything)
    deleted.cells = [c for c in deleted.cells if c.metadata.get("lab", {}).get("role") != "answer"]
    put("dee_deleted_answer", WELCOME, deleted)

    tampered = _notebook(WELCOME)  # unsolved, but the check cell now just prints a fake pass line
    for cell in tampered.cells:
        if cell.metadata.get("lab", {}).get("role") == "check":
            cell.source = 'print("✓ 00.first-endpoint passed")'
    put("eve_tampered", WELCOME, tampered)

    put("fay_corrupt", WELCOME, '{"cells": [ this is not json')

    multi = _multi_exercise_lesson()
    first = exercises(multi)[0].id
    put("gus_partial", multi, _notebook(multi, {first}))

    # the mischievous ones, graded first (names sort before the honest learners)
    port, host_port = _free_port(), _free_port()
    secret = tmp_path_factory.mktemp("instructor-only") / "answer.py"  # the reference answer, readable by root only
    solution = nbformat.read(ROOT / "solutions" / f"{WELCOME}.ipynb", as_version=4)
    secret.write_text(next(c.source for c in solution.cells if "### BEGIN SOLUTION" in c.source))
    os.chmod(secret.parent, 0o700)
    os.chmod(secret, 0o600)
    put("aa_vandal", WELCOME, _answer_cell(_notebook(WELCOME), VANDAL.format(
        class_=str(folder), course=str(ROOT), home=str(home), port=port, host_port=host_port,
        secret=str(secret) if isolation()["own_user"] else "/nonexistent")))
    put("ab_registry", WELCOME, _answer_cell(_notebook(WELCOME, everything), REGISTRY + "\n"))
    put("ac_grade_patch", WELCOME, _answer_cell(_notebook(WELCOME), GRADE_PATCH))
    put("ad_display_forger", WELCOME, _answer_cell(_notebook(WELCOME), DISPLAY_FORGER))
    put("ae_spinner", WELCOME, _answer_cell(_notebook(WELCOME), SPINNER))
    put(FORMULA, WELCOME, _notebook(WELCOME, everything))

    originals = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.ipynb")}
    hits: list[int] = []  # connections reaching a server on the grader's loopback
    listener = socket.create_server(("127.0.0.1", host_port))
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                listener.accept()[0].close()
                hits.append(1)
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    saved_home = os.environ.get("COURSE_LAB_HOME")
    os.environ["COURSE_LAB_HOME"] = str(home)  # the instructor's own progress lives here during the run
    csv_path = folder.parent / f"{folder.name}-grades.csv"
    started = time.monotonic()
    try:
        with pytest.MonkeyPatch.context() as patch:
            import sys
            out = _Capture()
            patch.setattr(sys, "stdout", out)
            code = main(["grade", "--class", str(folder), "--csv", str(csv_path),
                         "--cpu-seconds", str(CPU_SECONDS), "--cell-timeout", str(CELL_TIMEOUT)])
    finally:
        stop.set()
        listener.close()
        if saved_home is None:
            os.environ.pop("COURSE_LAB_HOME", None)
        else:
            os.environ["COURSE_LAB_HOME"] = saved_home
    assert code == 0
    with csv_path.open() as handle:
        rows = {(r["learner"], r["exercise"]): r for r in csv.DictReader(handle)}
    after = {
        "seconds": time.monotonic() - started, "hits": len(hits), "port": port, "home": home, "folder": folder,
        "originals": originals, "grown_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before,
        "terminal": out.text, "csv": csv_path.read_text(),
    }
    return rows, multi, first, after


class _Capture:
    """A stdout that keeps what was printed."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def _status(rows, learner: str, exercise: str = "00.first-endpoint") -> str:
    return rows[(learner, exercise)]["status"]


def test_solved_and_unsolved(graded_class):
    rows, *_ = graded_class
    assert _status(rows, "ada_solved") == "passed" and rows[("ada_solved", "00.first-endpoint")]["passed"] == "True"
    assert _status(rows, "bob_unsolved") == "failed"
    assert "not answered yet" in rows[("bob_unsolved", "00.first-endpoint")]["message"]


def test_reordered_cells_are_still_graded(graded_class):
    rows, *_ = graded_class
    assert _status(rows, "cy_reordered") == "passed"


def test_deleted_answer_is_a_clear_missing_row(graded_class):
    rows, *_ = graded_class
    assert _status(rows, "dee_deleted_answer") == "missing"
    assert "answer cell is missing" in rows[("dee_deleted_answer", "00.first-endpoint")]["message"]


def test_a_tampered_check_cell_does_not_pass(graded_class):
    rows, *_ = graded_class
    assert _status(rows, "eve_tampered") == "failed"


def test_a_corrupt_notebook_gets_rows_not_a_crash(graded_class):
    rows, *_ = graded_class
    assert _status(rows, "fay_corrupt") == "missing"
    assert "could not be graded" in rows[("fay_corrupt", "00.first-endpoint")]["message"]


def test_partly_solved(graded_class):
    rows, lesson, first, _ = graded_class
    statuses = {ex.id: _status(rows, "gus_partial", ex.id) for ex in exercises(lesson)}
    assert statuses[first] == "passed"
    assert all(status == "failed" for ex_id, status in statuses.items() if ex_id != first)


def test_missing_class_folder_is_reported(tmp_path: Path, capsys):
    assert main(["grade", "--class", str(tmp_path / "nobody")]) == 2
    assert "no such folder" in capsys.readouterr().err


# --- the mischievous learners ------------------------------------------------------------------------------

def test_stolen_answers_do_not_pass(graded_class):
    """Another learner's notebook and the course's solutions are out of reach: the vandal's answer stays empty."""
    rows, *_ = graded_class
    assert _status(rows, "aa_vandal") == "failed", rows[("aa_vandal", "00.first-endpoint")]


def test_nobody_elses_files_change(graded_class):
    *_, after = graded_class
    for path, digest in after["originals"].items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} was changed while grading"
    assert not (after["folder"] / "loot.txt").exists()
    assert not (after["home"] / "progress.json").exists(), "a learner's result reached the instructor's progress"


def test_honest_learners_graded_after_the_vandal_are_right(graded_class):
    rows, *_ = graded_class
    assert _status(rows, "ada_solved") == "passed"
    assert _status(rows, "bob_unsolved") == "failed"


def test_a_replaced_checker_is_an_error_row_not_a_pass(graded_class):
    rows, *_ = graded_class
    row = rows[("ab_registry", "00.first-endpoint")]
    assert row["status"] == "error" and "checker" in row["message"], row


def test_a_patched_grade_is_an_error_row_not_a_pass(graded_class):
    rows, *_ = graded_class
    row = rows[("ac_grade_patch", "00.first-endpoint")]
    assert row["status"] == "error" and "grade" in row["message"], row


def test_a_forged_result_output_is_an_error_row(graded_class):
    rows, *_ = graded_class
    row = rows[("ad_display_forger", "00.first-endpoint")]
    assert row["status"] == "error" and "forged" in row["message"], row


def test_the_cpu_cap_stops_a_spinner_that_ignores_interrupts(graded_class):
    rows, *_ = graded_class
    row = rows[("ae_spinner", "00.first-endpoint")]
    assert row["status"] == "missing" and "could not be graded" in row["message"], row
    # on a machine so busy that 20 CPU seconds take longer than the cell's wall limit, that limit stops it first
    assert "CPU time" in row["message"] or "CellTimeoutError" in row["message"], row


def test_nothing_the_learners_started_survives(graded_class):
    *_, after = graded_class
    assert _processes_with(f"http.server {after['port']}") == []
    assert _processes_with("sleep 987654") == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", after["port"]), timeout=1).close()


def test_no_network_reaches_the_graders_machine(graded_class):
    *_, after = graded_class
    if not isolation()["namespaces"]:
        pytest.skip("no network namespace here: only the in-kernel loopback guard applies")
    assert after["hits"] == 0


def test_100_mb_of_output_is_not_taken_in(graded_class):
    *_, after = graded_class
    assert after["grown_kb"] < 150_000, f"the grader grew by {after['grown_kb']} KB"


def test_names_reach_csv_and_terminal_without_formulas_or_escape_codes(graded_class):
    rows, *_, after = graded_class
    name = [learner for learner, _ in rows if "HYPERLINK" in learner]
    assert name and set(name) == {"'" + FORMULA.replace("\x1b", "").replace("\x07", "")}, name
    assert rows[(name[0], "00.first-endpoint")]["status"] == "passed"
    assert "\x1b" not in after["terminal"] and "\x07" not in after["terminal"]
    assert "\x1b" not in after["csv"] and "\n=" not in after["csv"] and ",=" not in after["csv"]


def test_as_root_the_kernel_runs_as_a_user_of_its_own(graded_class):
    """The vandal tried to exec the reference answer from a root-only file outside the hidden folders."""
    if not isolation()["own_user"]:
        pytest.skip("a user of its own needs root (and Python reachable): here the kernel runs as the instructor")
    rows, *_ = graded_class
    assert _status(rows, "aa_vandal") == "failed"
