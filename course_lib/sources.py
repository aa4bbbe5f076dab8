"""Text sources of truth: lessons and solutions as jupytext py:percent files under `sources/`, built into notebooks.

    sources/notebooks/NN_name.py  ->  notebooks/NN_name.ipynb
    sources/solutions/NN_name.py  ->  solutions/NN_name.ipynb   (then `build-exercises` -> exercises/NN_name.ipynb)
    sources/answers/lNN_name.py      reference answers, importable by the tests, spliced into solutions

A source reviews as code; its notebook is built from it. The build is deterministic: notebook metadata from
`course_lib.layout`, cell ids from the lesson number, folder and position (`02-not-7`), no outputs except the ones
already stored in the target for `# NBVAL_CHECK_OUTPUT` cells (kept, matched by cell source, then by position
among those cells), so rebuilding an unchanged source rewrites nothing.

A code cell line `...  # --8<-- "answers/l07_settings.py:answer"` (pymdownx.snippets' syntax; the `...` is optional
and keeps the source valid Python where the answer is a whole block) is replaced, at its indentation, by the lines of
that module between `# --8<-- [start:answer]` and `# --8<-- [end:answer]`. Exporting a notebook back keeps such a
line when the notebook still holds exactly the spliced lines, and refuses otherwise.

Needs `jupytext` (the `dev` and `test` extras); the notebooks themselves never import this module.
"""

from __future__ import annotations

import copy
import re
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from .layout import CHECKED, KERNELSPEC, ROOT, language_info

__all__ = [
    "FOLDERS",
    "SourceError",
    "build_all",
    "build_notebook",
    "drifted",
    "export_all",
    "export_notebook",
    "notebook_path",
    "read_source",
    "render_notebook",
    "source_path",
]

FOLDERS = ("notebooks", "solutions")
FORMAT = "py:percent"
# every cell metadata key is written (tags, jupyter.source_hidden, collapsed, lab, ...); no notebook header
_TEXT_OPTIONS = {"cell_metadata_filter": "all", "notebook_metadata_filter": "-all"}
# `...  # --8<-- "answers/lNN_name.py:answer"`: the ellipsis (optional) keeps a source whose block is all answer valid
_SNIPPET = re.compile(r'^(?P<indent>[ \t]*)(?:\.\.\.[ \t]*)?# --8<-- "(?P<file>[^":]+):(?P<section>[\w.-]+)"[ \t]*$')
_START, _END = '# --8<-- [start:{}]', '# --8<-- [end:{}]'


class SourceError(ValueError):
    """A source that cannot be built, or a notebook that cannot be written as a source without loss."""


def _jupytext() -> Any:
    """The jupytext module, or a clear error saying how to install it."""
    try:
        import jupytext  # type: ignore[import-untyped,unused-ignore]
    except ImportError as error:  # pragma: no cover - jupytext is in the dev and test installs
        raise SourceError("building notebooks from sources needs jupytext: "
                          "`.venv/bin/python -m pip install -e '.[dev]'`") from error
    return jupytext


def source_path(ipynb: Path, root: Path = ROOT) -> Path:
    """The text source of `notebooks/NN_name.ipynb` or `solutions/NN_name.ipynb`."""
    return root / "sources" / ipynb.parent.name / f"{ipynb.stem}.py"


def notebook_path(py: Path, root: Path = ROOT) -> Path:
    """The notebook built from `sources/notebooks/NN_name.py` or `sources/solutions/NN_name.py`."""
    return root / py.parent.name / f"{py.stem}.ipynb"


def _sources_root(py: Path) -> Path:
    """The `sources/` folder a source lives in (snippet paths are relative to it)."""
    return py.resolve().parent.parent


# ------------------------------------------------------------------ snippets (reference answers spliced in)


def _section(module: Path, section: str) -> list[str]:
    """The lines of `module` between its start and end markers of `section`, dedented."""
    if not module.is_file():
        raise SourceError(f"snippet file {module} does not exist")
    lines = module.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == _START.format(section)]
    ends = [i for i, line in enumerate(lines) if line.strip() == _END.format(section)]
    if len(starts) != 1 or len(ends) != 1 or ends[0] <= starts[0]:
        raise SourceError(f"{module.name} needs exactly one '{_START.format(section)}' followed by one "
                          f"'{_END.format(section)}' (found {len(starts)} start, {len(ends)} end)")
    return textwrap.dedent("\n".join(lines[starts[0] + 1: ends[0]])).split("\n")


def _indented(lines: list[str], indent: str) -> list[str]:
    """`lines` at `indent`, blank lines left empty."""
    return [indent + line if line.strip() else "" for line in lines]


def _expand(source: str, base: Path) -> str:
    """A code cell's source with each snippet line replaced by the lines it names."""
    out: list[str] = []
    for line in source.split("\n"):
        match = _SNIPPET.match(line)
        if match:
            out += _indented(_section(base / match["file"], match["section"]), match["indent"])
        else:
            out.append(line)
    return "\n".join(out)


def _collapse(source: str, marker: str, base: Path) -> str | None:
    """`source` with the lines snippet `marker` splices put back as `marker`, or None if it does not hold them."""
    match = _SNIPPET.match(marker)
    if match is None:
        return None
    lines = source.split("\n")
    spliced = _indented(_section(base / match["file"], match["section"]), match["indent"])
    for i in range(len(lines) - len(spliced) + 1):
        if lines[i:i + len(spliced)] == spliced:
            return "\n".join(lines[:i] + [marker] + lines[i + len(spliced):])
    return None


# ------------------------------------------------------------------ reading and rendering


def _text_cells(text: str) -> list[NotebookNode]:
    """The cells of a py:percent text, without jupytext's layout metadata."""
    nb = _jupytext().reads(text, fmt=FORMAT)
    for cell in nb.cells:
        cell.metadata.pop("lines_to_next_cell", None)
    return list(nb.cells)


def read_source(py: Path) -> NotebookNode:
    """The clean notebook a source describes: snippets spliced, stable ids, layout metadata, no outputs."""
    if not py.is_file():
        raise SourceError(f"no source {py}")
    cells = _text_cells(py.read_text(encoding="utf-8"))
    prefix, folder = py.stem.split("_", 1)[0], py.parent.name[:3]
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": dict(KERNELSPEC), "language_info": language_info()})
    for i, cell in enumerate(cells, 1):
        if cell.cell_type == "code":
            source = _expand(cell.source, _sources_root(py))
            new = nbformat.v4.new_code_cell(source, metadata=cell.metadata)
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(cell.source, metadata=cell.metadata)
        else:
            new = nbformat.v4.new_raw_cell(cell.source, metadata=cell.metadata)
        new.id = f"{prefix}-{folder}-{i}"
        nb.cells.append(new)
    nbformat.validate(nb)
    return nb


def _keep_stored(nb: NotebookNode, stored: NotebookNode) -> None:
    """Copy into `nb` the outputs of `stored`'s NBVAL_CHECK_OUTPUT cells (by source, then by position among them),
    and its Python version (so a build on another Python does not rewrite every notebook)."""
    version = stored.metadata.get("language_info", {}).get("version")
    if version:
        nb.metadata["language_info"]["version"] = version
    old = [c for c in stored.cells if c.cell_type == "code" and CHECKED in c.source]
    new = [c for c in nb.cells if c.cell_type == "code" and CHECKED in c.source]
    taken: set[int] = set()
    chosen: dict[int, int] = {}
    for n, cell in enumerate(new):
        same = [o for o, c in enumerate(old) if o not in taken and c.source == cell.source]
        if same:
            chosen[n] = same[0]
            taken.add(same[0])
    for n in range(len(new)):
        if n not in chosen and n < len(old) and n not in taken:
            chosen[n] = n
            taken.add(n)
    for n, o in chosen.items():
        new[n].outputs = copy.deepcopy(old[o].get("outputs", []))
        new[n].execution_count = old[o].get("execution_count")


def _dumps(nb: NotebookNode) -> str:
    """A notebook's text, exactly as course_lib writes notebooks."""
    return nbformat.writes(nb) + "\n"


def render_notebook(py: Path, ipynb: Path | None = None) -> str:
    """The text `build_notebook(py, ipynb)` would write (outputs kept from `ipynb` when it exists)."""
    nb = read_source(py)
    if ipynb is not None and ipynb.is_file():
        _keep_stored(nb, nbformat.read(ipynb, as_version=4))
    return _dumps(nb)


def build_notebook(py: Path, ipynb: Path) -> bool:
    """Write `ipynb` from the source `py`, keeping its stored NBVAL_CHECK_OUTPUT outputs; True if it changed."""
    text = render_notebook(py, ipynb)
    if ipynb.is_file() and ipynb.read_text(encoding="utf-8") == text:
        return False
    ipynb.parent.mkdir(parents=True, exist_ok=True)
    ipynb.write_text(text, encoding="utf-8")
    return True


def _selected(paths: Iterable[Path], only: str | None) -> Iterator[Path]:
    """The paths of lesson `only` ("02" or "02_n_plus_one"), or all."""
    for path in sorted(paths):
        if only is None or path.stem == only or path.stem.startswith(f"{only}_"):
            yield path


def build_all(only: str | None = None, root: Path = ROOT) -> list[Path]:
    """Build every notebook (or lesson `only`'s) from its source; return the notebooks that changed."""
    changed = []
    for folder in FOLDERS:
        for py in _selected((root / "sources" / folder).glob("*.py"), only):
            target = notebook_path(py, root)
            if build_notebook(py, target):
                changed.append(target)
    return changed


# ------------------------------------------------------------------ exporting (notebook -> source)


def _described(cell: NotebookNode) -> tuple[str, str, dict[str, Any], Any]:
    """What must survive a round trip: type, source, metadata (and attachments, which text cannot hold)."""
    return cell.cell_type, cell.source, dict(cell.metadata), cell.get("attachments")


_VOLATILE = ("execution", "ExecuteTime")  # per-run timings in cell metadata, never part of a source
_CELL_LINE = re.compile(r"^\s*# (%%|In\[)")


def _why_lossy(cell: NotebookNode) -> str:
    """Why a cell would not come back identical from py:percent text, and what to change in the notebook."""
    if cell.get("attachments"):
        return "it has attachments (pasted images), which text cannot hold: link the image file instead"
    for n, line in enumerate(cell.source.split("\n"), 1):
        if cell.cell_type == "code" and _CELL_LINE.match(line):
            return f"its line {n} starts like a cell marker ('# %%' or '# In['), which starts a new cell: reword it"
    if cell.cell_type == "code" and cell.source != cell.source.rstrip("\n"):
        return "it ends with a newline, which py:percent cannot keep: remove the trailing blank line(s)"
    return "jupytext reads it back differently"


def export_notebook(ipynb: Path, py: Path) -> bool:
    """Write the notebook `ipynb` as the py:percent source `py` (keeping `py`'s snippet lines); True if it changed.

    Refuses (SourceError) a notebook whose cells would not come back identical from the text. Run timings that
    JupyterLab records in cell metadata (`execution`, `ExecuteTime`) are left out, as `clean_notebook` drops them."""
    nb = nbformat.read(ipynb, as_version=4)
    for cell in nb.cells:
        for key in _VOLATILE:
            cell.metadata.pop(key, None)
    text_nb = nbformat.v4.new_notebook(metadata={"jupytext": dict(_TEXT_OPTIONS)})
    text_nb.cells = [copy.deepcopy(c) for c in nb.cells]
    for cell in text_nb.cells:
        cell.pop("outputs", None)
        cell.pop("execution_count", None)
    text = _jupytext().writes(text_nb, fmt=FORMAT)
    back = _text_cells(text)
    for i, cell in enumerate(nb.cells, 1):
        again = back[i - 1] if i <= len(back) else None
        if again is None or _described(cell) != _described(again):
            raise SourceError(f"{ipynb.name} cell {i} ({cell.cell_type}) does not survive py:percent: "
                              f"{_why_lossy(cell)}; {cell.source[:60]!r} would come back as "
                              f"{(again.source if again is not None else '')[:60]!r}")
    if len(back) != len(nb.cells):
        raise SourceError(f"{ipynb.name} has {len(nb.cells)} cells but its py:percent text reads back as "
                          f"{len(back)} (a line starting '# %%' inside a cell?)")
    if py.is_file():  # keep the snippet lines the current source has
        snippets = [line for line in py.read_text(encoding="utf-8").split("\n") if _SNIPPET.match(line)]
        for cell in text_nb.cells if snippets else ():
            for marker in list(snippets) if cell.cell_type == "code" else ():
                collapsed = _collapse(cell.source, marker, _sources_root(py))
                if collapsed is not None:
                    cell.source = collapsed
                    snippets.remove(marker)
        if snippets:
            raise SourceError(f"{ipynb} no longer holds the lines its source splices with {snippets[0].strip()} "
                              "(edited in the notebook?): make that edit in the module under sources/, build, "
                              "then export again")
        text = _jupytext().writes(text_nb, fmt=FORMAT)
    if py.is_file() and py.read_text(encoding="utf-8") == text:
        return False
    py.parent.mkdir(parents=True, exist_ok=True)
    py.write_text(text, encoding="utf-8")
    return True


def export_all(only: str | None = None, root: Path = ROOT, *, force: bool = False) -> list[Path]:
    """Write each lesson and solutions notebook (or lesson `only`'s) that differs from its source back to that source;
    return the sources changed. A source edited after its notebook is left alone (SourceError naming it, after the
    others are written) unless `force`: build it instead, or it would lose that edit."""
    changed: list[Path] = []
    newer: list[str] = []
    for folder in FOLDERS:
        for ipynb in _selected((root / folder).glob("*.ipynb"), only):
            py = source_path(ipynb, root)
            if py.is_file():
                try:
                    same = render_notebook(py, ipynb) == ipynb.read_text(encoding="utf-8")
                except SourceError:
                    same = False
                if same:  # already its source's build: leave the source's own layout alone
                    continue
                if not force and py.stat().st_mtime_ns > ipynb.stat().st_mtime_ns:
                    newer.append(str(py.relative_to(root)))
                    continue
            if export_notebook(ipynb, py):
                changed.append(py)
    if newer:
        raise SourceError(f"not exported, edited after their notebooks: {', '.join(newer)}: build them "
                          "(`python -m course_lib dev build NN`), or export with force=True to discard those edits"
                          + (f" (exported: {', '.join(str(p.relative_to(root)) for p in changed)})" if changed else ""))
    return changed


# ------------------------------------------------------------------ drift


@dataclass
class _Cell:
    """A cell as drift reports compare it."""

    kind: str
    source: str
    metadata: dict[str, Any]
    id: str


def _cells(text: str) -> list[_Cell]:
    nb = nbformat.reads(text, as_version=4)
    return [_Cell(c.cell_type, c.source, dict(c.metadata), c.get("id", "")) for c in nb.cells]


def _short(text: str, limit: int = 70) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _difference(built: str, stored: str) -> str:
    """Where a stored notebook first differs from what its source builds, in words."""
    new, old = _cells(built), _cells(stored)
    for i, (b, s) in enumerate(zip(new, old, strict=False), 1):
        if b.kind != s.kind:
            return f"cell {i} is {s.kind} in the notebook but {b.kind} in the source"
        if b.source != s.source:
            b_lines, s_lines = b.source.split("\n"), s.source.split("\n")
            for n, (bl, sl) in enumerate(zip(b_lines, s_lines, strict=False), 1):
                if bl != sl:
                    return (f"cell {i} ({b.kind}), line {n}: the notebook has {_short(sl)} "
                            f"where the source builds {_short(bl)}")
            return (f"cell {i} ({b.kind}) has {len(s_lines)} lines in the notebook and {len(b_lines)} "
                    "as the source builds it")
        if b.metadata != s.metadata:
            return f"cell {i} ({b.kind}) metadata: the notebook has {s.metadata} where the source builds {b.metadata}"
        if b.id != s.id:
            return f"cell {i} has id {s.id!r} where the source builds {b.id!r}"
    if len(new) != len(old):
        return f"the notebook has {len(old)} cells where the source builds {len(new)}"
    return "the cells agree but the file does not (notebook metadata or formatting not written by the build)"


def drifted(root: Path = ROOT) -> list[str]:
    """One sentence per lesson or solutions notebook that is not exactly the build of its source (empty: none)."""
    problems: list[str] = []
    for folder in FOLDERS:
        notebooks = {p.stem: p for p in (root / folder).glob("*.ipynb")}
        sources = {p.stem: p for p in (root / "sources" / folder).glob("*.py")}
        for stem in sorted(notebooks.keys() | sources.keys()):
            ipynb, py = root / folder / f"{stem}.ipynb", root / "sources" / folder / f"{stem}.py"
            if stem not in sources:
                problems.append(f"{folder}/{stem}.ipynb has no text source sources/{folder}/{stem}.py: "
                                "create it once with course_lib.sources.export_notebook")
                continue
            if stem not in notebooks:
                problems.append(f"sources/{folder}/{stem}.py was never built: {folder}/{stem}.ipynb is missing "
                                f"(`python -m course_lib dev build {stem.split('_', 1)[0]}`)")
                continue
            try:
                built = render_notebook(py, ipynb)
            except (SourceError, ValueError, nbformat.ValidationError) as error:
                problems.append(f"sources/{folder}/{stem}.py does not build: {error}")
                continue
            stored = ipynb.read_text(encoding="utf-8")
            if built != stored:
                number = stem.split("_", 1)[0]
                problems.append(f"{folder}/{stem}.ipynb differs from sources/{folder}/{stem}.py: "
                                f"{_difference(built, stored)} (build it from the source: `python -m course_lib "
                                f"dev build {number}`; or, if the notebook is the newer one, export it: "
                                f"`python -c \"from course_lib.sources import export_all; export_all('{number}')\"`)")
    return problems
