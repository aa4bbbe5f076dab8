"""Test-wide setup (root conftest, so nbval's notebook runs get it too)."""

from __future__ import annotations

import os
import tempfile

# Progress goes to a throwaway folder, never the learner's home. Set at import time so that the
# kernels nbval starts inherit it too.
os.environ.setdefault("COURSE_LAB_HOME", tempfile.mkdtemp(prefix="lab-progress-"))
