"""FastAPI Performance Lab: the toolkit every lesson imports (`from course_lib import *`)."""

from importlib import import_module
from typing import Any

from .client import app_client
from .db import Base, Comment, DemoDB, Post, User, make_demo_db
from .grading import Result, check, grade, hint
from .load import LoadResult, load_test
from .queries import QueryLog, count_queries, simulated_latency
from .redis import get_redis
from .servers import Server, serve, usable_cores
from .timing import Comparison, Timing, compare, compare_sync, measure, measure_sync

__all__ = [
    "app_client",
    "Base", "Comment", "DemoDB", "Post", "User", "make_demo_db",
    "Result", "check", "grade", "hint",
    "LoadResult", "load_test",
    "plot_bars", "plot_curve", "plot_timings",
    "QueryLog", "count_queries", "simulated_latency",
    "get_redis",
    "Server", "serve", "usable_cores",
    "Comparison", "Timing", "compare", "compare_sync", "measure", "measure_sync",
    "live_panel", "say",
    "audit", "AuditReport",
]

# matplotlib, ipywidgets and IPython load on first use: a server subprocess that imports a lesson's
# app (`course_lib.lessons.…:app`) starts seconds faster without them
_LAZY = {"plot_bars": "plots", "plot_curve": "plots", "plot_timings": "plots", "live_panel": "widgets", "say": "widgets",
         "audit": "auditor", "AuditReport": "auditor"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
