"""The report's summary as GitHub-flavoured Markdown (the job summary)."""

from __future__ import annotations

from tools.report.aggregate import Report
from tools.report.bench import BenchComparison, bench_markdown

__all__ = ["render_markdown"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(
    report: Report, title: str = "Apex test report", bench: BenchComparison | None = None
) -> str:
    """Totals, teams, coverage by level, uncovered scenarios, the flakiest tests, and the
    benchmark comparison when given."""
    lines = [
        f"## {title}",
        "",
        f"{report.total} tests from {len(report.sessions)} sessions: {report.passed} passed, "
        f"{report.failed} failed, {report.skipped} skipped.",
        "",
        "| team | levels | passed | failed | MRR protected | flake rate |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for t in report.teams:
        flake = f"{t.flake_rate:.1%}" if t.flake_runs else "-"
        lines.append(
            f"| {t.team} | {' '.join(t.levels) or '-'} | {t.passed} | {t.failed} "
            f"| {t.mrr_total:,} | {flake} |"
        )
    lines += ["", "| level | catalogue scenarios run / required |", "|---|---:|"]
    for level, (ran, wanted) in report.coverage_by_level().items():
        lines.append(f"| {level} | {ran}/{wanted} |")
    failing = [s for s in report.scenarios if s.failed]
    if failing:
        lines += ["", "Scenarios with failing tests: " + ", ".join(s.id for s in failing)]
    lines += ["", f"### Uncovered scenarios ({len(report.uncovered)})", ""]
    lines += [f"- {_cell(s.id)} ({s.team}): {_cell(s.title)}" for s in report.uncovered]
    partly = [s for s in report.scenarios if s.covered and s.parts_missing]
    if partly:
        lines += ["", f"### Combined rows with parts no test names ({len(partly)})", ""]
        lines += [
            f"- {_cell(s.id)} ({s.team}): {_cell(', '.join(s.parts_missing))}" for s in partly
        ]
    flaky = [f for f in report.flakes if f.failures]
    if report.flakes:
        lines += ["", f"### Flaky tests ({len(flaky)} of {len(report.flakes)})", ""]
        lines += [
            f"- `{f.nodeid}`: {f.failures}/{f.runs}, seeds {' '.join(map(str, f.failed_seeds))}"
            for f in flaky
        ]
    lines.append("")
    if bench is not None:
        lines.append(bench_markdown(bench))
    return "\n".join(lines)
