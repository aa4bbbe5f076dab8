"""The benchmark table: rows format their goals, and the PostgreSQL column joins rows by effect."""

from __future__ import annotations

import os

import pytest

from course_lib import bench
from course_lib.bench import BenchRow
from course_lib.settings import course_settings


@pytest.fixture(autouse=True)
def fresh_settings():
    """These tests change DATABASE_URL: never leave a stale cached setting to the tests after them."""
    course_settings.cache_clear()
    yield
    course_settings.cache_clear()


def test_rows_show_value_unit_and_goal_verdict():
    assert BenchRow("queries", 2, "queries", "≤ 2", True, lesson="02").cells() == ("02", "queries", "2 queries", "✓ ≤ 2")
    assert BenchRow("ratio", 1.234, "×", "≥ 1.5×", False, lesson="01").cells()[2:] == ("1.23 ×", "✗ ≥ 1.5×")
    assert BenchRow("rows", 300_000, "rows", lesson="04").cells()[2:] == ("300,000 rows", "")


def test_postgres_column_measures_each_database_and_joins_by_effect(monkeypatch):
    def fake(only=None):
        db = "postgresql" if os.environ.get("DATABASE_URL") else "sqlite"
        value = 3.0 if db == "sqlite" else 7.0
        return [BenchRow(f"[{db}] ratio", value, "×", "≥ 2×", True, lesson=only), BenchRow(f"[{db}] {db} only", 1, "s", lesson=only)]

    monkeypatch.setattr(bench, "lesson_benches", fake)
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/postgres")
    table = bench.side_by_side(only="02")
    assert ("02", "ratio", "3 ×", "7 ×", "✓ ≥ 2×") in table
    assert ("02", "sqlite only", "1 s", "—", "") in table
    assert os.environ["DATABASE_URL"].startswith("postgresql")


def test_postgres_column_needs_a_database_url(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(SystemExit, match="DATABASE_URL"):
        bench.side_by_side()


# ------------------------------------------------------------------ claims, rounds, the exit code


def _script(*rounds):
    """A bench section giving each round's rows in turn (each round: a list of BenchRow)."""
    pending = list(rounds)

    def measure():
        return pending.pop(0)
    return measure


def _claim(value, goal=2.0, **extra):
    return BenchRow("speed-up", value, "×", f"≥ {goal:g}×", value >= goal, **extra, lesson="01")


def _run(monkeypatch, capsys, toolkit=(), lessons=(), **options):
    monkeypatch.setattr(bench, "TOOLKIT_SECTIONS", list(toolkit))
    monkeypatch.setattr(bench, "_lesson_sections", lambda only=None: [(f"{i:02d}", s) for i, s in enumerate(lessons)])
    code = bench.run_bench(rounds=3, **options)
    return code, capsys.readouterr()


def test_old_style_rows_still_construct_and_format():
    row = BenchRow("queries", 2, "queries", "≤ 2", True, lesson="02")
    assert (row.level, row.kind, row.limit, row.rounds, row.note) == ("", "", None, [], "")
    assert row.role == "claim" and BenchRow("queries", 101, "queries", lesson="02").role == "info"
    assert BenchRow("overhead", 12, "%", "≤ 5 %", False, lesson="toolkit").role == "toolkit"


def test_a_noisy_toolkit_row_cannot_fail_the_run(monkeypatch, capsys):
    noisy = _script(*[[BenchRow("counter overhead", v, "%", "≤ 5 %", v <= 5, lesson="toolkit")] for v in (13, 3, 9)])
    code, out = _run(monkeypatch, capsys, toolkit=[noisy], lessons=[_script(*[[_claim(v)] for v in (3, 3.2, 2.9)])])
    text = " ".join(out.out.split())
    assert code == 0
    assert "9 % 3–13 ×3 ✗ ≤ 5 % (fragile: 1/3 rounds met) (toolkit, not graded)" in text
    assert "claims: 1 of 1 met, 0 missed" in text


def test_a_claim_that_misses_its_goal_fails_the_run(monkeypatch, capsys):
    code, out = _run(monkeypatch, capsys, lessons=[_script(*[[_claim(v)] for v in (1.6, 2.1, 1.7)])])
    assert code == 1
    assert "✗ ≥ 2×" in out.out and "1.7 ×" in out.out  # the median, not the best round
    assert "0 of 1 met, 1 missed" in out.out


def test_a_claim_met_in_most_rounds_passes_but_is_marked_fragile(monkeypatch, capsys):
    lessons = [_script(*[[_claim(v)] for v in (2.3, 1.9, 2.2)])]
    code, out = _run(monkeypatch, capsys, lessons=lessons)
    assert code == 0 and "fragile: 2/3 rounds met" in out.out
    code, out = _run(monkeypatch, capsys, lessons=[_script(*[[_claim(v)] for v in (2.3, 1.9, 2.2)])], strict=True)
    assert code == 1


def test_a_ratio_above_its_physical_limit_is_suspect_never_a_finding(monkeypatch, capsys):
    row = _claim(2.03, goal=1.7, limit=2.0)
    assert row.suspect and row.failed and bench.exit_code([row]) == 1
    assert row.measured_cell() == "(2.03 ×) suspect"
    assert row.goal_cell().startswith("? suspect: above the limit 2 ×") and "✓" not in row.goal_cell()
    assert not _claim(1.95, goal=1.7, limit=2.0).suspect and not _claim(2.0, goal=1.7, limit=2.0).suspect
    code, out = _run(monkeypatch, capsys, lessons=[_script(*[[_claim(v, 1.7, limit=2.0)] for v in (2.05, 2.1, 1.9)])])
    text = " ".join(out.out.split())
    assert code == 1 and "(2.05 ×) suspect" in text and "in 2 of 3 rounds (goal ≥ 1.7×)" in text and "1 suspect" in text


def test_informational_rows_never_decide_the_exit_code():
    assert bench.exit_code([BenchRow("ratio", 0.5, "×", lesson="04"), BenchRow("x", 9, "%", "≤ 5 %", False, lesson="toolkit"),
                            BenchRow("x", 1, "×", "≥ 2×", False, kind="info", lesson="05")]) == 0
    assert bench.exit_code([BenchRow("x", 1, "×", "≥ 2×", False, lesson="05")]) == 1


def test_rounds_merge_to_the_median_round_even_when_wording_quotes_figures():
    rounds = [[BenchRow(f"hit vs miss (miss {m} ms)", v, "×", "≥ 10×", v >= 10, lesson="03"), BenchRow("n", 1, "q", lesson="03")]
              for m, v in ((40, 28.0), (50, 9.0), (45, 31.0))]
    hit, n = bench.merge_rounds(rounds)
    assert hit.value == 28.0 and hit.effect == "hit vs miss (miss 40 ms)" and hit.met is True
    assert hit.rounds == [28.0, 9.0, 31.0] and hit.round_met == [True, False, True] and not hit.robust
    assert n.rounds == [1, 1, 1] and n.robust
    uneven = bench.merge_rounds([[BenchRow("a 1", 1, "×", lesson="03")], [BenchRow("a 2", 3, "×", lesson="03"),
                                                                    BenchRow("b", 5, "×", lesson="03")]])
    assert [(r.effect, r.rounds) for r in uneven] == [("a 1", [1, 3]), ("b", [])]


@pytest.mark.parametrize("row, level", [
    (BenchRow("GET /users queries, 100 users", 101, "queries", lesson="02"), "SQL"),
    (BenchRow("OFFSET vs keyset, the SQL alone at depth 999,980", 35, "×", lesson="04"), "SQL"),
    (BenchRow("OFFSET vs keyset, GET page of 20 at depth 999,980", 11, "×", lesson="04"), "endpoint"),
    (BenchRow("bookshop fixed, same load", 359, "req/s", lesson="09"), "server"),
    (BenchRow("CPU-bound throughput, 2 uvicorn workers vs 1", 1.7, "×", lesson="01"), "server"),
    (BenchRow("email lookup, no index / index (raw sqlite3)", 140, "×", lesson="05"), "SQL"),
    (BenchRow("[sqlite] same walk by (created_at, id): distinct seen", 1000, "items", lesson="04"), "endpoint"),
    (BenchRow("[sqlite] build the 300,000-row items table", 2.1, "s", lesson="04"), "SQL"),
    (BenchRow("OFFSET vs keyset, the SQL alone for a page of 20", 35, "×", lesson="04"), "SQL"),
    (BenchRow("email lookup", 140, "×", level="SQL", lesson="05"), "SQL"),
    (BenchRow("OFFSET vs keyset, GET page", 11, "×", level="SQL", lesson="04"), "SQL"),
])
def test_rows_name_their_level(row, level):
    assert row.shown_level == level


def test_bench_table_shows_level_median_spread_and_verdict():
    row = bench.merge_rounds([[_claim(v, level="endpoint")] for v in (2.5, 2.2, 2.9)])[0]
    table = bench.bench_table([row])
    header, _, line = table.splitlines()
    assert header.split()[:6] == ["lesson", "level", "effect", "measured", "rounds", "goal"]
    assert line.split() == ["01", "endpoint", "speed-up", "2.5", "×", "2.2–2.9", "×3", "✓", "≥", "2×"]


# ------------------------------------------------------------------ nothing stray above the table


def _chatty():
    import logging
    import subprocess
    import sys
    import warnings

    logging.getLogger("course_lib.lessons.blog_app").warning("readiness: database check failed: TimeoutError")
    warnings.warn("this API is deprecated", DeprecationWarning, stacklevel=1)
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('[IPKernelApp] WARNING | Kernel is running "
                    "over TCP without encryption. All communication is sent in plain text\\n')"], check=True)
    print("stray", file=sys.stderr)
    print("chatter on stdout")
    logging.getLogger("course_lib").error("the database refused the connection")
    return [_claim(3.0)]


def test_warnings_logs_and_child_stderr_are_captured_and_errors_become_notes(monkeypatch, capfd):
    monkeypatch.setattr(bench, "TOOLKIT_SECTIONS", [])
    monkeypatch.setattr(bench, "_lesson_sections", lambda only=None: [("06", _chatty)])
    code = bench.run_bench(rounds=1)
    out, err = capfd.readouterr()
    assert code == 0 and err == ""
    assert out.startswith("lesson")  # the table is the first line
    assert "without encryption" not in out.split("quieted")[0] and "readiness" not in out.split("quieted")[0]
    assert "✓ ≥ 2× [1]" in out
    assert "[1] 01 speed-up: course_lib: the database refused the connection; stray" in out
    assert "quieted while measuring: 4 warning line(s)" in out


def test_a_bench_that_raises_is_a_failing_row_with_the_error(monkeypatch, capfd):
    def broken():
        raise RuntimeError("the table is missing.\nIts output:\n  refused")

    monkeypatch.setattr(bench, "TOOLKIT_SECTIONS", [])
    monkeypatch.setattr(bench, "_lesson_sections", lambda only=None: [("05", broken), ("06", lambda: [_claim(3)])])
    code = bench.run_bench(rounds=2)
    out, err = capfd.readouterr()
    assert code == 1 and err == "" and "Traceback" not in out
    assert "bench failed: RuntimeError: the table is missing. Its output: refused" in out and "✗ runs" in out
    assert "RuntimeError at test_bench.py:" in out


def test_a_round_the_lesson_calls_inconclusive_gives_no_verdict(monkeypatch, capsys):
    busy = "other programs used 1.3 of 2 cores"
    rounds = [[_claim(1.1, 1.35, inconclusive=busy)], [_claim(1.6, 1.35)], [_claim(1.5, 1.35)]]
    row = bench.merge_rounds(rounds)[0]
    assert row.met is True and row.value == 1.5 and row.round_met == [True, True] and not row.inconclusive
    assert "1 inconclusive round(s) set aside" in row.goal_cell() and bench.exit_code([row]) == 0
    code, out = _run(monkeypatch, capsys, lessons=[_script(*[[_claim(v, 1.35, inconclusive=busy)] for v in (1.1, 1.2, 1.0)])])
    text = " ".join(out.out.split())
    assert code == 0 and f"? inconclusive: {busy} (goal ≥ 1.35×)" in text and "1 inconclusive" in text
    code, _ = _run(monkeypatch, capsys, lessons=[_script(*[[_claim(v, 1.35, inconclusive=busy)] for v in (1.1, 1.2, 1.0)])],
                   strict=True)
    assert code == 1
    missed = bench.merge_rounds([[_claim(1.1, 1.35, inconclusive=busy)], [_claim(1.2, 1.35)], [_claim(1.3, 1.35)]])[0]
    assert missed.failed and bench.exit_code([missed]) == 1  # the quiet rounds missed: a real miss
