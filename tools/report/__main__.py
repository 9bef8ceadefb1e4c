"""Build the report: `python -m tools.report [--junit DIR] [--catalogue FILE]
[--flakes FILE] [--bench-history FILE] [--noise FRACTION] [--out DIR] [--screenshot PNG]`.

Writes OUT/report.html and OUT/report.md, and appends the Markdown to
$GITHUB_STEP_SUMMARY when that is set; with --screenshot, a PNG of the page rendered
by headless Chromium (an error when Chromium is missing). A test run at one level by
several sessions (`l2`, `l2-auth`) counts once, from the newest file. No JUnit file at
all is an error (exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tools.report.aggregate import build_report
from tools.report.bench import NOISE, compare, load_history
from tools.report.browser import screenshot
from tools.report.catalogue import parse_catalogue
from tools.report.flakes import load_flakes, records
from tools.report.html_page import render_html
from tools.report.junit import latest_results
from tools.report.markdown_summary import render_markdown
from tools.report.sources import (
    BENCH_HISTORY,
    CATALOGUE,
    FLAKES,
    JUNIT_DIR,
    OUT_DIR,
    junit_files,
    package_teams,
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.report", description=__doc__)
    parser.add_argument("--junit", type=Path, default=JUNIT_DIR, help="dir of JUnit *.xml")
    parser.add_argument("--catalogue", type=Path, default=CATALOGUE)
    parser.add_argument("--flakes", type=Path, default=FLAKES, help="read when it exists")
    parser.add_argument(
        "--bench-history", type=Path, default=BENCH_HISTORY, help="read when it exists"
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=NOISE,
        help="benchmark changes within this fraction are noise (default %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--screenshot", type=Path, help="write a PNG of the page here")
    args = parser.parse_args(argv)
    files = junit_files(args.junit)
    if not files:
        print(
            f"report: no JUnit files in {args.junit}/ (run a test session first)", file=sys.stderr
        )
        return 2
    results = latest_results(files)
    try:
        bench = compare(load_history(args.bench_history), args.noise)
    except ValueError as error:
        print(f"report: {error}", file=sys.stderr)
        return 2
    report = build_report(
        results,
        parse_catalogue(args.catalogue),
        package_teams(),
        records(load_flakes(args.flakes)),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = args.out / "report.html", args.out / "report.md"
    html_path.write_text(render_html(report, bench=bench), encoding="utf-8")
    markdown = render_markdown(report, bench=bench)
    md_path.write_text(markdown, encoding="utf-8")
    if summary := os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(markdown)
    if args.screenshot:
        screenshot(html_path, args.screenshot)
        print(f"report: screenshot -> {args.screenshot}")
    print(f"report: {len(results)} tests from {len(files)} JUnit files -> {html_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
