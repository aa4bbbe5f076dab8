"""The sample apps (blog_app, bookshop) stand on the field's libraries alone: no module imports the course, blog_app's
tables are the course's demo schema, and each app's own tests pass in a copy of its folder outside the repo."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from course_lib.layout import ROOT

LESSONS = ROOT / "course_lib" / "lessons"
SAMPLE_APPS = {"blog_app": LESSONS / "blog_app", "bookshop": LESSONS / "bookshop"}
FORBIDDEN = "course_lib"


# ---------------------------------------------------------------- "imports nothing from the course", by ast


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    """The dotted name of `path` inside the package at `root` (named after its folder); True for an __init__.py."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    """The absolute module a `from … import` names; None when a relative import climbs above the top package."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 >= len(package):
        return None
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imported_by_string(node: ast.Call) -> str | None:
    """`importlib.import_module("x")`, `import_module("x")` or `__import__("x")`: the constant module name."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def course_imports(root: Path) -> list[str]:
    """Every import in the package at `root` that reaches the course (`course_lib`) or climbs out of the package,
    as `file:line: what` (empty: the package stands alone). The package is parsed, never imported."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module, is_package = _module_name(path, root)
        where = f"{root.name}/{path.relative_to(root)}"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _absolute(node, module, is_package)
                if target is None:
                    found.append(f"{where}:{node.lineno}: `from {'.' * node.level}{node.module or ''} import …` "
                                 f"climbs out of {root.name}/ (into the course around it)")
                    continue
                names = [target]
            elif isinstance(node, ast.Call):
                names = [name] if (name := _imported_by_string(node)) else []
            line = getattr(node, "lineno", 0)
            found.extend(f"{where}:{line}: imports {name}" for name in names
                         if name.split(".")[0] == FORBIDDEN)
    return found


@pytest.mark.parametrize("name", sorted(SAMPLE_APPS))
def test_sample_app_imports_nothing_from_the_course(name: str) -> None:
    """Every module of the sample app, parsed: no import of course_lib, absolute, relative or by string."""
    root = SAMPLE_APPS[name]
    assert len(list(root.rglob("*.py"))) >= 5  # the package is there (a moved folder must not pass vacuously)
    found = course_imports(root)
    assert not found, f"{name} must stand on FastAPI, SQLAlchemy & co. alone; it imports the course:\n" + \
        "\n".join(found)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    """A throwaway package `shop/` with these files (relative path → source)."""
    root = tmp_path / "shop"
    for relative, source in {"__init__.py": "", "sub/__init__.py": "", **files}.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(source)
    return root


@pytest.mark.parametrize("relative, source, says", [
    ("main.py", "import course_lib\n", "imports course_lib"),
    ("main.py", "import os, course_lib.db as db\n", "imports course_lib.db"),
    ("main.py", "from course_lib.redis import get_redis\n", "imports course_lib.redis"),
    ("main.py", "from course_lib import app_client\n", "imports course_lib"),
    ("sub/deps.py", "def f():\n    from course_lib.client import app_client\n", "sub/deps.py:2: imports course_lib"),
    ("main.py", "from ..db import make_demo_db\n", "climbs out of shop/"),
    ("sub/deps.py", "from ...client import app_client\n", "climbs out of shop/"),
    ("__init__.py", "from .. import db\n", "climbs out of shop/"),
    ("main.py", "import importlib\nredis = importlib.import_module('course_lib.redis')\n", "imports course_lib.redis"),
    ("main.py", "lab = __import__('course_lib')\n", "imports course_lib"),
])
def test_import_scanner_finds_each_way_into_the_course(tmp_path: Path, relative: str, source: str, says: str) -> None:
    """Absolute, aliased, nested, relative-out-of-the-package and by-string imports of the course are all found."""
    found = course_imports(_package(tmp_path, {relative: source}))
    assert len(found) == 1 and says in found[0], found


def test_import_scanner_accepts_imports_inside_the_package(tmp_path: Path) -> None:
    """Relative imports within the package and the field's libraries are fine, however written."""
    root = _package(tmp_path, {
        "main.py": "from . import sub\nfrom .sub import deps\nimport fastapi, sqlalchemy.orm\n"
                   "from fastapi import FastAPI\n",
        "sub/deps.py": "from ..main import FastAPI\nfrom .. import main\nfrom . import other\nimport importlib\n"
                       "x = importlib.import_module('json')\ncourse_lib_name = 'course_lib'\n",
        "sub/other.py": "from shop.sub import deps\n",
    })
    assert course_imports(root) == []


# ---------------------------------------------------------------- blog_app's tables are the demo schema


def _ddl(metadata: MetaData) -> dict[str, list[str]]:
    """Each table's CREATE TABLE and CREATE INDEX statements, for SQLite and for PostgreSQL."""
    return {table.name: [str(CreateTable(table).compile(dialect=dialect)).strip() for dialect in
                         (sqlite.dialect(), postgresql.dialect())]
            + sorted(str(CreateIndex(index).compile(dialect=sqlite.dialect())) for index in table.indexes)
            for table in metadata.sorted_tables}


def test_blog_app_tables_are_the_course_demo_schema() -> None:
    """Same tables, columns, types, keys and indexes: the course seeds databases the app reads, and the app's
    create_tables makes databases the course's lessons could seed."""
    from course_lib.db import Base as CourseBase
    from course_lib.lessons.blog_app.models import Base as AppBase

    course, app = _ddl(CourseBase.metadata), _ddl(AppBase.metadata)
    assert sorted(app) == sorted(course) == ["comments", "posts", "users"]
    for table in course:
        assert app[table] == course[table], f"blog_app's {table} differs from the demo schema's"


# ---------------------------------------------------------------- copied out of the repo, the tests still pass


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A folder outside the repo holding a `course_lib` that refuses to be imported (any import of the course fails)."""
    assert not tmp_path.resolve().is_relative_to(ROOT)
    shadow = tmp_path / FORBIDDEN
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('a sample app copied out of the course imported it')\n")
    yield tmp_path


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run with the course's venv Python, in `cwd`, with no PYTHONPATH (the repo is not on the path)."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    return subprocess.run([sys.executable, *command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.parametrize("name, tests", [("blog_app", 4), ("bookshop", 5)])
def test_copied_app_runs_its_own_tests_outside_the_repo(outside: Path, name: str, tests: int) -> None:
    """Copy the app's folder alone to a temporary folder and run pytest from inside the copy: its own tests pass."""
    refused = _run(["-c", "import course_lib"], outside)
    assert refused.returncode != 0 and "copied out of the course" in refused.stderr  # the shadow is what loads
    shutil.copytree(SAMPLE_APPS[name], outside / name, ignore=shutil.ignore_patterns("__pycache__"))
    run = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--color=no"], outside / name)
    assert run.returncode == 0 and f"{tests} passed" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]
