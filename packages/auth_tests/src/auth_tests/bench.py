"""What auth's benchmarks (marker perf, `nox -s bench`) share: their report.

Public: `report(section, rows, level)` merges `rows` into `$APEX_BENCH_DIR/auth.json`
(default reports/bench) under `section` and prints them as a table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from apex_testkit import Level

__all__ = ["report"]


def report(section: str, rows: dict[str, Any], level: Level) -> None:
    """Merge `rows` into auth.json under `section` and print them as a table."""
    directory = Path(os.environ.get("APEX_BENCH_DIR", "reports/bench"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "auth.json"
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    data[section] = {"level": level.value, "cpus": os.cpu_count(), **rows}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"\n== auth benchmark: {section} ({level.value}) -> {path}")
    for key, value in rows.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else f"{value}"
        print(f"  {key:<34}  {shown}")
