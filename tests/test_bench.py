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
    assert BenchRow("02", "queries", 2, "queries", "≤ 2", True).cells() == ("02", "queries", "2 queries", "✓ ≤ 2")
    assert BenchRow("01", "ratio", 1.234, "×", "≥ 1.5×", False).cells()[2:] == ("1.23 ×", "✗ ≥ 1.5×")
    assert BenchRow("04", "rows", 300_000, "rows").cells()[2:] == ("300,000 rows", "")


def test_postgres_column_measures_each_database_and_joins_by_effect(monkeypatch):
    def fake(only=None):
        db = "postgresql" if os.environ.get("DATABASE_URL") else "sqlite"
        value = 3.0 if db == "sqlite" else 7.0
        return [BenchRow(only, f"[{db}] ratio", value, "×", "≥ 2×", True), BenchRow(only, f"[{db}] {db} only", 1, "s")]

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
