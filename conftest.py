"""Test-wide setup (root conftest, so nbval's notebook runs get it too)."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile

# Progress goes to a throwaway folder, never the learner's home. Set at import time so that the
# kernels nbval starts inherit it too.
if "COURSE_LAB_HOME" not in os.environ:  # xdist workers inherit the controller's folder
    os.environ["COURSE_LAB_HOME"] = tempfile.mkdtemp(prefix="lab-progress-")
    atexit.register(shutil.rmtree, os.environ["COURSE_LAB_HOME"], ignore_errors=True)

# A shell without job control starts a background job (`./course test &`, nohup, some CI runners) with SIGINT
# ignored, and Python then keeps it ignored: Ctrl-C would never reach the tests of interrupts, here or in the
# processes they start. Give this process (each xdist worker runs this too) and its children Python's handler back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# Files whose tests need the machine's cores to themselves (real servers under load) or run several kernels at
# once: `./course test` runs them after the parallel phase, one at a time. A lesson says so in its catalogue line
# (course_lib/catalogue.py, `serial=`); single tests elsewhere carry @pytest.mark.serial themselves.
SERIAL_TOOLKIT = ("tests/test_audit.py", "tests/test_classroom.py")


# The parallel phase hands out whole files (`--dist loadfile`) in collection order (`--no-loadscope-reorder`): the
# costliest go first, so no worker starts a long file while the others run out of work. Seconds of one file's
# tests on 2 cores, measured 2026-12-01; a file not listed keeps its place after these.
HEAVY_FIRST = (
    "tests/test_l01_workers.py",  # 126 s
    "tests/test_l03_caching.py",  # 119 s
    "tests/test_notebooks.py",  # 98 s: every shipped exercise notebook graded
    "tests/test_browser.py",  # 98 s: JupyterLab in Chromium
    "tests/test_class_grading.py",  # 60-100 s, in one module fixture
    "tests/test_l04_pagination.py",  # 73 s
    "tests/test_l10_fix.py",  # 56 s
    "tests/test_catalogue.py",  # 52 s
    "tests/test_servers.py",  # 43 s
)


def pytest_collection_modifyitems(config, items):  # noqa: D103 - pytest hook
    import pytest

    from course_lib.dev import serial_keys

    keys = (*serial_keys(), *SERIAL_TOOLKIT)
    for item in items:
        if any(str(item.path).endswith(key) for key in keys):
            item.add_marker(pytest.mark.serial)

    def rank(item: pytest.Item) -> int:
        path = str(item.path)
        return next((n for n, key in enumerate(HEAVY_FIRST) if path.endswith(key)), len(HEAVY_FIRST))

    items.sort(key=rank)  # stable: a file's tests (and a notebook's cells) keep their order


def _retry_kernel_start() -> None:
    """Start nbval's kernels again when one dies before answering: under parallel load a kernel can lose a
    port it picked to another process in the second before it binds it (its stderr is discarded by nbval)."""
    try:
        import nbval.kernel
    except ImportError:
        return
    start = nbval.kernel.start_new_kernel

    def start_with_retries(*args, **kwargs):  # noqa: ANN002, ANN003
        for attempt in range(3):
            try:
                return start(*args, **kwargs)
            except RuntimeError as error:
                if "died before replying" not in str(error) or attempt == 2:
                    raise

    nbval.kernel.start_new_kernel = start_with_retries


_retry_kernel_start()
