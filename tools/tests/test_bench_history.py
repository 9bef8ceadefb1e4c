"""Benchmark trends (tools/report/bench.py, record_bench.py): which way is better, the
history line of a run, the comparison with the previous run of the same machine, and the
report's benchmark section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tools.report import bench, record_bench
from tools.report.__main__ import main as report_main


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("db.relay_batch_100.rows_per_second", "higher"),
        ("db.cache_hit_rate.hit_rate", "higher"),
        ("gateway.fanout.deliveries_per_s", "higher"),
        ("db.failover.seconds_to_first_write", "lower"),
        ("gateway.paced.p99_ms", "lower"),
        ("auth.permission.max", "lower"),
        ("db.relay_batch_100.rows", None),
        ("testkit.reset.ratio_of_medians", None),
    ],
)
def test_which_way_is_better_comes_from_the_name(metric: str, expected: str | None) -> None:
    assert bench.direction(metric) == expected


def test_a_run_entry_holds_the_numbers_not_the_context() -> None:
    files: dict[str, Any] = {
        "db": {
            "failover": {"level": "L3", "cpus": 2, "loadavg_1min": 3.0, "lost": 0, "ok": True},
            "relay": {"rows_per_second": 8508.1, "note": "text"},
        },
        "testkit": {"reset": {"nothing touched": {"median_ms": 0.4, "cpus": 2}}},
    }

    entry = bench.run_entry(files, "abc", False, "2026-12-06T00:00:00+00:00")

    assert entry["metrics"] == {
        "db.failover.lost": 0.0,
        "db.relay.rows_per_second": 8508.1,
        "testkit.reset.nothing touched.median_ms": 0.4,
    }
    assert entry["load"] == {"db.failover": 3.0}
    assert (entry["commit"], entry["dirty"]) == ("abc", False)
    assert entry["machine"]["key"] == bench.machine()["key"]


def run(metrics: dict[str, float], key: str = "linux-2cpu", commit: str = "c") -> dict[str, Any]:
    return {"commit": commit, "time": "t", "machine": {"key": key}, "metrics": metrics}


def verdicts(comparison: bench.BenchComparison | None) -> dict[str, str]:
    assert comparison is not None
    return {row.metric: row.verdict for row in comparison.rows}


def test_changes_beyond_the_noise_band_are_flagged_by_direction() -> None:
    before = {"a.latency_ms": 10.0, "b.rows_per_second": 100.0, "c.seconds": 1.0, "d.rows": 5.0}
    after = {"a.latency_ms": 13.0, "b.rows_per_second": 70.0, "c.seconds": 0.5, "d.rows": 50.0}

    comparison = bench.compare([run(before), run(after)], noise=0.2)

    assert verdicts(comparison) == {
        "a.latency_ms": "regression",  # lower is better, +30 %
        "b.rows_per_second": "regression",  # higher is better, -30 %
        "c.seconds": "improvement",
        "d.rows": "no verdict",
    }
    assert comparison is not None
    assert [r.metric for r in comparison.regressions] == ["a.latency_ms", "b.rows_per_second"]


def test_changes_within_the_noise_band_are_noise() -> None:
    comparison = bench.compare(
        [
            run({"a.seconds": 1.0, "b.per_second": 100.0}),
            run({"a.seconds": 1.19, "b.per_second": 81.0}),
        ]
    )

    assert set(verdicts(comparison).values()) == {"within noise"}


def test_only_the_same_machine_is_compared() -> None:
    history = [
        run({"a.seconds": 1.0}, commit="mine"),
        run({"a.seconds": 9.0}, key="other-64cpu", commit="theirs"),
        run({"a.seconds": 1.1}),
    ]

    comparison = bench.compare(history)

    assert comparison is not None
    assert comparison.previous is not None
    assert comparison.previous["commit"] == "mine"
    assert verdicts(comparison) == {"a.seconds": "within noise"}


def test_the_first_run_new_and_gone_metrics() -> None:
    assert bench.compare([]) is None
    first = bench.compare([run({"a.seconds": 1.0})])
    assert first is not None
    assert first.previous is None
    assert "nothing to compare with" in bench.describe(first)

    later = bench.compare([run({"a.seconds": 1.0}), run({"b.seconds": 2.0})])

    assert verdicts(later) == {"a.seconds": "gone", "b.seconds": "new"}


def test_a_bad_history_line_is_an_error(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    history.write_text('{"metrics": {}}\nnot json\n')

    with pytest.raises(ValueError, match=":2: not JSON"):
        bench.load_history(history)


def test_record_merges_the_run_into_the_bench_dir_and_appends_the_history(
    tmp_path: Path,
) -> None:
    run_dir, bench_dir = tmp_path / "run", tmp_path / "bench"
    run_dir.mkdir()
    bench_dir.mkdir()
    (bench_dir / "db.json").write_text(json.dumps({"old": {"rows": 1}, "relay": {"rows": 2}}))
    (run_dir / "db.json").write_text(json.dumps({"relay": {"rows_per_second": 10.0}}))

    for _ in range(2):
        assert record_bench.main([str(run_dir), f"--bench-dir={bench_dir}"]) == 0

    kept = json.loads((bench_dir / "db.json").read_text())
    assert kept == {"old": {"rows": 1}, "relay": {"rows_per_second": 10.0}}
    history = bench.load_history(bench_dir / "history.jsonl")
    assert [h["metrics"] for h in history] == [{"db.relay.rows_per_second": 10.0}] * 2
    assert all(h["commit"] and h["time"] for h in history)


def test_a_run_without_numbers_records_nothing(tmp_path: Path) -> None:
    assert record_bench.main([str(tmp_path / "none"), f"--bench-dir={tmp_path}"]) == 0

    assert not (tmp_path / "history.jsonl").exists()


def test_the_report_shows_the_comparison_and_flags_regressions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    junit = tmp_path / "junit"
    junit.mkdir()
    (junit / "unit.xml").write_text(
        '<testsuites><testsuite name="pytest"><testcase classname="services.tests.test_a" '
        'name="test_b" time="0.1"/></testsuite></testsuites>'
    )
    history = tmp_path / "history.jsonl"
    lines = [run({"db.x.seconds": 1.0}, commit="old1"), run({"db.x.seconds": 2.0}, commit="new2")]
    history.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"

    args = [f"--junit={junit}", f"--bench-history={history}", f"--out={out}", "--flakes=none"]
    assert report_main(args) == 0

    markdown = (out / "report.md").read_text()
    assert "### Benchmarks" in markdown
    assert "| `db.x.seconds` | lower | 1 | 2 | +100.0% | **regression** |" in markdown
    page = (out / "report.html").read_text()
    assert '<table id="bench">' in page
    assert '<tr class="fail"><td>db.x.seconds</td>' in page
