"""tools/report: JUnit and catalogue parsing, aggregation (MRR counted once per scenario),
the flakes file, the Markdown summary, and the HTML page rendered by real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools.report import (
    build_report,
    load_flakes,
    merge_run,
    parse_catalogue,
    parse_junit,
    render_markdown,
)
from tools.report.browser import ChromiumMissing, chromium, dump_dom, screenshot
from tools.report.flakes import records
from tools.report.junit import latest_results
from tools.report.sources import CATALOGUE, ROOT, package_teams

CATALOGUE_TEXT = """# Scenario catalogue

## auth_tests (team: identity)
| ID | scenario | levels |
|---|---|---|
| 001#1 | OAuth flow | L2 L3 L4 |
| 001#2 | Token propagation | L2 L3 |
| 001#9 | Team permission inheritance | L2 |

## ws_tests (team: realtime)
| ID | scenario | levels |
|---|---|---|
| 001#76 | Concurrent user load | L3 perf |
"""

PREFIX = ".nox.l2-auth.lib.python3.11.site-packages."


def case(name: str, scenario: str, mrr: int, segment: str = "mid", body: str = "") -> str:
    props = {"bvj_segment": segment, "bvj_goal": "g", "bvj_mrr": mrr, "bvj_scenario": scenario}
    properties = "".join(f'<property name="{k}" value="{v}" />' for k, v in props.items())
    return (
        f'<testcase classname="{PREFIX}auth_tests.test_login" name="{name}" time="1.5">'
        f"<properties>{properties}</properties>{body}</testcase>"
    )


def junit(path: Path, *cases: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
        + "".join(cases)
        + "</testsuite></testsuites>",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    path = tmp_path / "CATALOGUE.md"
    path.write_text(CATALOGUE_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def junit_dir(tmp_path: Path) -> Path:
    """l2-auth: 001#1 passes three times (mrr 8000, 20000 enterprise, 5000), 001#2 fails;
    l3-auth: 001#1 passes, one skipped."""
    directory = tmp_path / "junit"
    junit(
        directory / "l2-auth.xml",
        case("test_a", "001#1", 8000),
        case("test_b", "001#1", 20000, segment="enterprise"),
        case("test_c", "001#1", 5000),
        case("test_d", "001#2", 9000, body='<failure message="boom">boom</failure>'),
    )
    junit(
        directory / "l3-auth.xml",
        case("test_a", "001#1", 8000),
        case("test_s", "001#2", 9000, body='<skipped message="no" />'),
    )
    return directory


def test_junit_results_carry_module_level_outcome_and_bvj(junit_dir: Path) -> None:
    results = parse_junit(junit_dir / "l2-auth.xml")
    assert [r.outcome for r in results] == ["passed", "passed", "passed", "failed"]
    first = results[0]
    assert (first.session, first.level, first.module) == ("l2-auth", "L2", "auth_tests")
    assert first.nodeid == "auth_tests.test_login::test_a"
    assert (first.segment, first.mrr, first.scenario, first.seconds) == ("mid", 8000, "001#1", 1.5)


def test_junit_that_is_not_xml_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("not xml", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JUnit XML"):
        parse_junit(bad)


def test_catalogue_rows_have_package_team_and_levels(catalogue: Path) -> None:
    rows = parse_catalogue(catalogue)
    assert [(r.id, r.team, r.levels) for r in rows] == [
        ("001#1", "identity", ("L2", "L3", "L4")),
        ("001#2", "identity", ("L2", "L3")),
        ("001#9", "identity", ("L2",)),
        ("001#76", "realtime", ("L3",)),
    ]
    assert rows[0].package == "auth_tests"


def test_catalogue_row_before_a_package_heading_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.md"
    path.write_text("| 001#1 | x | L2 |\n", encoding="utf-8")
    with pytest.raises(ValueError, match="before any"):
        parse_catalogue(path)


def test_the_repository_copy_of_the_catalogue_names_every_package_team() -> None:
    scenarios = parse_catalogue(CATALOGUE)
    assert CATALOGUE.is_relative_to(ROOT)
    teams = package_teams()
    assert teams  # every packages/* with an apex_test_packages entry point
    catalogue_teams = {(s.package, s.team) for s in scenarios}
    for module, team in teams.items():
        assert (module, team) in catalogue_teams


def test_mrr_is_counted_once_per_scenario_and_segment(junit_dir: Path, catalogue: Path) -> None:
    results = [r for p in sorted(junit_dir.glob("*.xml")) for r in parse_junit(p)]
    report = build_report(results, parse_catalogue(catalogue), {"auth_tests": "identity"})
    by_id = {s.id: s for s in report.scenarios}
    oauth = by_id["001#1"]
    # The max per segment over passing tests, not 8000 + 5000 + 8000.
    assert oauth.mrr == {"mid": 8000, "enterprise": 20000}
    assert oauth.levels_run == ("L2", "L3")
    assert (oauth.passed, oauth.failed) == ({"L2": 3, "L3": 1}, {})
    # A failing test protects nothing.
    assert by_id["001#2"].mrr == {}
    assert by_id["001#2"].failed == {"L2": 1}
    identity = {t.team: t for t in report.teams}["identity"]
    assert (identity.passed, identity.failed, identity.skipped) == (4, 1, 1)
    assert identity.mrr_total == 28000
    assert [s.id for s in report.uncovered] == ["001#9", "001#76"]
    assert report.coverage_by_level() == {"L2": (2, 3), "L3": (1, 3), "L4": (0, 1)}


def test_a_test_with_two_bvj_markers_covers_both_scenarios(tmp_path: Path, catalogue: Path) -> None:
    # The kit writes one run of bvj_* properties per marker, the closest first.
    both = case("test_both", "001#1", 8000).replace(
        "</properties>",
        '<property name="bvj_segment" value="enterprise" /><property name="bvj_goal" value="g" />'
        '<property name="bvj_mrr" value="3000" /><property name="bvj_scenario" value="001#9" />'
        "</properties>",
    )
    (result,) = parse_junit(junit(tmp_path / "l2-auth.xml", both))
    assert (result.scenario, result.mrr) == ("001#1", 8000)
    assert result.also == (("001#9", "enterprise", 3000),)
    report = build_report([result], parse_catalogue(catalogue), {"auth_tests": "identity"})
    by_id = {s.id: s for s in report.scenarios}
    assert by_id["001#1"].passed == {"L2": 1}
    assert by_id["001#9"].passed == {"L2": 1}
    assert by_id["001#9"].mrr == {"enterprise": 3000}


def test_flakes_merge_across_runs_and_keep_failing_seeds(tmp_path: Path) -> None:
    path = tmp_path / "flakes.json"
    failing = junit(tmp_path / "a.xml", case("test_a", "001#1", 1, body="<failure />"))
    passing = junit(tmp_path / "b.xml", case("test_a", "001#1", 1))
    for junit_file, seed in ((failing, 11), (passing, 22), (failing, 33)):
        command = [sys.executable, "-m", "tools.report.record_flakes", str(junit_file)]
        command += ["--session=l2-auth", f"--seed={seed}", f"--flakes={path}"]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        assert f"seed {seed}" in done.stdout
    (record,) = records(load_flakes(path))
    assert (record.runs, record.failures, record.failed_seeds) == (3, 2, (11, 33))
    assert [run["failed"] for run in json.loads(path.read_text())["runs"]] == [1, 0, 1]


def test_markdown_lists_teams_coverage_uncovered_and_flaky(
    junit_dir: Path, catalogue: Path
) -> None:
    results = parse_junit(junit_dir / "l2-auth.xml")
    data = load_flakes(junit_dir / "none.json")
    merge_run(data, "l2-auth", 7, results)
    report = build_report(
        results, parse_catalogue(catalogue), {"auth_tests": "identity"}, records(data)
    )
    markdown = render_markdown(report)
    assert "| identity | L2 | 3 | 1 | 28,000 | 25.0% |" in markdown
    assert "| L2 | 2/3 |" in markdown
    assert "- 001#9 (identity): Team permission inheritance" in markdown
    assert "- `auth_tests.test_login::test_d`: 1/1, seeds 7" in markdown


def test_no_junit_file_is_an_error(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "tools.report", f"--junit={tmp_path}", f"--out={tmp_path}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert "no JUnit files" in done.stderr
    assert not (tmp_path / "report.html").exists()


@pytest.fixture
def rendered(tmp_path: Path, junit_dir: Path, catalogue: Path) -> Path:
    """`python -m tools.report` over the sample data: the out directory."""
    flakes = tmp_path / "flakes.json"
    data = load_flakes(flakes)
    merge_run(data, "l2-auth", 7, parse_junit(junit_dir / "l2-auth.xml"))
    flakes.write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "out"
    summary = tmp_path / "summary.md"
    command = [sys.executable, "-m", "tools.report", f"--junit={junit_dir}"]
    command += [f"--catalogue={catalogue}", f"--flakes={flakes}", f"--out={out}"]
    subprocess.run(
        command, cwd=ROOT, check=True, env={"GITHUB_STEP_SUMMARY": str(summary), "PATH": ""}
    )
    assert summary.read_text(encoding="utf-8") == (out / "report.md").read_text(encoding="utf-8")
    return out


def test_the_page_is_self_contained(rendered: Path) -> None:
    page = (rendered / "report.html").read_text(encoding="utf-8")
    # No script, stylesheet link or image fetched from anywhere: it opens offline.
    assert not re.search(
        r"<script|<link|<img|<iframe|url\(|https?://(?!www\.w3\.org/2000/svg)", page
    )


def test_chromium_renders_the_tables_and_charts(rendered: Path) -> None:
    try:
        chromium()
    except ChromiumMissing as exc:
        pytest.fail(str(exc))  # a missing browser is a failure, not a skip
    dom = dump_dom(rendered / "report.html")
    for table in ("teams", "scenarios", "uncovered", "flakes"):
        assert re.search(rf'<table id="{table}">.*?<tbody><tr', dom, re.S), table
    for chart in ("coverage", "mrr", "slowest", "flakes"):
        assert re.search(rf'<svg [^>]*id="chart-{chart}"[^>]*>.*?<rect class="bar"', dom, re.S)
    assert "001#9" in dom  # the uncovered scenario is listed
    png = rendered / "report.png"
    screenshot(rendered / "report.html", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_test_run_by_two_sessions_at_one_level_counts_once_from_the_newest(
    tmp_path: Path,
) -> None:
    old = junit(tmp_path / "l2.xml", case("test_a", "001#1", 1, body="<failure />"))
    new = junit(tmp_path / "l2-auth.xml", case("test_a", "001#1", 1))
    os.utime(old, (1, 1))
    (result,) = latest_results([new, old])
    assert (result.session, result.outcome) == ("l2-auth", "passed")
