"""Record one `nox -s bench` run in the benchmark history:
`python -m tools.report.record_bench RUN_DIR [--bench-dir DIR] [--history FILE]`.

RUN_DIR holds the `<name>.json` files this run's benchmarks wrote (`APEX_BENCH_DIR`). Their
sections are merged into BENCH_DIR's files (default reports/bench; other sections kept, as
the kit does) and the numbers appended, with the commit, the machine and the time, to the
history (default BENCH_DIR/history.jsonl). A run that wrote nothing records nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tools.report.bench import run_entry


def _git(*args: str) -> str | None:
    done = subprocess.run(["git", *args], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.report.record_bench")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--bench-dir", type=Path, default=Path("reports/bench"))
    parser.add_argument("--history", type=Path, help="default: BENCH_DIR/history.jsonl")
    args = parser.parse_args(argv)
    history = args.history or args.bench_dir / "history.jsonl"
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(args.run_dir.glob("*.json")) if args.run_dir.is_dir() else []:
        files[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        kept = args.bench_dir / path.name
        if kept.resolve() != path.resolve():
            merged = json.loads(kept.read_text(encoding="utf-8")) if kept.is_file() else {}
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps(merged | files[path.stem], indent=2, sort_keys=True) + "\n")
    if not files:
        print(f"record_bench: no benchmark numbers in {args.run_dir}: nothing recorded")
        return 0
    commit = _git("rev-parse", "HEAD") or "unknown"
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    entry = run_entry(files, commit, dirty, now)
    history.parent.mkdir(parents=True, exist_ok=True)
    with history.open("a", encoding="utf-8") as out:
        out.write(json.dumps(entry, sort_keys=True) + "\n")
    print(
        f"record_bench: {len(entry['metrics'])} numbers of {commit[:12]} on "
        f"{entry['machine']['key']} -> {history}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
