"""The test report: JUnit files and bvj markers plus the scenario catalogue, as one
self-contained HTML page and a Markdown summary (`nox -s report`), with flake rates from
`reports/flakes.json` (`nox -s flakes`)."""

from __future__ import annotations

from tools.report.aggregate import Report, ScenarioRow, TeamRow, build_report
from tools.report.catalogue import Scenario, parse_catalogue
from tools.report.flakes import FlakeRecord, load_flakes, merge_run
from tools.report.html_page import render_html
from tools.report.junit import TestResult, parse_junit
from tools.report.markdown_summary import render_markdown

__all__ = [
    "FlakeRecord",
    "Report",
    "Scenario",
    "ScenarioRow",
    "TeamRow",
    "TestResult",
    "build_report",
    "load_flakes",
    "merge_run",
    "parse_catalogue",
    "parse_junit",
    "render_html",
    "render_markdown",
]
