"""The report as one self-contained HTML page: inline CSS, inline SVG charts, no script
and no external resource, so it opens from a CI artifact without a network."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

from tools.report.aggregate import LEVELS, Report
from tools.report.bench import BenchComparison, bench_table_rows, describe
from tools.report.charts import bar_chart

__all__ = ["render_html"]

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.num { text-align: right; }
tr.fail td { background: #fde8e8; } tr.uncovered td { background: #fff6dd; }
.charts { display: flex; flex-wrap: wrap; gap: 2em; }
svg.chart text { font: 12px system-ui, sans-serif; fill: #222; }
svg.chart .chart-title { font-weight: bold; }
svg.chart rect.bar { fill: #3b7dd8; }
"""


def _table(table_id: str, head: Sequence[str], rows: Iterable[tuple[str, Sequence[str]]]) -> str:
    """A table; each row is (css class, cells). Cells are escaped here."""
    out = [f'<table id="{table_id}"><thead><tr>']
    out += [f"<th>{escape(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for css, cells in rows:
        out.append(f'<tr class="{css}">' + "".join(_cell(c) for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _cell(text: str) -> str:
    numeric = text.replace(",", "").replace("%", "").replace(".", "").isdigit()
    return f'<td class="num">{escape(text)}</td>' if numeric else f"<td>{escape(text)}</td>"


def _money(value: int) -> str:
    return f"{value:,}"


def _segments(mrr: dict[str, int]) -> str:
    return ", ".join(f"{seg}: {_money(v)}" for seg, v in sorted(mrr.items())) or "-"


def _bench(bench: BenchComparison | None) -> list[str]:
    """The benchmark section: the latest run against the previous one of its machine."""
    if bench is None:
        return ["<h2>Benchmarks</h2>", "<p>No benchmark history (nox -s bench).</p>"]
    head = ["metric", "better", "previous", "latest", "change", "verdict"]
    return [
        "<h2>Benchmarks</h2>",
        f'<p id="bench-summary">{escape(describe(bench))}</p>',
        _table("bench", head, bench_table_rows(bench)),
    ]


def render_html(
    report: Report, title: str = "Apex test report", bench: BenchComparison | None = None
) -> str:
    """The whole page; `bench`: the benchmark comparison, when there is a history."""
    cover = report.coverage_by_level()
    charts = [
        bar_chart(
            "Catalogue coverage by level (scenarios run / required)",
            [(lv, float(ran), f"{ran}/{wanted}") for lv, (ran, wanted) in cover.items()],
            maximum=float(max((w for _, w in cover.values()), default=0)),
            chart_id="chart-coverage",
        ),
        bar_chart(
            "MRR protected per team ($/month)",
            [(t.team, float(t.mrr_total), _money(t.mrr_total)) for t in report.teams],
            chart_id="chart-mrr",
        ),
        bar_chart(
            "Slowest tests (s)",
            [(r.nodeid, r.seconds, f"{r.seconds:.2f} s") for r in report.slowest],
            chart_id="chart-slowest",
        ),
        bar_chart(
            "Flake rate per team (failed runs / runs)",
            [
                (t.team, t.flake_rate, f"{t.flake_rate:.1%} of {t.flake_runs}")
                for t in report.teams
                if t.flake_runs
            ],
            maximum=1.0,
            chart_id="chart-flakes",
        ),
    ]
    teams = _table(
        "teams",
        [
            "team",
            "levels run",
            "passed",
            "failed",
            "skipped",
            "MRR protected by segment",
            "MRR total",
            "flake rate",
        ],
        (
            (
                "fail" if t.failed else "",
                [
                    t.team,
                    " ".join(t.levels) or "-",
                    str(t.passed),
                    str(t.failed),
                    str(t.skipped),
                    _segments(t.mrr),
                    _money(t.mrr_total),
                    f"{t.flake_rate:.1%}" if t.flake_runs else "-",
                ],
            )
            for t in report.teams
        ),
    )
    scenarios = _table(
        "scenarios",
        [
            "scenario",
            "title",
            "team",
            "required",
            "levels run",
            *(f"{lv} pass/fail" for lv in LEVELS),
            "MRR protected by segment",
        ],
        (
            (
                "fail" if s.failed else ("uncovered" if not s.covered else ""),
                [
                    s.id,
                    s.title,
                    s.team,
                    " ".join(s.required) or "-",
                    " ".join(s.levels_run) or "-",
                    *(f"{s.passed.get(lv, 0)}/{s.failed.get(lv, 0)}" for lv in LEVELS),
                    _segments(s.mrr),
                ],
            )
            for s in report.scenarios
        ),
    )
    uncovered = _table(
        "uncovered",
        ["scenario", "title", "team", "required levels"],
        (("uncovered", [s.id, s.title, s.team, " ".join(s.required)]) for s in report.uncovered),
    )
    flakes = _table(
        "flakes",
        ["test", "runs", "failures", "flake rate", "seeds that failed"],
        (
            (
                "fail" if f.failures else "",
                [
                    f.nodeid,
                    str(f.runs),
                    str(f.failures),
                    f"{f.rate:.1%}",
                    " ".join(map(str, f.failed_seeds)) or "-",
                ],
            )
            for f in report.flakes
        ),
    )
    summary = (
        f"{report.total} tests from {len(report.sessions)} sessions "
        f"({', '.join(report.sessions) or 'none'}): {report.passed} passed, "
        f"{report.failed} failed, {report.skipped} skipped. "
        f"{len(report.uncovered)} catalogue scenarios have no test that ran."
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{escape(title)}</h1>",
            f'<p id="summary">{escape(summary)}</p>',
            "<p>MRR protected: per scenario and segment, the largest bvj mrr among its passing "
            "tests (a scenario counts once however many tests it has); a team's MRR is the "
            "sum over its scenarios.</p>",
            '<div class="charts">',
            *charts,
            "</div>",
            "<h2>Teams</h2>",
            teams,
            "<h2>Scenarios</h2>",
            scenarios,
            f"<h2>Uncovered scenarios ({len(report.uncovered)})</h2>",
            uncovered,
            f"<h2>Flake rate per test ({len(report.flakes)} tests)</h2>",
            flakes if report.flakes else "<p>No flake runs recorded (nox -s flakes).</p>",
            *_bench(bench),
            "</body></html>",
            "",
        ]
    )
