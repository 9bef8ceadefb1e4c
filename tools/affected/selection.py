"""Which L2 tests a change affects: the map's per-line tests for the changed lines, plus new
and changed test modules; the whole session when that cannot be known (and why).

Rules, per changed file (paths relative to the repo root):

- not used by L2 tests (`docs/`, `.github/`, `.ci/`, `tools/`, `reports/`, `services/tests/`,
  `services/compat_tests/`, `shared/tests/`, `*.md`): nothing;
- a test module of a package (`packages/*/src/**/test_*.py`): all its tests;
- other Python code of the kit, the platform or a package (`shared/src`, `services/src`,
  `packages/*/src`): the tests that ran a changed or removed line; for inserted lines, the
  tests that ran the nearest test-run line above and below; when a changed line, or a line
  next to inserted ones, runs at import (a `def` line, a module constant: the map's
  `outside` lines), every test that ran the file. A file no recorded test ran selects
  nothing (it is named);
- anything else (a `pyproject.toml`, SQL, the noxfile): the whole session.

Tests collected now that the map does not know (new tests) always run.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tools.affected.changes import (
    FileChange,
    GitError,
    changed_files,
    diff_against,
    is_ancestor,
)

__all__ = ["Selection", "affected_tests", "load_map", "select"]

MAP_VERSION = 1
IGNORED_PREFIXES = (
    "docs/",
    ".github/",
    ".ci/",
    "tools/",
    "reports/",
    "services/tests/",
    "services/compat_tests/",
    "shared/tests/",
)
_MEASURED = re.compile(r"^(services/src|shared/src|packages/[^/]+/src)/(?P<module>.+)\.py$")


@dataclasses.dataclass(frozen=True)
class Selection:
    """The tests to run (keys, in collection order), or `full`: the whole session, and why."""

    tests: tuple[str, ...]
    full: bool
    reason: str
    notes: tuple[str, ...] = ()


def _full(reason: str, notes: Iterable[str] = ()) -> Selection:
    return Selection((), True, reason, tuple(notes))


def load_map(path: Path) -> dict[str, Any]:
    """The map file; ValueError when it is not one of this version."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable map: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != MAP_VERSION:
        raise ValueError(f"{path}: not an affected-tests map of version {MAP_VERSION}")
    return data


def _file_tests(cmap: Mapping[str, Any], entry: Mapping[str, Any]) -> set[int]:
    return {t for s in set(entry["lines"].values()) for t in cmap["sets"][s]}


def _tests_of_change(cmap: Mapping[str, Any], entry: Mapping[str, Any], ch: FileChange) -> set[int]:
    run = {int(line): s for line, s in entry["lines"].items()}
    outside = set(entry["outside"])
    if ch.whole or ch.added or ch.deleted or ch.lines & outside:
        return _file_tests(cmap, entry)
    touched = set(ch.lines)
    ordered = sorted(run)
    for after in ch.inserted_after:
        if {after, after + 1} & outside:  # new import-time code (a constant, a function)
            return _file_tests(cmap, entry)
        above = [line for line in ordered if line <= after]
        below = [line for line in ordered if line > after]
        touched.update(above[-1:] + below[:1])
    return {t for line in touched if line in run for t in cmap["sets"][run[line]]}


def select(
    cmap: Mapping[str, Any], changes: Sequence[FileChange], collected: Sequence[str]
) -> Selection:
    """The affected tests among `collected` (keys) for `changes` (line numbers of the map's
    commit). Pure: git and staleness are `affected_tests`' business."""
    tests: list[str] = cmap["tests"]
    chosen: set[str] = set()
    notes: list[str] = []
    for ch in changes:
        path = ch.path
        if path.startswith(IGNORED_PREFIXES) or path.endswith(".md"):
            notes.append(f"{path}: not used by L2 tests")
            continue
        measured = _MEASURED.match(path)
        if measured is None:
            return _full(f"{path} changed, and it is not Python code the map measures", notes)
        if Path(path).name.startswith("test_") and path.startswith("packages/"):
            module = measured["module"].replace("/", ".")
            mine = {k for k in collected if k.split("::", 1)[0] == module}
            chosen |= mine
            notes.append(f"{path}: a changed test module, its {len(mine)} tests")
            continue
        entry = cmap["files"].get(path)
        if entry is None:
            state = "new" if ch.added else "changed"
            notes.append(f"{path}: {state}, and no recorded test ran it")
            continue
        found = {tests[i] for i in _tests_of_change(cmap, entry, ch)}
        chosen |= found
        notes.append(f"{path}: {len(found)} tests ran the changed lines")
    known = set(tests)
    new = [k for k in collected if k not in known]
    if new:
        notes.append(f"{len(new)} tests the map does not know (new): they run")
    chosen.update(new)
    selected = tuple(k for k in dict.fromkeys(collected) if k in chosen)
    return Selection(selected, False, f"{len(selected)} of {len(collected)} tests", tuple(notes))


def affected_tests(
    root: Path, map_path: Path, base: str, collected: Sequence[str], packages: Sequence[str]
) -> Selection:
    """`select`, or the whole session when the map is missing, stale or does not cover
    `packages`. Changed files: those that differ between `base` and the working tree
    (untracked ones too); their lines: against the map's commit."""
    if not map_path.is_file():
        return _full(f"no map at {map_path} (record one: nox -s affected -- --record)")
    try:
        cmap = load_map(map_path)
    except ValueError as error:
        return _full(str(error))
    commit = str(cmap.get("commit", ""))
    if cmap.get("dirty"):
        return _full(f"stale map: recorded at {commit[:12]} with uncommitted changes")
    if not is_ancestor(root, commit):
        return _full(f"stale map: its commit {commit[:12]} is not HEAD or an ancestor of it")
    missing = sorted(set(packages) - set(cmap["packages"]))
    if missing:
        return _full(f"the map does not cover {', '.join(missing)} (it has {cmap['packages']})")
    try:
        changes = diff_against(root, commit, changed_files(root, base))
    except GitError as error:
        return _full(f"cannot diff: {error}")
    return select(cmap, changes, collected)
