"""Duration sharding of CI sessions: stored test durations, shard counts, the greedy split.

The durations live in `.ci/durations.json` (checked in, so CI's plan job has them on a
fresh checkout): per session, per test, the seconds its last recorded run took. Refresh it
from the JUnit files of a run (merged over what is stored, the newest file winning per
test):

    python -m tools.shards refresh reports/junit [MORE DIRS OR FILES] [--fresh]

A test is named by its *key*, the same in every venv and on every Python: the dotted
module, then the rest of pytest's node id (`auth_tests.test_login::TestX::test_y[p]`).
The JUnit file of an aggregate session (`l2.xml`: every package at L2) counts for the
per-area sessions (`l2-auth`, ...) by the test's package, as CI runs those.

`assign` splits a session's tests into N shards, longest first onto the lightest shard;
a test without a stored duration weighs the mean of the known ones (so new tests spread
over the shards instead of piling onto one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "DEFAULT_BUDGET",
    "DURATIONS",
    "Plan",
    "assign",
    "junit_durations",
    "key_of_junit",
    "key_of_nodeid",
    "load_durations",
    "package_areas",
    "parse_shard",
    "refresh",
    "save_durations",
    "shard_count",
]

ROOT = Path(__file__).resolve().parents[1]
DURATIONS = Path(".ci/durations.json")
DEFAULT_BUDGET = 480.0  # seconds of test time per job (8 min)
DEFAULT_MAX_SHARDS = 8
LEVELS = ("l2", "l3", "l4")

Durations = dict[str, dict[str, float]]  # session -> test key -> seconds


def key_of_nodeid(nodeid: str) -> str:
    """The key of a pytest node id, as `pytest --collect-only -q` prints it.

    `.nox/l2/lib/python3.11/site-packages/auth_tests/test_x.py::T::test_y` and
    `auth_tests/test_x.py::T::test_y` are both `auth_tests.test_x::T::test_y`.
    """
    path, sep, rest = nodeid.partition("::")
    path = path.split("site-packages/", 1)[-1].removesuffix(".py").replace("/", ".")
    return f"{path}{sep}{rest}"


def key_of_junit(classname: str, name: str) -> str:
    """The key of a JUnit testcase (pytest's `classname` and `name`).

    pytest writes the module and the classes dotted together (`auth_tests.test_x.TestY`):
    the classes start at the first part named `Test...` (pytest's `python_classes`).
    """
    parts = classname.split(".site-packages.", 1)[-1].strip(".").split(".")
    first_class = next((i for i, p in enumerate(parts) if p.startswith("Test")), len(parts))
    return "::".join([".".join(parts[:first_class]), *parts[first_class:], name])


def package_areas(root: Path = ROOT) -> dict[str, str]:
    """Test package module -> area (`auth_tests` -> `auth`), from `packages/*/pyproject.toml`."""
    areas = {}
    for pyproject in sorted(root.glob("packages/*/pyproject.toml")):
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        entries = data.get("project", {}).get("entry-points", {}).get("apex_test_packages", {})
        for area, module in entries.items():
            areas[str(module).split(":")[0]] = str(area)
    return areas


def junit_durations(path: Path, areas: Mapping[str, str]) -> Durations:
    """Per session, per test key, the seconds of one JUnit file (`<session>.xml`).

    An aggregate's file (`l2.xml`) is split into `l2-<area>` by each test's package; tests of
    modules that are no test package of `areas` stay under the aggregate's name.
    """
    try:
        root = ET.parse(path).getroot()  # noqa: S314 - our own sessions' output
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not valid JUnit XML: {exc}") from exc
    # A shard job's file (`l2-ws-1of3.xml`, as CI's report job names them) is its session's.
    session = re.sub(r"-\d+of\d+$", "", path.stem)
    out: Durations = {}
    for case in root.iter("testcase"):
        key = key_of_junit(case.get("classname", ""), case.get("name", ""))
        name = session
        if session in LEVELS and (area := areas.get(key.split(".", 1)[0])):
            name = f"{session}-{area}"
        out.setdefault(name, {})[key] = round(float(case.get("time", "0") or 0), 3)
    return out


def refresh(stored: Durations, junit: Iterable[Path], areas: Mapping[str, str]) -> Durations:
    """`stored` updated with the JUnit files, read oldest first: the newest run of each test
    counts. Tests the files do not mention keep their stored seconds."""
    merged = {session: dict(tests) for session, tests in stored.items()}
    for path in sorted(junit, key=lambda p: (p.stat().st_mtime, p.name)):
        for session, tests in junit_durations(path, areas).items():
            merged.setdefault(session, {}).update(tests)
    return {s: dict(sorted(t.items())) for s, t in sorted(merged.items()) if t}


def load_durations(path: Path) -> Durations:
    """The stored durations; a missing file is no durations at all."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("sessions"), dict):
        raise ValueError(f"{path}: expected {{'sessions': {{session: {{test: seconds}}}}}}")
    return {s: {k: float(v) for k, v in t.items()} for s, t in data["sessions"].items()}


def save_durations(path: Path, durations: Durations) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "about": "test seconds per session from JUnit files: python -m tools.shards refresh",
        "sessions": durations,
    }
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def shard_count(
    seconds: float, budget: float, tests: int, max_shards: int = DEFAULT_MAX_SHARDS
) -> int:
    """How many shards a session of `seconds` needs so each stays within `budget`
    (at most one per test, at most `max_shards`)."""
    if budget <= 0:
        raise ValueError(f"the budget must be positive, not {budget}")
    wanted = math.ceil(seconds / budget) if seconds > budget else 1
    return max(1, min(wanted, tests, max_shards))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Shards of one session: their tests (in the given order) and expected seconds."""

    shards: tuple[tuple[str, ...], ...]
    seconds: tuple[float, ...]


def assign(tests: Sequence[str], durations: Mapping[str, float], shards: int) -> Plan:
    """Split `tests` into `shards`: longest first, each onto the lightest shard so far (ties:
    the lowest shard); tests without a duration weigh the mean of the known ones and come
    after them. Deterministic: every job of a session computes the same split."""
    if shards < 1:
        raise ValueError(f"at least one shard, not {shards}")
    unique = list(dict.fromkeys(tests))
    known = [t for t in unique if t in durations]
    default = sum(durations[t] for t in known) / len(known) if known else 1.0
    order = sorted(known, key=lambda t: (-durations[t], t))
    order += sorted(t for t in unique if t not in durations)
    loads = [0.0] * shards
    members: list[list[str]] = [[] for _ in range(shards)]
    for test in order:
        lightest = min(range(shards), key=lambda i: (loads[i], i))
        members[lightest].append(test)
        loads[lightest] += durations.get(test, default)
    position = {t: i for i, t in enumerate(unique)}
    return Plan(
        shards=tuple(tuple(sorted(m, key=position.__getitem__)) for m in members),
        seconds=tuple(round(load, 1) for load in loads),
    )


def parse_shard(text: str) -> tuple[int, int]:
    """`"2/3"` -> (2, 3); anything else raises ValueError with the expected form."""
    index, sep, total = text.partition("/")
    if not (sep and index.isdigit() and total.isdigit() and 1 <= int(index) <= int(total)):
        raise ValueError(f"--shard takes I/N with 1 <= I <= N (`--shard 2/3`), not {text!r}")
    return int(index), int(total)


def _junit_paths(sources: Sequence[Path]) -> list[Path]:
    paths: list[Path] = []
    for source in sources:
        if source.is_dir():
            paths += sorted(source.glob("*.xml"))
        elif source.is_file():
            paths.append(source)
        else:
            raise ValueError(f"{source}: no such file or directory")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.shards", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    update = commands.add_parser("refresh", help="merge JUnit durations into the durations file")
    update.add_argument("junit", nargs="+", type=Path, help="JUnit files or directories of them")
    update.add_argument("--durations", type=Path, default=DURATIONS)
    update.add_argument("--fresh", action="store_true", help="ignore what is stored")
    args = parser.parse_args(argv)
    try:
        stored = {} if args.fresh else load_durations(args.durations)
        merged = refresh(stored, _junit_paths(args.junit), package_areas())
    except ValueError as error:
        print(f"shards: {error}", file=sys.stderr)
        return 1
    save_durations(args.durations, merged)
    for session, tests in merged.items():
        print(f"shards: {session}: {len(tests)} tests, {sum(tests.values()):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
