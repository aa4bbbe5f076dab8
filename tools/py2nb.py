"""Author a notebook as a jupytext py:percent file, write it as a clean .ipynb (dev only: needs `jupytext`).

    python tools/py2nb.py lesson.py notebooks/NN_name.ipynb     # write (or rewrite) a notebook
    python tools/py2nb.py notebooks/NN_name.ipynb lesson.py     # back to py:percent for editing

Written notebooks get the `python3` kernel, no jupytext metadata, no outputs, and stable cell ids
(`NN-not-1`, `NN-sol-2`, …: lesson number, folder, position) so that diffs stay small. Afterwards run
`python -m course_lib refresh-outputs` on it (for `# NBVAL_CHECK_OUTPUT` cells) and, for a solutions
notebook, `python -m course_lib build-exercises`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat

from course_lib.layout import KERNELSPEC, language_info


def to_notebook(source: Path, target: Path) -> None:
    """Write the py:percent `source` as a clean notebook at `target`."""
    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": language_info()}
    prefix = target.stem.split("_", 1)[0]
    for i, cell in enumerate(nb.cells, 1):
        cell.metadata.pop("lines_to_next_cell", None)
        cell.id = f"{prefix}-{target.parent.name[:3]}-{i}"
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.validate(nb)
    target.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")


def main() -> None:
    """py:percent → .ipynb, or .ipynb → py:percent, by the first argument's suffix."""
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    if source.suffix == ".ipynb":
        jupytext.write(nbformat.read(source, as_version=4), target, fmt="py:percent")
    else:
        to_notebook(source, target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
