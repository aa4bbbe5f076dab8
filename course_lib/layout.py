"""Where the course's folders are and the markers its notebooks use (light: no notebook library imported)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STARTER = "#> "
CHECKED = "NBVAL_CHECK_OUTPUT"
