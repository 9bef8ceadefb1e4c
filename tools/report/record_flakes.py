"""Merge one flake run's JUnit file into the flakes file:
`python -m tools.report.record_flakes JUNIT --session S --seed N [--flakes FILE]`.

Prints the run's line of progress (tests, failures, the failing tests).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tools.report.flakes import load_flakes, merge_run
from tools.report.junit import parse_junit
from tools.report.sources import FLAKES


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.report.record_flakes")
    parser.add_argument("junit", type=Path)
    parser.add_argument("--session", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--flakes", type=Path, default=FLAKES)
    args = parser.parse_args(argv)
    results = parse_junit(args.junit)
    data = load_flakes(args.flakes)
    merge_run(data, args.session, args.seed, results)
    args.flakes.parent.mkdir(parents=True, exist_ok=True)
    args.flakes.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    run = data["runs"][-1]
    print(f"flakes: {args.session} seed {args.seed}: {run['tests']} tests, {run['failed']} failed")
    for result in results:
        if result.outcome in ("failed", "error"):
            print(f"flakes:   FAILED {result.nodeid}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
