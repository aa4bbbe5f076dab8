"""Terminal entry point: `python -m course_lib {progress,grade,hint,reset,audit,bench,build-exercises,refresh-outputs,dev}`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .grading import exercises, hint, load_progress
from .text_table import text_table

if TYPE_CHECKING:
    from .notebooks import GradeRow

# nbformat (through .notebooks) takes seconds to import: only the commands that read notebooks import it


def _root() -> Path:
    from .notebooks import ROOT

    cwd = Path.cwd()
    return cwd if (cwd / "solutions").is_dir() else ROOT


_MARK = {"passed": "✓", "failed": "✗", "missing": "·", "error": "!"}


def cmd_progress(_: argparse.Namespace) -> int:
    """Where the learner is: each exercise's last result on this machine, and what to do next."""
    progress = load_progress()
    rows, done, upcoming = [], 0, None
    for ex in exercises():
        record = progress.get(ex.id)
        if record and record.get("passed"):
            done += 1
            state = "✓ done"
        elif record:
            state = "✗ failing"
            upcoming = upcoming or ex
        else:
            state = "· to do"
            upcoming = upcoming or ex
        rows.append((ex.lesson, ex.id, state, ex.title))
    print(text_table(("lesson", "exercise", "state", "title"), rows))
    total = len(rows)
    filled = round(30 * done / total) if total else 0
    print(f"\n[{'#' * filled}{'-' * (30 - filled)}] {done}/{total} exercises done")
    if upcoming is not None:
        print(f"Next: {upcoming.id} in exercises/{upcoming.lesson}.ipynb — stuck? "
              f"`python -m course_lib hint {upcoming.id}`")
    return 0


def _print_grade_rows(rows: list[GradeRow]) -> None:
    print(text_table(("exercise", "status", "figures", "message"),
                 [(r.exercise, f"{_MARK[r.status]} {r.status}", r.figures, r.message) for r in rows]))


def cmd_grade(args: argparse.Namespace) -> int:
    """Run exercise notebooks in a kernel and grade every exercise in them."""
    from .notebooks import grade_notebook

    if args.class_dir:
        return _grade_class(Path(args.class_dir), Path(args.csv) if args.csv else None,
                            cpu_seconds=args.cpu_seconds, cell_timeout=args.cell_timeout)
    paths = [Path(p) for p in args.paths] or sorted((_root() / "exercises").glob("*.ipynb"))
    all_rows: list[GradeRow] = []
    for path in paths:
        if not path.exists():
            print(f"{path}: no such notebook", file=sys.stderr)
            return 2
        print(f"grading {path} …", flush=True)
        rows = grade_notebook(path, root=_root())
        _print_grade_rows(rows)
        print()
        all_rows += rows
    if not all_rows:
        print("no exercises found in these notebooks (an exercise notebook is named after its lesson, "
              "e.g. exercises/02_n_plus_one.ipynb)", file=sys.stderr)
        return 1
    passed = sum(r.status == "passed" for r in all_rows)
    print(f"{passed} passed, {len(all_rows) - passed} failed")
    return 0 if passed == len(all_rows) else 1


def _csv_cell(value: object) -> str:
    """A CSV cell safe to open in a spreadsheet: no control characters, no formula (=, +, -, @ lead with ')."""
    text = "".join(ch for ch in str(value) if ch.isprintable() or ch == " ")
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def _grade_class(folder: Path, csv_path: Path | None, *, cpu_seconds: int = 900, cell_timeout: int = 300) -> int:
    """Grade a class (one folder per learner, each notebook in a sandbox), print a summary, write every row to a CSV."""
    import csv

    from .classroom import Limits
    from .notebooks import grade_class

    if not folder.is_dir():
        print(f"{folder}: no such folder", file=sys.stderr)
        return 2
    from .classroom import isolation

    allowed = isolation()
    print("each notebook is graded in a sandbox: a private copy, no network beyond its own loopback, limits"
          + ("" if allowed["namespaces"] else " (NO namespaces here: see INSTRUCTORS.md, threat model)")
          + ("; a user of its own" if allowed["own_user"] else "; run as root to give it a user of its own"), flush=True)
    rows = grade_class(folder, _root(), Limits(cpu_seconds=cpu_seconds, cell_timeout=cell_timeout))
    if csv_path is not None:
        with csv_path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["learner", "notebook", "exercise", "passed", "status", "figures", "message"])
            for learner, row in rows:
                writer.writerow([_csv_cell(v) for v in (learner, row.notebook, row.exercise, row.status == "passed",
                                                         row.status, row.figures, row.message)])
    statuses = ("passed", "failed", "missing", "error")
    summary: dict[str, list[int]] = {}
    for learner, row in rows:
        counts = summary.setdefault(learner, [0] * len(statuses))
        counts[statuses.index(row.status) if row.status in statuses else statuses.index("error")] += 1
    print(text_table(("learner", *statuses), [(_csv_cell(name), *map(str, counts)) for name, counts in summary.items()]))
    print(f"\n{len(summary)} learners, {len(rows)} exercise results" +
          (f"; every row is in {csv_path}" if csv_path else ""))
    return 0


def cmd_hint(args: argparse.Namespace) -> int:
    """Print a hint for one exercise (level 1 is a nudge, the last level nearly the answer)."""
    known = {e.id for e in exercises()}
    if args.exercise not in known:
        print(f"there is no exercise {args.exercise!r}; known ones: {', '.join(e.id for e in exercises())}",
              file=sys.stderr)
        return 2
    print(hint(args.exercise, args.level))
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    """Restore one exercise notebook to its shipped state, keeping a backup of the learner's copy."""
    from .notebooks import reset_exercise

    try:
        target, backup = reset_exercise(args.name, _root())
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    print(f"restored {target}" + (f"; your previous copy is in {backup}" if backup else ""))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Generate exercises/ from solutions/ (or, with --check, fail if they differ)."""
    from .notebooks import build_exercises

    stale = build_exercises(_root(), check=args.check, names=args.names)
    for path in stale:
        print(("out of date: " if args.check else "wrote ") + str(path))
    if args.check and stale:
        print("run `python -m course_lib build-exercises` and commit the result", file=sys.stderr)
        return 1
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    """Re-run notebooks and store only the outputs nbval compares (cells marked NBVAL_CHECK_OUTPUT)."""
    from .notebooks import refresh_outputs

    for name in args.paths:
        print(f"refreshing {name} …", flush=True)
        refresh_outputs(Path(name))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure each lesson's headline effect on this machine and print the table."""
    from .bench import run_bench

    return run_bench(notebooks=args.notebooks, only=args.only, postgres_column=args.postgres_column,
                     rounds=args.rounds, strict=args.strict)


def cmd_audit(args: argparse.Namespace) -> int:
    """Run the performance checklist against a FastAPI app ("module:app") and print the report."""
    from .auditor import audit_main

    return audit_main([args.app, *[arg for path in args.probe for arg in ("--probe", path)]])


def cmd_dev(args: argparse.Namespace) -> int:
    """Maintainers' tools: `dev check` the course's shape, `dev build` notebooks, `dev new` a lesson."""
    try:
        from .dev import main as dev_main
    except ValueError as error:  # the catalogue refused itself (a duplicate lesson or exercise id)
        print(f"✗ course_lib/catalogue.py: {error}", file=sys.stderr)
        return 1
    return dev_main(args.rest)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(prog="python -m course_lib", description="FastAPI Performance Lab")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("progress", help=cmd_progress.__doc__).set_defaults(run=cmd_progress)
    p = sub.add_parser("grade", help=cmd_grade.__doc__)
    p.add_argument("paths", nargs="*", help="exercise notebooks (default: all of exercises/)")
    p.add_argument("--class", dest="class_dir", metavar="DIR", help="grade DIR/<learner>/*.ipynb for each learner")
    p.add_argument("--csv", help="with --class: write every result to this CSV file")
    p.add_argument("--cpu-seconds", type=int, default=900, help="with --class: CPU seconds per process of a learner")
    p.add_argument("--cell-timeout", type=int, default=300, help="with --class: wall seconds per cell")
    p.set_defaults(run=cmd_grade)
    p = sub.add_parser("hint", help=cmd_hint.__doc__)
    p.add_argument("exercise")
    p.add_argument("--level", type=int, default=None)
    p.set_defaults(run=cmd_hint)
    p = sub.add_parser("reset", help=cmd_reset.__doc__)
    p.add_argument("name", help="e.g. 02_n_plus_one")
    p.set_defaults(run=cmd_reset)
    p = sub.add_parser("build-exercises", help=cmd_build.__doc__)
    p.add_argument("names", nargs="*", help="only these lessons, e.g. 02 or 02_n_plus_one (default: all)")
    p.add_argument("--check", action="store_true")
    p.set_defaults(run=cmd_build)
    p = sub.add_parser("refresh-outputs", help=cmd_refresh.__doc__)
    p.add_argument("paths", nargs="+")
    p.set_defaults(run=cmd_refresh)
    p = sub.add_parser("audit", help=cmd_audit.__doc__)
    p.add_argument("app", help="import string, e.g. mypackage.main:app")
    p.add_argument("--probe", action="append", default=[], help="an extra GET path to probe (repeatable)")
    p.set_defaults(run=cmd_audit)
    p = sub.add_parser("bench", help=cmd_bench.__doc__)
    p.add_argument("--notebooks", action="store_true", help="also time every lesson notebook end to end")
    p.add_argument("--only", default=None, help="only lessons whose name contains this ('toolkit': only the toolkit)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per row; each row shows their median (default 3)")
    p.add_argument("--strict", action="store_true", help="also fail on a claim whose rounds disagreed (fragile)")
    p.add_argument("--postgres-column", action="store_true",
                   help="with DATABASE_URL: the data lessons (02, 04, 05) on SQLite and PostgreSQL side by side")
    p.set_defaults(run=cmd_bench)
    p = sub.add_parser("dev", help=cmd_dev.__doc__, add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="check | build | new NN slug TITLE | files --service S")
    p.set_defaults(run=cmd_dev)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dev"]:  # its own parser, so `dev check --help` reaches it
        return cmd_dev(argparse.Namespace(rest=argv[1:]))
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt as stop:  # Ctrl-C: a sentence, not the kernel client's traceback
        print(f"\n{stop}" if str(stop) else f"\ninterrupted: `{args.command}` stopped before it finished",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
