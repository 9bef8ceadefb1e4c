"""Build the GitHub Actions job matrix from `nox -l --json`.

    nox -l --json -t l2 l3 l4 ci-each-python ci-once \\
        | python tools/plan_matrix.py --python 3.11 --python 3.12

prints `{"include": [{"session": "l2-auth", "python": "3.11"}, ...]}`. Which sessions
run where is said by their nox tags, so a new test package (its l2-/l3-/l4-<area>
sessions carry the level tags) joins CI without an edit here or in the workflow:

- a level tag (l2, l3, l4) or `ci-each-python`: once per supported Python;
- `ci-once` (lint, selftest): once, on the first Python given;
- anything else (aggregates, coverage, stack, ...): not a matrix job.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

EACH_PYTHON_TAGS = frozenset({"l2", "l3", "l4", "ci-each-python"})
ONCE_TAGS = frozenset({"ci-once"})


def plan(sessions: Iterable[Mapping[str, Any]], pythons: Sequence[str]) -> dict[str, Any]:
    """The matrix for `sessions` (entries of `nox -l --json`) on `pythons`."""
    if not pythons:
        raise ValueError("at least one Python version is needed")
    include: list[dict[str, str]] = []
    seen: set[str] = set()
    for entry in sessions:
        name, tags = entry["name"], set(entry.get("tags") or ())
        if name in seen:  # the same session listed once per interpreter
            continue
        seen.add(name)
        if tags & EACH_PYTHON_TAGS:
            include += [{"session": name, "python": python} for python in pythons]
        elif tags & ONCE_TAGS:
            include.append({"session": name, "python": pythons[0]})
    if not include:
        raise ValueError("no session carries a CI tag: is the nox listing empty?")
    return {"include": include}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--python",
        action="append",
        required=True,
        help="a supported Python version; repeat it (the first also runs the ci-once jobs)",
    )
    args = parser.parse_args(argv)
    try:
        sessions = json.load(sys.stdin)
        matrix = plan(sessions, args.python)
    except (ValueError, KeyError, TypeError) as error:
        print(f"plan_matrix: {error}", file=sys.stderr)
        return 1
    print(json.dumps(matrix, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
