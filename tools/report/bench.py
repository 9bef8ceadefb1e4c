"""Benchmark history and trends.

Each `nox -s bench` appends one line to `reports/bench/history.jsonl`: the run's numbers
(`<file>.<section>.<key>`, from the `reports/bench/<file>.json` the benchmarks wrote),
the load average of each section, the commit, the machine and the time. The report
compares the newest run with the previous run of the same machine (the same kind of
machine: system, architecture, cores and Python, so CI's fresh containers compare) and
flags a change beyond the noise band (default 20 %) as a regression or an improvement.

Which way is worse comes from the metric's name: `*_per_second`, `*_per_s`, `hit_rate`,
`throughput`: higher is better; a name with a part `seconds`, `s`, `ms`, `latency`,
`p50`, `p95`, `p99`, `median`, `max`, `mean` or `lag`: lower is better. Other numbers
(counts, ratios, sizes) are shown without a verdict.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "NOISE",
    "BenchComparison",
    "BenchRow",
    "compare",
    "direction",
    "load_history",
    "machine",
    "run_entry",
]

NOISE = 0.20
# Context the kit writes into every section, not measurements.
CONTEXT_KEYS = frozenset({"level", "cpus", "loadavg_1min"})
_HIGHER = ("per_second", "per_s", "hit_rate", "throughput")
_LOWER = frozenset(
    {"seconds", "s", "ms", "latency", "p50", "p90", "p95", "p99", "median", "max", "mean", "lag"}
)


def direction(metric: str) -> str | None:
    """ "higher" or "lower" (which way is better) from the metric's last name, or None."""
    name = metric.rsplit(".", 1)[-1].lower()
    if any(name.endswith(h) or h in name for h in _HIGHER):
        return "higher"
    if _LOWER & set(name.split("_")):
        return "lower"
    return None


def machine() -> dict[str, Any]:
    """This machine: `key` names the kind of machine runs are compared within."""
    cpus = os.cpu_count() or 0
    python = ".".join(platform.python_version_tuple()[:2])
    return {
        "key": f"{platform.system()}-{platform.machine()}-{cpus}cpu-py{python}",
        "cpus": cpus,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "node": platform.node(),
    }


def _numbers(prefix: str, rows: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of `rows`, nested tables too (`prefix.table.key`), context keys left out."""
    found: dict[str, float] = {}
    for key, value in sorted(rows.items()):
        if isinstance(value, Mapping):
            found.update(_numbers(f"{prefix}.{key}", value))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found.update({} if key in CONTEXT_KEYS else {f"{prefix}.{key}": float(value)})
    return found


def run_entry(
    files: Mapping[str, Mapping[str, Any]], commit: str, dirty: bool, time: str
) -> dict[str, Any]:
    """One history line from a run's bench files (`{file name: {section: rows}}`)."""
    metrics: dict[str, float] = {}
    load: dict[str, float] = {}
    for name, sections in sorted(files.items()):
        for section, rows in sorted(sections.items()):
            if not isinstance(rows, Mapping):
                continue
            if isinstance(rows.get("loadavg_1min"), int | float):
                load[f"{name}.{section}"] = float(rows["loadavg_1min"])
            metrics.update(_numbers(f"{name}.{section}", rows))
    return {
        "time": time,
        "commit": commit,
        "dirty": dirty,
        "machine": machine(),
        "metrics": metrics,
        "load": load,
    }


def load_history(path: Path) -> list[dict[str, Any]]:
    """The history's runs, oldest first; a missing file is none. A bad line is an error."""
    if not path.is_file():
        return []
    runs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON: {exc}") from exc
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            raise ValueError(f"{path}:{number}: not a benchmark run (no 'metrics')")
        runs.append(entry)
    return runs


@dataclasses.dataclass(frozen=True)
class BenchRow:
    """One metric: previous and latest value, relative change, verdict.

    verdict: "regression", "improvement", "within noise", "no verdict" (direction
    unknown), "new" (no previous value) or "gone" (not measured this time)."""

    metric: str
    previous: float | None
    latest: float | None
    change: float | None
    direction: str | None
    verdict: str


@dataclasses.dataclass(frozen=True)
class BenchComparison:
    """The latest run against the previous run of the same machine (None: the first)."""

    latest: Mapping[str, Any]
    previous: Mapping[str, Any] | None
    rows: tuple[BenchRow, ...]
    noise: float

    @property
    def regressions(self) -> tuple[BenchRow, ...]:
        return tuple(r for r in self.rows if r.verdict == "regression")


def _row(metric: str, old: float | None, new: float | None, noise: float) -> BenchRow:
    way = direction(metric)
    if new is None:
        return BenchRow(metric, old, None, None, way, "gone")
    if old is None:
        return BenchRow(metric, None, new, None, way, "new")
    change = (new - old) / abs(old) if old else (0.0 if new == old else None)
    if way is None or change is None:
        return BenchRow(metric, old, new, change, way, "no verdict")
    worse = change > noise if way == "lower" else change < -noise
    better = change < -noise if way == "lower" else change > noise
    verdict = "regression" if worse else "improvement" if better else "within noise"
    return BenchRow(metric, old, new, change, way, verdict)


def compare(history: Sequence[Mapping[str, Any]], noise: float = NOISE) -> BenchComparison | None:
    """The newest run against the previous one of its machine; None without any run."""
    if noise < 0:
        raise ValueError(f"the noise band must not be negative, not {noise}")
    if not history:
        return None
    latest = history[-1]
    key = latest.get("machine", {}).get("key")
    earlier = [run for run in history[:-1] if run.get("machine", {}).get("key") == key]
    previous = earlier[-1] if earlier else None
    new: Mapping[str, float] = latest["metrics"]
    old: Mapping[str, float] = previous["metrics"] if previous else {}
    metrics = sorted(set(new) | set(old))
    rows = tuple(_row(m, old.get(m), new.get(m), noise) for m in metrics)
    return BenchComparison(latest, previous, rows, noise)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.4g}"


def _change(row: BenchRow) -> str:
    return "-" if row.change is None else f"{row.change:+.1%}"


def _run(run: Mapping[str, Any]) -> str:
    dirty = " (uncommitted changes)" if run.get("dirty") else ""
    return f"{str(run.get('commit', '?'))[:12]}{dirty} at {run.get('time', '?')}"


def describe(comparison: BenchComparison) -> str:
    """One sentence: which runs are compared, on which machine, with which band."""
    machine_key = comparison.latest.get("machine", {}).get("key", "?")
    if comparison.previous is None:
        return (
            f"Benchmarks of {_run(comparison.latest)} on {machine_key}: the first run of this "
            "machine, nothing to compare with."
        )
    return (
        f"Benchmarks of {_run(comparison.latest)} against {_run(comparison.previous)} on "
        f"{machine_key}; noise band {comparison.noise:.0%}: "
        f"{len(comparison.regressions)} regressions."
    )


def bench_markdown(comparison: BenchComparison) -> str:
    """The comparison as a Markdown section (regressions first)."""
    order = {"regression": 0, "improvement": 1, "within noise": 2}
    rows = sorted(comparison.rows, key=lambda r: (order.get(r.verdict, 3), r.metric))
    lines = ["### Benchmarks", "", describe(comparison), ""]
    lines += [
        "| metric | better | previous | latest | change | verdict |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        verdict = f"**{r.verdict}**" if r.verdict == "regression" else r.verdict
        lines.append(
            f"| `{r.metric}` | {r.direction or '?'} | {_number(r.previous)} "
            f"| {_number(r.latest)} | {_change(r)} | {verdict} |"
        )
    return "\n".join([*lines, ""])


def bench_table_rows(comparison: BenchComparison) -> list[tuple[str, list[str]]]:
    """(css class, cells) per metric for the HTML table (regressions marked `fail`)."""
    return [
        (
            "fail" if r.verdict == "regression" else "",
            [
                r.metric,
                r.direction or "?",
                _number(r.previous),
                _number(r.latest),
                _change(r),
                r.verdict,
            ],
        )
        for r in comparison.rows
    ]
