"""Where the course's folders are and the markers its notebooks use (light: no notebook library imported)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STARTER = "#> "
CHECKED = "NBVAL_CHECK_OUTPUT"

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def language_info() -> dict[str, object]:
    """What ipykernel reports for this Python; stored whole, JupyterLab does not mark a notebook modified on open."""
    import platform

    return {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
            "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
            "pygments_lexer": "ipython3", "version": platform.python_version()}
