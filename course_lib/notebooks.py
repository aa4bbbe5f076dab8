"""Notebook tooling: generate exercises from solutions, keep stored outputs clean, and grade notebooks by running them."""

from __future__ import annotations

import atexit
import copy
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from .grading import exercises
from .layout import BEGIN, CHECKED, END, KERNELSPEC, ROOT, STARTER, language_info

__all__ = [
    "ROOT",
    "strip_solutions",
    "build_exercise",
    "build_exercises",
    "clean_notebook",
    "execute_notebook",
    "refresh_outputs",
    "GradeRow",
    "GradingInterrupted",
    "grade_notebook",
    "grade_class",
    "reset_exercise",
]

_CHECK_CALL = re.compile(r"""check\(\s*["']([\w.\-]+)["']""")


def strip_solutions(source: str) -> str:
    """Replace each BEGIN/END SOLUTION region by its `#> ` starter lines, or by a YOUR CODE HERE stub."""
    out: list[str] = []
    inside = False
    starter: list[str] = []
    indent = ""
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError("nested '### BEGIN SOLUTION'")
            inside, starter, indent = True, [], line[: len(line) - len(line.lstrip())]
        elif stripped == END:
            if not inside:
                raise ValueError("'### END SOLUTION' without BEGIN")
            inside = False
            out.append(f"{indent}# YOUR CODE HERE")
            out.extend(starter or [f"{indent}raise NotImplementedError()"])
        elif inside:
            if stripped.startswith(STARTER.strip()):
                starter.append(indent + stripped[len(STARTER):] if stripped.startswith(STARTER) else indent)
        else:
            out.append(line)
    if inside:
        raise ValueError("'### BEGIN SOLUTION' without END")
    return "\n".join(out)


def _clear(cell: NotebookNode) -> None:
    if cell.cell_type == "code":
        cell.outputs = []
        cell.execution_count = None


def clean_notebook(nb: NotebookNode) -> NotebookNode:
    """Drop outputs and counters, except in `# NBVAL_CHECK_OUTPUT` cells (nbval compares those; the counter
    tells nbval they ran, and is the same on every run-all)."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if CHECKED not in cell.source:
            _clear(cell)
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    # complete, as the kernel reports it: JupyterLab marks a notebook modified when the kernel's differs
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = language_info()
    return nb


def build_exercise(solution: NotebookNode, keep_answers: bool = False) -> NotebookNode:
    """The learner's notebook: answers stubbed, `solution`-tagged cells dropped, answer/check cells tagged by id.
    With keep_answers=True the reference answers stay in: a "solved" exercise notebook (tests, demos)."""
    nb = copy.deepcopy(solution)
    cells: list[NotebookNode] = []
    for cell in nb.cells:
        if "solution" in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "code" and BEGIN in cell.source:
            if not keep_answers:
                cell.source = strip_solutions(cell.source)
            cell.metadata["lab"] = {"role": "answer"}
        _clear(cell)
        cells.append(cell)
    pending: list[NotebookNode] = []
    for cell in cells:  # an answer cell belongs to the exercise of the next check(...) cell
        if cell.metadata.get("lab", {}).get("role") == "answer":
            pending.append(cell)
        match = _CHECK_CALL.search(cell.source) if cell.cell_type == "code" else None
        if match:
            cell.metadata["lab"] = {"role": "check", "exercise": match.group(1)}
            for answer in pending:
                answer.metadata["lab"]["exercise"] = match.group(1)
            pending = []
    nb.cells = cells
    return nb


def _dumps(nb: NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def build_exercises(root: Path = ROOT, check: bool = False, names: Sequence[str] = ()) -> list[Path]:
    """Write exercises/NAME.ipynb from each solutions/NAME.ipynb (or only the named lessons, e.g. "02" or
    "02_n_plus_one"); with check=True only list those out of date."""
    stale: list[Path] = []
    for solution_path in sorted((root / "solutions").glob("*.ipynb")):
        if names and not any(solution_path.stem == n or solution_path.stem.startswith(f"{n}_") for n in names):
            continue
        target = root / "exercises" / solution_path.name
        text = _dumps(build_exercise(nbformat.read(solution_path, as_version=4)))
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            stale.append(target)
            if not check:
                target.parent.mkdir(exist_ok=True)
                target.write_text(text, encoding="utf-8")
    return stale


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (kernels started inside inherit them), then restore."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(nb: NotebookNode, folder: Path, *, timeout: int, allow_errors: bool, env: dict[str, str]) -> None:
    from nbclient import NotebookClient

    with _environment(env):
        for attempt in range(3):  # a kernel that dies while starting (a port taken under load) gets another try
            try:
                NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                               resources={"metadata": {"path": str(folder)}}).execute()
                return
            except RuntimeError as error:
                if "died before replying to kernel_info" not in str(error) or attempt == 2:
                    raise


def execute_notebook(path: Path, *, timeout: int = 600, allow_errors: bool = False,
                     env: dict[str, str] | None = None) -> NotebookNode:
    """Run every cell of a notebook in a fresh `python3` kernel, in the notebook's folder; return it executed."""
    nb = nbformat.read(path, as_version=4)
    _run(nb, path.parent, timeout=timeout, allow_errors=allow_errors, env=env or {})
    return nb


def refresh_outputs(path: Path) -> None:
    """Execute a lesson or solutions notebook and store only the outputs nbval checks."""
    executed = execute_notebook(path)
    nbformat.write(clean_notebook(executed), path)


@dataclass
class GradeRow:
    """One line of a grading report."""

    notebook: str
    exercise: str
    title: str
    status: str  # "passed", "failed", "missing" (no result) or "error" (a result that cannot be trusted)
    figures: str
    message: str


def _official_checks(lesson: str, root: Path) -> dict[str, str]:
    """The shipped check cell of each exercise of a lesson, by exercise id (from solutions/, the source)."""
    solution = root / "solutions" / f"{lesson}.ipynb"
    if not solution.exists():
        return {}
    built = build_exercise(nbformat.read(solution, as_version=4))
    return {cell.metadata["lab"]["exercise"]: cell.source for cell in built.cells
            if cell.metadata.get("lab", {}).get("role") == "check"}


def solution_namespace(lesson: str, root: Path = ROOT) -> dict[str, Any]:
    """Run solutions/<lesson>.ipynb's code cells up to its first check(...) in a fresh namespace; return it."""
    nb = nbformat.read(root / "solutions" / f"{lesson}.ipynb", as_version=4)
    namespace: dict[str, Any] = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cell.source.startswith("check("):
            break
        exec(compile(cell.source, f"<solutions/{lesson}>", "exec"), namespace)  # noqa: S102 - our own notebook
    return namespace


def _role(cell: NotebookNode) -> tuple[str, str]:
    lab = cell.metadata.get("lab", {}) if isinstance(cell.metadata.get("lab"), dict) else {}
    return lab.get("role", ""), lab.get("exercise", "")


def _output_size(content: Any) -> int:
    try:
        return len(json.dumps(content, default=str))
    except (TypeError, ValueError):
        return 1 << 30


def _capped_client(output_bytes: int) -> type:
    """A NotebookClient that keeps at most `output_bytes` of output, and keeps aside the grader's result outputs
    (so a `clear_output` cannot remove them and a flood of output cannot crowd them out)."""
    from nbclient import NotebookClient

    from .classroom import MIME

    class CappedClient(NotebookClient):
        kept = 0
        cut = False
        records: dict[int, list[Any]]  # the grader's result outputs, by cell index (set before each run)

        def output(self, outs: list[NotebookNode], msg: dict[str, Any], display_id: str | None,
                   cell_index: int) -> NotebookNode | None:
            content: dict[str, Any] = msg["content"] if isinstance(msg.get("content"), dict) else {}
            size = _output_size(content)
            data = content.get("data")
            if isinstance(data, dict) and MIME in data:
                records = self.records.setdefault(cell_index, [])
                if size <= 65536 and len(records) < 8:
                    records.append(data[MIME])
                return None
            if self.kept + size > output_bytes:
                if not self.cut:
                    self.cut = True
                    outs.append(nbformat.v4.new_output("stream", name="stderr", text=(
                        f"[the grader kept the first {output_bytes} bytes of this notebook's output]")))
                return None
            self.kept += size
            return super().output(outs, msg, display_id, cell_index)

    return CappedClient


def _execute_graded(nb: NotebookNode, folder: Path, *, timeout: int, output_bytes: int,
                    sandbox: Any = None, hide: Sequence[Path] = ()) -> dict[int, list[Any]]:
    """Run a notebook (in the sandbox's kernel when given); return the grader's result outputs by cell index."""
    client_class = _capped_client(output_bytes)
    for attempt in range(3):  # a kernel that dies while starting (a port taken under load) gets another try
        if sandbox is not None:
            options: dict[str, Any] = {"km": sandbox.kernel_manager(hide),
                                       "on_notebook_start": lambda **_: sandbox.watch()}
        else:  # Unix sockets in a private folder: no TCP port, no "running over TCP without encryption" warning
            from jupyter_client import AsyncKernelManager

            sockets = Path(tempfile.mkdtemp(prefix="lab-kernel-"))
            atexit.register(shutil.rmtree, sockets, True)
            options = {"km": AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(sockets / "k"))}
        client = client_class(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                              resources={"metadata": {"path": str(folder)}}, **options)
        client.records = {}
        try:
            _execute_interruptibly(client)
            return client.records
        except RuntimeError as error:
            if "died before replying to kernel_info" not in str(error) or attempt == 2:
                raise
        finally:
            atexit.unregister(client._cleanup_kernel)
            if sandbox is not None:
                sandbox.close_kernel()
    return {}


class GradingInterrupted(KeyboardInterrupt):
    """Ctrl-C while a notebook was graded: its kernel is shut down; the message says what was kept."""

    def __init__(self, message: str = "", finished: int = 0) -> None:
        super().__init__(message)
        self.finished = finished  # the grader's check cells that had shown their result


def _kernel_group(client: Any) -> int | None:
    """The process group of the client's kernel (the kernel leads a session of its own), once it started."""
    provisioner = getattr(getattr(client, "km", None), "provisioner", None)
    return getattr(provisioner, "pgid", None) or getattr(provisioner, "pid", None)


def _end_kernel(client: Any, done: threading.Event, grace: float = 3.0) -> None:
    """Stop the kernel (SIGTERM to its process group, SIGKILL after `grace`) until the thread running it is `done`.

    Signals, not a shutdown request: a kernel asked to shut down in the middle of a cell prints a ZMQ traceback."""
    client.log = logging.getLogger("course_lib.grade.interrupted")  # nbclient's "kernel died" lines: expected now
    client.log.propagate, client.log.disabled = False, True
    deadline = time.monotonic() + 30
    first: float | None = None
    while not done.is_set() and time.monotonic() < deadline:
        group = _kernel_group(client)  # None until the kernel has started: keep trying until it has, or the run ends
        if group is not None:
            first = first or time.monotonic()
            try:
                os.killpg(group, signal.SIGTERM if time.monotonic() - first < grace else signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        done.wait(0.2)


def _execute_interruptibly(client: Any) -> None:
    """`client.execute()` in a worker thread, so that Ctrl-C reaches this one (nbclient turns it into an
    AssertionError and a kernel traceback); on Ctrl-C end the kernel and raise GradingInterrupted.

    The wait is an Event's, not `Thread.join`: a join cut by Ctrl-C can mark a running thread as stopped (3.11)."""
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            client.execute(cleanup_kc=True)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            failure.append(error)
        finally:
            done.set()

    threading.Thread(target=run, name="grade-notebook", daemon=True).start()
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C cannot leave the kernel running
        try:
            _end_kernel(client, done)
        finally:
            signal.signal(signal.SIGINT, previous)
        raise GradingInterrupted(finished=len(getattr(client, "records", {}))) from None
    if failure:
        raise failure[0]


_STATUSES = ("passed", "failed", "error")


_COURSE_FILES: dict[Path, int] = {}


def _course_changed(exercise_id: str | None = None) -> list[str]:
    """The files a verdict of `exercise_id` depends on (its checker's module, grading, classroom) that changed on
    disk since the grader loaded them: a kernel would load other code than the grader fingerprinted."""
    package = Path(__file__).resolve().parent
    now = {path: path.stat().st_mtime_ns for path in package.rglob("*.py")}
    if not _COURSE_FILES:
        _COURSE_FILES.update(now)
        return []
    relevant = {package / "grading.py", package / "classroom.py"}
    found = [ex for ex in exercises() if ex.id == exercise_id]
    module = sys.modules.get(found[0].checker.__module__) if found else None
    module_file = getattr(module, "__file__", None) if module is not None else None
    if module_file:
        relevant.add(Path(module_file).resolve())
    return sorted(str(path.relative_to(package.parent)) for path in relevant
                  if path in now and _COURSE_FILES.get(path) != now[path])


def _valid_record(record: Any, exercise_id: str, nonce: str) -> bool:
    return (isinstance(record, dict) and record.get("nonce") == nonce and record.get("exercise") == exercise_id
            and record.get("status") in _STATUSES and isinstance(record.get("message"), str)
            and isinstance(record.get("hint", ""), str) and isinstance(record.get("figures"), dict)
            and all(isinstance(v, (int, float, str)) for v in record["figures"].values()))


def _text(value: Any, limit: int = 2000) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def grade_notebook(path: Path, timeout: int = 600, root: Path | None = None, *, sandbox: Any = None,
                   hide: Sequence[Path] = (), output_bytes: int = 2 << 20) -> list[GradeRow]:
    """Grade a learner's exercise notebook (see `_grade_notebook`); Ctrl-C raises GradingInterrupted, which says
    what was kept, with the kernel already shut down."""
    try:
        return _grade_notebook(path, timeout, root, sandbox=sandbox, hide=hide, output_bytes=output_bytes)
    except GradingInterrupted:
        raise
    except KeyboardInterrupt:  # before its kernel started: reading the notebook, loading the graders
        raise GradingInterrupted(f"stopped by Ctrl-C while preparing to grade {Path(path).name}, before its kernel "
                                 "started; nothing graded was saved.") from None


def _grade_notebook(path: Path, timeout: int = 600, root: Path | None = None, *, sandbox: Any = None,
                    hide: Sequence[Path] = (), output_bytes: int = 2 << 20) -> list[GradeRow]:
    """Grade a learner's exercise notebook: run its cells, with its own check cells replaced by the *shipped*
    check of each exercise, run right after that exercise's last answer cell (found by metadata, not position).

    A result is read only from the grader's own check cell: one output of a private MIME type carrying a nonce
    made for that cell (`course_lib.classroom`); files and prints of the learner's code are never read. With a
    `sandbox` (class grading) the kernel runs isolated (`classroom.Sandbox`)."""
    from .classroom import check_cell, fingerprint, new_nonce

    _course_changed()  # the first call notes the course's files as loaded now

    lesson = path.stem
    expected = exercises(lesson)
    checks = _official_checks(lesson, root or ROOT)
    results: dict[str, GradeRow] = {}
    answered: set[str] = set()
    problem = ""
    injected: dict[int, tuple[str, str]] = {}  # cell index -> (exercise id, nonce)
    try:
        nb = nbformat.read(path, as_version=4)
        learner_cells = [c for c in nb.cells if c.cell_type == "code" and _role(c)[0] != "check"]
        answered = {_role(c)[1] for c in learner_cells if _role(c)[0] == "answer"}
        last_answer = {_role(c)[1]: i for i, c in enumerate(learner_cells) if _role(c)[0] == "answer"}
        cells: list[NotebookNode] = []
        for i, cell in enumerate(learner_cells):  # each shipped check right after its exercise's answer
            cell.outputs = []
            cells.append(cell)
            for ex_id, last in last_answer.items():
                if last == i and ex_id in checks:
                    nonce = new_nonce()
                    injected[len(cells)] = (ex_id, nonce)
                    cells.append(nbformat.v4.new_code_cell(check_cell(checks[ex_id], nonce, ex_id,
                                                                         fingerprint(ex_id))))
        nb.cells = cells
        records = _execute_graded(nb, sandbox.work if sandbox is not None else path.parent, timeout=timeout,
                                  output_bytes=output_bytes, sandbox=sandbox, hide=hide)
    except GradingInterrupted as stop:
        kept = ("nothing was written (the class's results are written once every notebook is graded)"
                if sandbox is not None else
                "nothing graded was saved" if not stop.finished else
                f"the {stop.finished} check(s) that finished before it are saved in your progress "
                "(`python -m course_lib progress`), the rest were not graded")
        raise GradingInterrupted(f"stopped by Ctrl-C while grading {path.name}; its kernel is shut down and {kept}.",
                                 stop.finished) from None
    except Exception as error:  # corrupt file, dead kernel, a cell over the time limit, a CPU limit reached
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        problem = f"the notebook could not be graded: {type(error).__name__}: {first_line}"
        why = sandbox.why_it_died() if sandbox is not None else ""
        problem += f" ({why})" if why else ""
        records = {}
    titles = {ex.id: ex.title for ex in expected}
    stopped = _answer_errors(nb.cells if records else [])
    for index, (ex_id, nonce) in injected.items():
        found = records.get(index, [])
        if not found:
            continue
        record = found[0]
        if len(found) != 1 or not _valid_record(record, ex_id, nonce):
            results[ex_id] = GradeRow(path.name, ex_id, titles.get(ex_id, ""), "error", "",
                                      f"the grader's check cell showed {len(found)} result(s) that do not match "
                                      "what it sent (a forged or garbled result): not graded")
            continue
        changed = _course_changed(ex_id) if record["status"] == "error" else []
        if changed:  # not the learner: the course itself was edited while grading
            record = {**record, "message": "not graded: the course's code changed on disk while grading ("
                      + ", ".join(changed[:5]) + "), so the kernel ran other code than the grader checked: grade again"}
        figures = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in record["figures"].items())
        message = record["message"] + (f" Hint: {record['hint']}" if record.get("hint") else "")
        if ex_id in stopped and record["status"] != "passed":
            message = f"your answer cell stopped with {stopped[ex_id]}, so the check saw no answer. " + message
        results[ex_id] = GradeRow(path.name, ex_id, titles.get(ex_id, ""), record["status"], _text(figures),
                                  _text(message))
    rows = []
    for ex in expected:
        row = results.get(ex.id)
        if row is None:
            why = problem or ("its answer cell is missing (deleted, or pasted into a new cell): "
                              f"`python -m course_lib reset {lesson}` restores the notebook"
                              if ex.id not in answered else "its check did not run (the kernel died or was stopped "
                                                            "before it, or a limit was reached)")
            row = GradeRow(path.name, ex.id, ex.title, "missing", "", why)
        rows.append(row)
    return rows


def _answer_errors(cells: Sequence[NotebookNode]) -> dict[str, str]:
    """The first error each exercise's answer cells stopped with, as "SyntaxError: … (answer cell, line 1)"."""
    errors: dict[str, str] = {}
    for cell in cells:
        role, ex_id = _role(cell)
        if role != "answer" or ex_id in errors:
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                value = (str(output.get("evalue", "")).strip().splitlines() or [""])[0][:160]
                errors[ex_id] = f"{str(output.get('ename', 'an error'))[:40]}: {value}"
                break
    return errors


def _hidden_from_learners(folder: Path, root: Path) -> list[Path]:
    """What a learner's kernel must not see: the class folder (everyone's originals), the course's answers
    and tests, the instructor notes, the history, and the instructor's own progress."""
    from .grading import progress_file

    course = [base / name for base in {root.resolve(), ROOT}
              for name in ("solutions", "sources", "tests", "instructors", ".git")]  # sources/: answers as text too
    return [folder.resolve(), *course, progress_file().parent]


def grade_class(folder: Path, root: Path | None = None, limits: Any = None) -> list[tuple[str, GradeRow]]:
    """Grade every learner's folder (one per learner) of exercise notebooks: (learner, row) for each exercise.

    Each notebook runs in a sandbox of its own (`course_lib.classroom.Sandbox`): a private copy of that
    learner's folder only, a temporary COURSE_LAB_HOME, no network, limits, and everything killed after."""
    from .classroom import Limits, Sandbox

    limits = limits or Limits()
    root = root or ROOT
    hide = _hidden_from_learners(folder, root)
    rows: list[tuple[str, GradeRow]] = []
    for learner in sorted(p for p in folder.iterdir()
                          if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")):
        names = sorted(n.name for n in learner.glob("*.ipynb") if n.is_file() and not n.is_symlink())
        for name in names:
            if not exercises(Path(name).stem):
                continue  # not an exercise notebook of this course
            with Sandbox(limits) as sandbox:
                work = sandbox.copy_in(learner)
                graded = grade_notebook(work / name, timeout=limits.cell_timeout, root=root, sandbox=sandbox,
                                        hide=hide, output_bytes=limits.output_bytes)
                left = sandbox.close()
            if left:
                print(f"warning: {len(left)} process(es) of {learner.name!r} survived grading: {left}", file=sys.stderr)
            rows += [(learner.name, row) for row in graded]
    return rows


def reset_exercise(name: str, root: Path = ROOT) -> tuple[Path, Path | None]:
    """Restore exercises/NAME.ipynb to its shipped state; the learner's copy is kept in exercises/.backup/."""
    solution = root / "solutions" / f"{Path(name).stem}.ipynb"
    if not solution.exists():
        known = ", ".join(p.stem for p in sorted((root / "solutions").glob("*.ipynb")))
        raise FileNotFoundError(f"no exercise notebook {name!r}; known: {known}")
    target = root / "exercises" / solution.name
    backup = None
    if target.exists():
        backup = root / "exercises" / ".backup" / f"{solution.stem}-{datetime.now():%Y%m%d-%H%M%S}-{time.time_ns() % 1000}.ipynb"
        backup.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(target, backup)
    target.write_text(_dumps(build_exercise(nbformat.read(solution, as_version=4))), encoding="utf-8")
    return target, backup
