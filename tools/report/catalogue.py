"""The scenario catalogue (docs/CATALOGUE.md): one row per scenario, grouped by package."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

__all__ = ["Scenario", "parse_catalogue"]

_SECTION = re.compile(r"^## (?P<package>\w+) \(team: (?P<team>[\w-]+)\)")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One catalogue row: its ID, title, owning package and team, and required levels."""

    id: str  # "001#12", "003:multi-tenant config isolation"
    title: str
    package: str  # "auth_tests"
    team: str  # "identity"
    levels: tuple[str, ...]  # ("L2", "L3"); "perf" and other words are dropped


def parse_catalogue(path: Path) -> list[Scenario]:
    """Every scenario row under a `## <package> (team: <team>)` heading.

    A table row before any such heading raises ValueError: its owner would be unknown.
    """
    scenarios: list[Scenario] = []
    package = team = ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if match := _SECTION.match(line):
            package, team = match["package"], match["team"]
            continue
        if not line.startswith("|") or line.startswith(("|---", "| ID ")):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not package:
            raise ValueError(f"{path}:{number}: scenario row before any '## <package>' heading")
        if len(cells) != 3:
            raise ValueError(f"{path}:{number}: expected 3 cells (ID, scenario, levels)")
        levels = tuple(word for word in cells[2].split() if re.fullmatch(r"L\d", word))
        scenarios.append(Scenario(cells[0], cells[1], package, team, levels))
    return scenarios
