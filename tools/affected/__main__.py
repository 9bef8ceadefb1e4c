"""`python -m tools.affected build --data FILE --out FILE --package auth_tests ...`: the map
from a combined coverage data file recorded with `-p tools.affected.contexts`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tools.affected.changes import git
from tools.affected.coverage_map import build_map


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.affected", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="write the map of a coverage data file")
    build.add_argument("--data", type=Path, required=True, help="combined coverage data file")
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--package", action="append", required=True, help="test package module")
    args = parser.parse_args(argv)
    root = Path.cwd()
    commit = git(root, "rev-parse", "HEAD").strip()
    dirty = bool(git(root, "status", "--porcelain", "--untracked-files=no").strip())
    try:
        data = build_map(args.data, commit, dirty, args.package)
    except ValueError as error:
        print(f"affected: {error}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    note = " (uncommitted changes: the map counts as stale)" if dirty else ""
    print(
        f"affected: map of {len(data['tests'])} tests over {len(data['files'])} files "
        f"at {commit[:12]}{note} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
