"""Build the GitHub Actions job matrix from `nox -l --json`.

    nox -l --json -t l2 l3 l4 ci-each-python ci-once \\
        | python -m tools.plan_matrix --python 3.11 --python 3.12

prints `{"include": [{"session": "l2-auth", "python": "3.11"}, ...]}`. Which sessions
run where is said by their nox tags, so a new test package (its l2-/l3-/l4-<area>
sessions carry the level tags) joins CI without an edit here or in the workflow:

- a level tag (l2, l3, l4) or `ci-each-python`: once per supported Python;
- `ci-once` (lint, selftest): once, on the first Python given;
- anything else (aggregates, coverage, stack, ...): not a matrix job.

Duration sharding (`--durations .ci/durations.json`, tools/shards.py): a session tagged
`shardable` whose stored test seconds exceed `--budget` (default 480 s) becomes N jobs,
`{"session": "l2-ws", "shard": "1/3", ...}`, each running `nox -s l2-ws -- --shard 1/3`.
Every entry carries `expected_seconds` (its stored test seconds; null when none are
stored: such a session runs whole), `shard` ("" for a whole session) and `job` (a name
without `/`, for artifacts: `l2-ws`, `l2-ws-1of3`); `--summary FILE`
appends the jobs and their expected seconds as a Markdown table (the job summary).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tools import shards

EACH_PYTHON_TAGS = frozenset({"l2", "l3", "l4", "ci-each-python"})
ONCE_TAGS = frozenset({"ci-once"})
SHARDABLE_TAG = "shardable"


def session_jobs(
    name: str,
    tags: set[str],
    durations: Mapping[str, Mapping[str, float]],
    budget: float,
    max_shards: int,
) -> list[dict[str, Any]]:
    """The jobs of one session (python left out): one whole job, or its shards."""
    tests = durations.get(name, {})
    if not tests:
        return [{"session": name, "shard": "", "job": name, "expected_seconds": None}]
    total = sum(tests.values())
    count = shards.shard_count(total, budget, len(tests), max_shards)
    if count == 1 or SHARDABLE_TAG not in tags:
        return [{"session": name, "shard": "", "job": name, "expected_seconds": round(total, 1)}]
    split = shards.assign(sorted(tests), tests, count)
    return [
        {
            "session": name,
            "shard": f"{i}/{count}",
            "job": f"{name}-{i}of{count}",
            "expected_seconds": seconds,
        }
        for i, seconds in enumerate(split.seconds, 1)
    ]


def plan(
    sessions: Iterable[Mapping[str, Any]],
    pythons: Sequence[str],
    durations: Mapping[str, Mapping[str, float]] | None = None,
    budget: float = shards.DEFAULT_BUDGET,
    max_shards: int = shards.DEFAULT_MAX_SHARDS,
) -> dict[str, Any]:
    """The matrix for `sessions` (entries of `nox -l --json`) on `pythons`; sessions tagged
    `shardable` whose `durations` exceed `budget` seconds are split into shards."""
    if not pythons:
        raise ValueError("at least one Python version is needed")
    durations = durations or {}
    include: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in sessions:
        name, tags = entry["name"], set(entry.get("tags") or ())
        if name in seen:  # the same session listed once per interpreter
            continue
        seen.add(name)
        if tags & EACH_PYTHON_TAGS:
            chosen = list(pythons)
        elif tags & ONCE_TAGS:
            chosen = [pythons[0]]
        else:
            continue
        jobs = session_jobs(name, tags, durations, budget, max_shards)
        include += [job | {"python": python} for python in chosen for job in jobs]
    if not include:
        raise ValueError("no session carries a CI tag: is the nox listing empty?")
    return {"include": include}


def summary(matrix: Mapping[str, Any], budget: float) -> str:
    """The planned jobs and their expected test seconds, as a Markdown table."""
    lines = [
        "### Planned jobs",
        "",
        f"Expected: the stored test seconds (`.ci/durations.json`, summed over the job's "
        f"tests, before xdist divides them); sessions above {budget:.0f} s are sharded.",
        "",
        "| job | Python | expected |",
        "|---|---|---:|",
    ]
    for job in matrix["include"]:
        name = f"{job['session']} {job['shard']}".strip()
        seconds = job.get("expected_seconds")
        expected = "unknown" if seconds is None else f"{seconds:.0f} s"
        lines.append(f"| `{name}` | {job['python']} | {expected} |")
    return "\n".join([*lines, ""])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--python",
        action="append",
        required=True,
        help="a supported Python version; repeat it (the first also runs the ci-once jobs)",
    )
    parser.add_argument(
        "--durations", type=Path, help="stored test durations (tools/shards.py); none: no shards"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=shards.DEFAULT_BUDGET,
        help="test seconds above which a shardable session is split (default %(default)s)",
    )
    parser.add_argument("--max-shards", type=int, default=shards.DEFAULT_MAX_SHARDS)
    parser.add_argument("--summary", type=Path, help="append the jobs as Markdown to this file")
    args = parser.parse_args(argv)
    try:
        sessions = json.load(sys.stdin)
        durations = shards.load_durations(args.durations) if args.durations else {}
        matrix = plan(sessions, args.python, durations, args.budget, args.max_shards)
    except (ValueError, KeyError, TypeError) as error:
        print(f"plan_matrix: {error}", file=sys.stderr)
        return 1
    print(json.dumps(matrix, separators=(",", ":")))
    if args.summary:
        with args.summary.open("a", encoding="utf-8") as out:
            out.write(summary(matrix, args.budget))
    return 0


if __name__ == "__main__":
    sys.exit(main())
