"""Build the affected-tests map from coverage data recorded with per-test contexts.

Map (JSON, `reports/affected/map.json`):

    {"version": 1, "commit": "<sha>", "dirty": false, "recorded": "<UTC ISO time>",
     "packages": ["auth_tests", ...], "tests": ["auth_tests.test_x::test_y", ...],
     "sets": [[0, 3], ...],                        # distinct sets of test indexes
     "files": {"services/src/apex/auth/x.py": {"lines": {"12": 0, ...}, "outside": [1, 3]}}}

`lines`: line -> index into `sets` (the tests that ran the line); `outside`: lines run
outside any test (imports, collection, session fixtures' final teardown).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coverage import CoverageData

from tools.affected.selection import MAP_VERSION


def build_map(data_file: Path, commit: str, dirty: bool, packages: Sequence[str]) -> dict[str, Any]:
    """The map of one combined coverage data file (contexts: test keys, "" outside tests)."""
    data = CoverageData(basename=str(data_file))
    data.read()
    tests = sorted(c for c in data.measured_contexts() if c)
    if not tests:
        raise ValueError(f"{data_file}: no per-test contexts (was it recorded with the plugin?)")
    index = {test: i for i, test in enumerate(tests)}
    sets: dict[tuple[int, ...], int] = {}
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(data.measured_files()):
        lines: dict[str, int] = {}
        outside: list[int] = []
        for line, contexts in sorted(data.contexts_by_lineno(path).items()):
            ran = tuple(sorted(index[c] for c in contexts if c in index))
            if ran:
                lines[str(line)] = sets.setdefault(ran, len(sets))
            if "" in contexts:
                outside.append(line)
        files[Path(path).as_posix()] = {"lines": lines, "outside": outside}
    return {
        "version": MAP_VERSION,
        "commit": commit,
        "dirty": dirty,
        "recorded": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "packages": sorted(packages),
        "tests": tests,
        "sets": [list(s) for s in sets],
        "files": files,
    }
