"""FastAPI Performance Lab: the toolkit every lesson imports (`from course_lib import *`)."""

from .client import app_client
from .db import Base, Comment, DemoDB, Post, User, make_demo_db
from .grading import Result, check, grade, hint
from .load import LoadResult, load_test
from .plots import plot_bars, plot_curve, plot_timings
from .queries import QueryLog, count_queries, simulated_latency
from .redis import get_redis
from .servers import Server, serve, usable_cores
from .timing import Comparison, Timing, compare, compare_sync, measure, measure_sync
from .widgets import live_panel, say

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
]
