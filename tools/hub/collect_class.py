"""Collect a class's exercise notebooks from the learners' home folders into one private folder per learner, ready
for `python -m course_lib grade --class DEST`.

    sudo python tools/hub/collect_class.py '/home/jupyter-*' /srv/grading/submissions      # The Littlest JupyterHub
    sudo python tools/hub/collect_class.py '/mnt/homes/*' /srv/grading/submissions         # Z2JH volumes mounted

Copies only regular files `exercises/*.ipynb` (a symlink is skipped: a learner could point one at a file only you
can read), up to 64 MB each, never follows links, and makes DEST and every folder in it readable by you only."""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import stat
import sys
from pathlib import Path

MAX_BYTES = 64 * 2**20
_NAME = re.compile(r"[^A-Za-z0-9_.@-]")


def learner_name(home: Path, strip: str = "jupyter-") -> str:
    """The learner's name from their home folder's name (TLJH: /home/jupyter-<name>), made safe for a folder."""
    name = home.name.removeprefix(strip)
    return _NAME.sub("_", name).lstrip(".") or "_"


def collect(homes: list[Path], dest: Path) -> dict[str, list[str]]:
    """Copy each home's exercises/*.ipynb (regular files only) to dest/<learner>/; return learner → skipped files."""
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o700)
    skipped: dict[str, list[str]] = {}
    for home in homes:
        name = learner_name(home)
        target = dest / name
        target.mkdir(mode=0o700, exist_ok=True)
        notes = skipped.setdefault(name, [])
        folder = home / "exercises"
        if folder.is_symlink() or not folder.is_dir():
            notes.append("exercises/ is missing or a link")
            continue
        for path in sorted(folder.glob("*.ipynb")):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:  # a symlink (ELOOP) or unreadable
                notes.append(f"{path.name}: not a regular file")
                continue
            with os.fdopen(fd, "rb") as source:
                info = os.fstat(source.fileno())
                if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_BYTES:
                    notes.append(f"{path.name}: not a regular file of at most 64 MB")
                    continue
                out = target / path.name
                with open(out, "wb") as copy:
                    shutil.copyfileobj(source, copy)
                out.chmod(0o600)
    return skipped


def main(argv: list[str] | None = None) -> int:
    """Collect from the homes matching a pattern into DEST; print what was skipped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("homes", help="a glob pattern of home folders, e.g. '/home/jupyter-*'")
    parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    homes = [Path(h) for h in sorted(glob.glob(args.homes)) if Path(h).is_dir() and not Path(h).is_symlink()]
    skipped = collect(homes, args.dest)
    for name, notes in skipped.items():
        for note in notes:
            print(f"{name}: skipped {note}")
    print(f"collected {len(homes)} learner(s) into {args.dest}; grade with: "
          f"python -m course_lib grade --class {args.dest} --csv grades.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
