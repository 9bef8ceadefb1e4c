"""reports/flakes.json: per test, how many runs, how many failed, and the seeds that failed.

Written by `nox -s flakes` (one merge per run, across invocations); read by the report.
Shape: {"tests": {nodeid: {"module", "runs", "failures", "failed_seeds"}},
"runs": [{"session", "seed", "tests", "failed"}]}.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tools.report.junit import TestResult

__all__ = ["FlakeRecord", "load_flakes", "merge_run", "records"]


@dataclasses.dataclass(frozen=True)
class FlakeRecord:
    """One test's history over the flake runs."""

    nodeid: str
    module: str
    runs: int
    failures: int
    failed_seeds: tuple[int, ...]

    @property
    def rate(self) -> float:
        """Failures per run, 0.0 to 1.0."""
        return self.failures / self.runs if self.runs else 0.0


def load_flakes(path: Path) -> dict[str, Any]:
    """The file's data, or an empty record when it does not exist yet."""
    if not path.exists():
        return {"tests": {}, "runs": []}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("tests"), dict):
        raise ValueError(f"{path}: not a flakes file (no 'tests' object)")
    return data


def merge_run(data: dict[str, Any], session: str, seed: int, results: Iterable[TestResult]) -> None:
    """Add one run's results; a skipped test did not run. Failures and errors both count."""
    ran = failed = 0
    for result in results:
        if result.outcome == "skipped":
            continue
        entry = data["tests"].setdefault(
            result.nodeid,
            {"module": result.module, "runs": 0, "failures": 0, "failed_seeds": []},
        )
        entry["runs"] += 1
        ran += 1
        if result.outcome in ("failed", "error"):
            entry["failures"] += 1
            entry["failed_seeds"].append(seed)
            failed += 1
    data["runs"].append({"session": session, "seed": seed, "tests": ran, "failed": failed})


def records(data: dict[str, Any]) -> list[FlakeRecord]:
    """Every test of the file, most flaky first."""
    out = [
        FlakeRecord(
            nodeid,
            entry["module"],
            entry["runs"],
            entry["failures"],
            tuple(entry["failed_seeds"]),
        )
        for nodeid, entry in data["tests"].items()
    ]
    return sorted(out, key=lambda r: (-r.rate, r.nodeid))
