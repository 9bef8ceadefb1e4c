"""Test results, catalogue and flake records aggregated per team and per scenario.

MRR protected: a scenario protects, per segment, the largest `bvj(mrr=...)` among its
passing tests of that segment (not a sum over tests: ten tests of one scenario protect
the same revenue once). A team's MRR is the sum over its scenarios. Tests whose scenario is
not in the catalogue count under their own scenario ID for their package's team.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from tools.report.catalogue import Scenario
from tools.report.flakes import FlakeRecord
from tools.report.junit import TestResult

__all__ = ["LEVELS", "Report", "ScenarioRow", "TeamRow", "build_report"]

LEVELS = ("L2", "L3", "L4")
FAILED = ("failed", "error")


@dataclasses.dataclass(frozen=True)
class ScenarioRow:
    """One scenario: its catalogue row (or none), and the results of its tests by level."""

    id: str
    title: str
    team: str
    required: tuple[str, ...]  # levels the catalogue asks for
    passed: dict[str, int]  # level -> passing tests
    failed: dict[str, int]  # level -> failing tests (failures and errors)
    mrr: dict[str, int]  # segment -> MRR protected (max over passing tests)
    in_catalogue: bool
    # A combined row ("003:a, b, c"): the parts no test names ("003:b" names part b).
    parts_missing: tuple[str, ...] = ()

    @property
    def levels_run(self) -> tuple[str, ...]:
        """Levels at which at least one test of the scenario passed or failed."""
        return tuple(lv for lv in LEVELS if self.passed.get(lv, 0) + self.failed.get(lv, 0))

    @property
    def covered(self) -> bool:
        """At least one test ran for it."""
        return bool(self.levels_run)


@dataclasses.dataclass(frozen=True)
class TeamRow:
    """One team's totals."""

    team: str
    passed: int
    failed: int
    skipped: int
    levels: tuple[str, ...]
    mrr: dict[str, int]  # segment -> MRR protected
    flake_runs: int
    flake_failures: int

    @property
    def mrr_total(self) -> int:
        return sum(self.mrr.values())

    @property
    def flake_rate(self) -> float:
        return self.flake_failures / self.flake_runs if self.flake_runs else 0.0


@dataclasses.dataclass(frozen=True)
class Report:
    """Everything the HTML page and the Markdown summary show."""

    sessions: tuple[str, ...]
    teams: tuple[TeamRow, ...]
    scenarios: tuple[ScenarioRow, ...]
    slowest: tuple[TestResult, ...]
    flakes: tuple[FlakeRecord, ...]
    total: int
    passed: int
    failed: int
    skipped: int

    @property
    def uncovered(self) -> tuple[ScenarioRow, ...]:
        """Catalogue scenarios with no test run at all."""
        return tuple(s for s in self.scenarios if s.in_catalogue and not s.covered)

    def coverage_by_level(self) -> dict[str, tuple[int, int]]:
        """Level -> (catalogue scenarios requiring it that ran a test there, requiring it)."""
        out = {}
        for level in LEVELS:
            wanted = [s for s in self.scenarios if s.in_catalogue and level in s.required]
            out[level] = (sum(1 for s in wanted if level in s.levels_run), len(wanted))
        return out


def build_report(
    results: Sequence[TestResult],
    catalogue: Sequence[Scenario],
    teams: Mapping[str, str],
    flakes: Iterable[FlakeRecord] = (),
    slowest: int = 10,
) -> Report:
    """Aggregate. `teams` maps a test package module ("auth_tests") to its team; results
    of other modules (selftest, unit) count in the totals and the slowest tests only."""
    flakes = tuple(flakes)
    known = {s.id: s for s in catalogue}
    passed: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    failed: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    mrr: dict[str, dict[str, int]] = defaultdict(dict)
    owner: dict[str, str] = {s.id: s.team for s in catalogue}
    row_of_part = _parts(catalogue)
    named: set[str] = set()
    for r in results:
        if not r.scenario or r.module not in teams or not r.level:
            continue
        for named_id, segment, value in ((r.scenario, r.segment, r.mrr), *r.also):
            named.add(named_id)
            scenario = row_of_part.get(named_id, named_id)
            owner.setdefault(scenario, teams[r.module])
            if r.outcome == "passed":
                passed[scenario][r.level] += 1
                seg = mrr[scenario]
                seg[segment] = max(seg.get(segment, 0), value)
            elif r.outcome in FAILED:
                failed[scenario][r.level] += 1
    ids = [s.id for s in catalogue] + sorted(set(owner) - set(known))
    rows = tuple(
        ScenarioRow(
            id=sid,
            title=known[sid].title if sid in known else "(not in the catalogue)",
            team=owner[sid],
            required=known[sid].levels if sid in known else (),
            passed=dict(passed.get(sid, {})),
            failed=dict(failed.get(sid, {})),
            mrr=dict(mrr.get(sid, {})),
            in_catalogue=sid in known,
            parts_missing=tuple(
                part for part, row in row_of_part.items() if row == sid and part not in named
            ),
        )
        for sid in ids
    )
    return Report(
        sessions=tuple(sorted({r.session for r in results})),
        teams=_teams(results, rows, teams, flakes),
        scenarios=rows,
        slowest=tuple(sorted(results, key=lambda r: -r.seconds)[:slowest]),
        flakes=flakes,
        total=len(results),
        passed=sum(1 for r in results if r.outcome == "passed"),
        failed=sum(1 for r in results if r.outcome in FAILED),
        skipped=sum(1 for r in results if r.outcome == "skipped"),
    )


def _parts(catalogue: Sequence[Scenario]) -> dict[str, str]:
    """Each part of a combined 003 row ("003:a, b" -> "003:a", "003:b") to the row's id:
    tests name the part they prove."""
    parts = {}
    for row in catalogue:
        head, _, names = row.id.partition(":")
        if head == "003" and "," in names:
            parts.update({f"003:{name.strip()}": row.id for name in names.split(",")})
    return parts


def _teams(
    results: Sequence[TestResult],
    rows: Sequence[ScenarioRow],
    teams: Mapping[str, str],
    flakes: Sequence[FlakeRecord],
) -> tuple[TeamRow, ...]:
    out = []
    for team in sorted({*teams.values(), *(row.team for row in rows)}):
        mine = [r for r in results if teams.get(r.module) == team]
        seg: dict[str, int] = defaultdict(int)
        for row in rows:
            if row.team == team:
                for segment, value in row.mrr.items():
                    seg[segment] += value
        team_flakes = [f for f in flakes if teams.get(f.module) == team]
        out.append(
            TeamRow(
                team=team,
                passed=sum(1 for r in mine if r.outcome == "passed"),
                failed=sum(1 for r in mine if r.outcome in FAILED),
                skipped=sum(1 for r in mine if r.outcome == "skipped"),
                levels=tuple(lv for lv in LEVELS if any(r.level == lv for r in mine)),
                mrr=dict(seg),
                flake_runs=sum(f.runs for f in team_flakes),
                flake_failures=sum(f.failures for f in team_flakes),
            )
        )
    return tuple(out)
