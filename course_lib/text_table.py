"""Plain-text tables for the terminal: progress, grades, the audit and the benchmark."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Sequence

__all__ = ["text_table"]


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], wrap_last: int = 70) -> str:
    """A plain-text table whose last column wraps at `wrap_last` characters."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers[:-1])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers[:-1], widths, strict=True)) + "  " + headers[-1]]
    lines.append("-" * min(shutil.get_terminal_size((120, 20)).columns, sum(widths) + 2 * len(widths) + wrap_last))
    for row in rows:
        last = textwrap.wrap(row[-1], wrap_last) or [""]
        lines.append("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + last[0])
        lines += [" " * (sum(widths) + 2 * len(widths)) + more for more in last[1:]]
    return "\n".join(lines)
