"""A row of `python -m course_lib bench`: one measured effect, its level, goal and verdict (what `bench()` returns)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

__all__ = ["BenchRow", "LEVELS"]

LEVELS = ("SQL", "endpoint", "server", "toolkit")
"""Where a row was measured: the SQL alone, an endpoint called in-process, a real server over HTTP, the toolkit."""


def _number(value: float) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


@dataclass
class BenchRow:
    """One measured effect: what, the figure, its unit, the goal it is held to, and whether it met it.

    `lesson` is stamped by the bench runner from the catalogue (a lesson's `bench()` leaves it out; "toolkit" for
    the course's own tools). Optional: `level` (where it was measured, one of LEVELS), `kind` ("claim", "toolkit"
    or "info"; by default a row with a verdict is a claim, a "toolkit" lesson's row is a toolkit row), `limit` (a physical ceiling: a value above
    it is suspect), `rounds`/`round_met` (each round's value and verdict; `value` is their median), `note`, and
    `inconclusive` (why this measurement cannot verify the claim now, e.g. "other programs used 1.3 of 2 cores":
    such a round gives no verdict; a claim with no conclusive round fails only under --strict).
    """

    effect: str
    value: float
    unit: str
    goal: str = ""
    met: bool | None = None
    level: str = ""
    kind: str = ""
    limit: float | None = None
    rounds: list[float] = field(default_factory=list)
    round_met: list[bool] = field(default_factory=list)
    note: str = ""
    inconclusive: str = ""
    lesson: str = ""

    def cells(self) -> tuple[str, ...]:
        """The row as table cells: lesson, effect, measured value, verdict and goal."""
        value = _number(self.value)
        verdict = {True: "✓", False: "✗", None: ""}[self.met]
        return (self.lesson, self.effect, f"{value} {self.unit}".strip(), f"{verdict} {self.goal}".strip())

    @property
    def role(self) -> str:
        """"claim", "toolkit" or "info": only claims decide the exit code."""
        if self.kind:
            return self.kind
        if self.lesson == "toolkit":
            return "toolkit"
        return "claim" if self.met is not None else "info"

    @property
    def shown_level(self) -> str:
        """The level the row names, or one read from its wording when the lesson did not say."""
        return self.level or _guess_level(self)

    @property
    def suspect(self) -> bool:
        """True when the value is above the physical limit the row names (a measuring error, not a finding)."""
        return self.limit is not None and not math.isnan(self.value) and self.value > self.limit * (1 + 1e-9)

    @property
    def robust(self) -> bool:
        """True when every round gave the same verdict (or there was one round)."""
        return len(set(self.round_met)) <= 1

    @property
    def failed(self) -> bool:
        """A conclusive claim that missed its goal (in most rounds) or whose figure is suspect."""
        return self.role == "claim" and not self.inconclusive and (self.met is False or self.suspect)

    def measured_cell(self) -> str:
        """The value with its unit; a suspect value is shown in parentheses, never as a finding."""
        text = f"{_number(self.value)} {self.unit}".strip()
        return f"({text}) suspect" if self.suspect else text

    def spread_cell(self) -> str:
        """The rounds' range, e.g. "1.6–1.8 ×3", or "" for a single round."""
        if len(self.rounds) < 2:
            return ""
        return f"{_number(min(self.rounds))}–{_number(max(self.rounds))} ×{len(self.rounds)}"

    def goal_cell(self) -> str:
        """Verdict and goal, with what the verdict means for the exit code."""
        if self.inconclusive:
            return f"? inconclusive: {self.inconclusive}" + (f" (goal {self.goal})" if self.goal else "")
        if self.suspect:
            above = sum(r > self.limit for r in self.rounds) if self.rounds else 1  # type: ignore[operator]
            text = (f"? suspect: above the limit {_number(self.limit or 0)} {self.unit}".rstrip()
                    + (f" in {above} of {len(self.rounds)} rounds" if self.rounds else ""))
            return text + (f" (goal {self.goal})" if self.goal else "")
        if self.met is None:
            return self.goal
        text = f"{'✓' if self.met else '✗'} {self.goal}".strip()
        if not self.robust:
            text += f" (fragile: {sum(self.round_met)}/{len(self.round_met)} rounds met)"
        if len(self.rounds) > len(self.round_met) > 0 and self.role == "claim":
            text += f" ({len(self.rounds) - len(self.round_met)} inconclusive round(s) set aside)"
        if self.role != "claim":
            text += f" ({self.role}, not graded)"
        return text


_SQL_WORDS = re.compile(r"\bSQL\b|\braw \w|\bORM\b|\bquer(y|ies)\b|\bSELECT\b|\binsert\b|\bindex|\btable\b", re.I)
_ENDPOINT_WORDS = re.compile(r"\bGET\b|(^|\s)/\w|\bendpoint\b|\bin-process\b|\bmiddleware\b|\bASGI\b|\basync def\b"
                             r"|\bpages?\b|\bwalk\b|\blist\b|\bgzip\b", re.I)
_SERVER_WORDS = re.compile(r"\buvicorn\b|\bgunicorn\b|\bthroughput\b|\bload\b", re.I)


def _guess_level(row: BenchRow) -> str:
    """A row's level read from its lesson, unit and wording (lessons may name it with `level=`)."""
    if row.lesson == "toolkit":
        return "toolkit"
    if row.unit == "queries" or re.search(r"\bSQL\b", row.effect):
        return "SQL"
    if row.unit == "req/s" or _SERVER_WORDS.search(row.effect):
        return "server"
    if _ENDPOINT_WORDS.search(row.effect):
        return "endpoint"
    if _SQL_WORDS.search(row.effect):
        return "SQL"
    return ""
