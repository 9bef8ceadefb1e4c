"""Build the affected-tests map from coverage data recorded with per-test contexts.

Map (JSON, `reports/affected/map.json`):

    {"version": 1, "commit": "<sha>", "dirty": false, "recorded": "<UTC ISO time>",
     "packages": ["auth_tests", ...], "tests": ["auth_tests.test_x::test_y", ...],
     "sets": [[0, 3], ...],                        # distinct sets of test indexes
     "files": {"services/src/apex/auth/x.py": {"lines": {"12": 0, ...}, "outside": [1, 3]}}}

`lines`: line -> index into `sets` (the tests that ran the line); `outside`: the lines that
run when the module is imported (statements outside function bodies: constants, `def`
and `class` lines, decorators, read from the source) and any line run outside a test
(collection, the end of the session). An import-time line records only the test that
happened to import the module first, so a change to one stands for the whole file.
"""

from __future__ import annotations

import ast
import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coverage import CoverageData

from tools.affected.selection import MAP_VERSION


def import_time_lines(source: str) -> set[int]:
    """Lines of `source` that run at import: statements outside function bodies (docstrings
    left out), with the decorators and signatures of functions."""
    tree = ast.parse(source)
    lines: set[int] = set()
    bodies: set[int] = set()
    for node in ast.walk(tree):
        is_docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if isinstance(node, ast.stmt) and not is_docstring:
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for decorator in node.decorator_list:
                lines.update(range(decorator.lineno, (decorator.end_lineno or 0) + 1))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            bodies.update(range(node.body[0].lineno, (node.end_lineno or node.lineno) + 1))
    return lines - bodies


def _source_lines(path: Path) -> set[int]:
    try:
        return import_time_lines(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return set()  # not a readable Python source here: only the recorded lines count


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
        outside = _source_lines(Path(path))
        for line, contexts in sorted(data.contexts_by_lineno(path).items()):
            ran = tuple(sorted(index[c] for c in contexts if c in index))
            if ran:
                lines[str(line)] = sets.setdefault(ran, len(sets))
            if "" in contexts:
                outside.add(line)
        files[Path(path).as_posix()] = {"lines": lines, "outside": sorted(outside)}
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
