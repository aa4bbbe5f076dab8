"""Tests import the reference answers from `sources/answers/` (the modules the build splices into solutions/)."""

from __future__ import annotations

import sys

from course_lib.layout import ROOT

if str(ROOT / "sources") not in sys.path:
    sys.path.insert(0, str(ROOT / "sources"))
