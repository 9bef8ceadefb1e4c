"""Collection rules for test packages: which modules are test packages' (installed ones,
and the ini option apex_test_packages), every test names its levels and its BVJ (carried
into reports). The options that select tests (--level, --perf) use `deselect`."""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from functools import cache
from importlib.metadata import entry_points

import pytest

from apex_testkit._level import Level

LEVEL_MARKERS = tuple(level.value for level in Level)
BVJ_FIELDS = ("segment", "goal", "mrr", "scenario")
SEGMENTS = ("free", "early", "mid", "enterprise", "platform")
# 001#12 (item 12 of seed 001), 002#4, 004#5, 003:<row name> (DESIGN/CATALOGUE ids).
SCENARIO = re.compile(r"^(00[124]#\d+(-\d+)?|003:.+)$")

MARKERS = {
    "L2": "runs with the SUT in-process (level L2)",
    "L3": "runs against the SUT as separate processes, with faults (level L3)",
    "L4": "runs against a deployed target (level L4)",
    "bvj(segment, goal, mrr, scenario)": "business value: customer segment, goal, MRR, "
    "scenario id from the catalogue",
    "destructive": "changes or breaks shared state: never runs at L4",
    "slow": "must wait out real time (seconds, not milliseconds); still runs in every "
    "level session, `-m 'not slow'` leaves it out of a quick loop",
    "perf": "a benchmark: measured and reported, runs only with --perf (nox -s bench)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "apex_test_packages",
        type="linelist",
        help="import names to treat as test packages besides the installed ones",
    )


def pytest_configure(config: pytest.Config) -> None:
    for marker, text in MARKERS.items():
        config.addinivalue_line("markers", f"{marker}: {text}")


@cache
def _installed_test_packages() -> frozenset[str]:
    return frozenset(ep.value.split(":")[0] for ep in entry_points(group="apex_test_packages"))


def test_packages(config: pytest.Config) -> frozenset[str]:
    """Import names of the test packages: installed ones (entry point group
    apex_test_packages) and those the ini option apex_test_packages adds."""
    return _installed_test_packages() | frozenset(config.getini("apex_test_packages"))


def in_test_package(node: pytest.Item | pytest.Collector) -> bool:
    module = getattr(node, "module", None)
    name = getattr(module, "__name__", "")
    return name.split(".")[0] in test_packages(node.config)


def problems(item: pytest.Item) -> list[str]:
    """What a test of a test package lacks; empty when it is well declared."""
    found = []
    if not any(item.get_closest_marker(level) for level in LEVEL_MARKERS):
        found.append(f"no level marker (one or more of {', '.join(LEVEL_MARKERS)})")
    bvj = item.get_closest_marker("bvj")
    if bvj is None:
        found.append('no bvj(segment=..., goal=..., mrr=..., scenario="001#10") marker')
        return found
    missing = [name for name in BVJ_FIELDS if name not in bvj.kwargs]
    if missing or bvj.args:
        found.append(f"bvj needs keyword arguments {', '.join(BVJ_FIELDS)}; missing {missing}")
        return found
    if str(bvj.kwargs["segment"]).lower() not in SEGMENTS:
        found.append(f"bvj segment {bvj.kwargs['segment']!r} is not one of {', '.join(SEGMENTS)}")
    if not SCENARIO.match(str(bvj.kwargs["scenario"])):
        found.append(f"bvj scenario {bvj.kwargs['scenario']!r} is not a catalogue id like 001#10")
    return found


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Turn an undeclared test into a collection error of its module, naming the test."""
    report: pytest.CollectReport = yield
    if report.passed and in_test_package(collector):
        lines = [
            f"{item.nodeid}: {problem}"
            for item in report.result
            if isinstance(item, pytest.Item)
            for problem in problems(item)
        ]
        if lines:
            report.outcome = "failed"
            report.longrepr = "apex-testkit: tests of a test package must declare " + (
                "their levels and business value:\n  " + "\n  ".join(lines)
            )
    return report


def deselect(
    config: pytest.Config, items: list[pytest.Item], drop: Callable[[pytest.Item], bool]
) -> None:
    """Remove the items `drop` says stay out of the run, reported as deselected (how
    --level and --perf apply)."""
    dropped = [item for item in items if drop(item)]
    if dropped:
        dropped_ids = {id(item) for item in dropped}
        items[:] = [item for item in items if id(item) not in dropped_ids]
        config.hook.pytest_deselected(items=dropped)


def annotate(item: pytest.Item) -> None:
    """Carry the BVJ into reports (JUnit XML properties): every bvj marker of the test,
    the closest first, each as its run of `bvj_<field>` properties (a test that proves two
    scenarios counts for both)."""
    for bvj in item.iter_markers("bvj"):
        item.user_properties.extend((f"bvj_{key}", str(value)) for key, value in bvj.kwargs.items())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        annotate(item)
