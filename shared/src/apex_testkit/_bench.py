"""Benchmark reports: what every team's `perf` tests write and print.

A benchmark reports numbers, it never fails on speed. `bench_report(name, section, rows,
level)` merges `rows` under `section` into `$APEX_BENCH_DIR/<name>.json` (default
`reports/bench`; other sections of the file are kept, so several tests fill one file)
with the level, the machine's cores and its load average (on a shared machine the
numbers mean little without it), and prints them as a table (`pytest -s` shows it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apex_testkit._level import Level

__all__ = ["bench_report"]


def bench_report(name: str, section: str, rows: Mapping[str, Any], level: Level) -> Path:
    """Merge `rows` into `<name>.json` under `section`, print them; the file's path."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bench_report: {name!r} is not a report name (like 'db' or 'auth')")
    directory = Path(os.environ.get("APEX_BENCH_DIR", "reports/bench"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    load = round(os.getloadavg()[0], 2)
    data[section] = {"level": level.value, "cpus": os.cpu_count(), "loadavg_1min": load, **rows}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"\n== {name} benchmark: {section} ({level.value}, load average {load}) -> {path}")
    width = max((len(key) for key in rows), default=0)
    for key, value in rows.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else f"{value}"
        print(f"  {key:<{width}}  {shown}")
    return path
