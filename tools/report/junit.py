"""JUnit XML files written by the nox sessions (`reports/junit/<session>.xml`) as test results."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

__all__ = ["TestResult", "latest_results", "level_of", "parse_junit"]


@dataclasses.dataclass(frozen=True)
class TestResult:
    """One testcase of one session's run, with its bvj marker (empty when unmarked)."""

    session: str  # "l2-auth": the JUnit file's stem
    module: str  # top-level package of the test: "auth_tests" (from the classname)
    nodeid: str  # "auth_tests.test_login::test_x[param]"
    outcome: str  # "passed", "failed", "error", "skipped"
    seconds: float
    segment: str = ""
    goal: str = ""
    mrr: int = 0
    scenario: str = ""
    # (scenario, segment, mrr) of the test's further bvj markers, when it has several.
    also: tuple[tuple[str, str, int], ...] = ()

    @property
    def level(self) -> str:
        """ "L2", "L3", "L4" from the session name, "" for selftest, unit, ..."""
        return level_of(self.session)


def level_of(session: str) -> str:
    """The level a session runs at: `l3-auth` -> "L3"; "" for sessions without a level."""
    head = session.split("-", 1)[0]
    return head.upper() if head in ("l2", "l3", "l4") else ""


def _module(classname: str) -> tuple[str, str]:
    """(top-level package, dotted module) of a classname, with any venv prefix dropped.

    Installed packages show as `.nox.l2-auth.lib.python3.11.site-packages.auth_tests.test_x`.
    """
    parts = classname.split(".site-packages.", 1)[-1].strip(".").split(".")
    return parts[0], ".".join(parts)


def _outcome(case: ET.Element) -> str:
    for tag, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        if case.find(tag) is not None:
            return outcome
    return "passed"


def parse_junit(path: Path) -> list[TestResult]:
    """Every testcase of one JUnit file; a file that is not JUnit XML raises ValueError."""
    try:
        # Our own sessions' output, not untrusted input.
        root = ET.parse(path).getroot()  # noqa: S314
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not valid JUnit XML: {exc}") from exc
    if root.tag not in ("testsuites", "testsuite"):
        raise ValueError(f"{path}: root element <{root.tag}>, expected <testsuites>")
    results = []
    for case in root.iter("testcase"):
        groups = _bvj_groups((p.get("name", ""), p.get("value", "")) for p in case.iter("property"))
        props = groups[0] if groups else {}
        module, dotted = _module(case.get("classname", ""))
        results.append(
            TestResult(
                session=path.stem,
                module=module,
                nodeid=f"{dotted}::{case.get('name', '')}",
                outcome=_outcome(case),
                seconds=float(case.get("time", "0") or 0),
                segment=props.get("bvj_segment", ""),
                goal=props.get("bvj_goal", ""),
                mrr=_mrr(props),
                scenario=props.get("bvj_scenario", ""),
                also=tuple(
                    (g.get("bvj_scenario", ""), g.get("bvj_segment", ""), _mrr(g))
                    for g in groups[1:]
                ),
            )
        )
    return results


def _mrr(group: dict[str, str]) -> int:
    value = group.get("bvj_mrr", "0")
    return int(float(value)) if value else 0


def _bvj_groups(properties: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """The testcase's `bvj_*` properties as one dict per bvj marker: a marker's run of
    properties ends where a name comes again."""
    groups: list[dict[str, str]] = []
    for name, value in properties:
        if not name.startswith("bvj_"):
            continue
        if not groups or name in groups[-1]:
            groups.append({})
        groups[-1][name] = value
    return groups


def latest_results(files: Iterable[Path]) -> list[TestResult]:
    """The results of `files`, read oldest first (by modification time), keeping one result
    per test and level: `l2` and `l2-auth` both ran auth_tests at L2, and the newer run
    counts. Sessions without a level (selftest, unit) are keyed by session."""
    latest: dict[tuple[str, str], TestResult] = {}
    for path in sorted(files, key=lambda p: (p.stat().st_mtime, p.name)):
        for result in parse_junit(path):
            latest[(result.level or result.session, result.nodeid)] = result
    return list(latest.values())
