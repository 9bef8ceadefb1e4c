"""--test-order longest-first|as-collected (env APEX_TEST_ORDER; default longest-first):
the order xdist workers get their tests in, so that they finish together.

Declared, parsed and applied here, with the durations it reads. Every run that reports
its tests (the single pytest process, or xdist's controller) records how long each test
took, setup and teardown included, in pytest's cache (`.pytest_cache`, key
`apex_testkit/durations/<level>`), merged into what earlier runs recorded. Under xdist,
with `longest-first`, each worker sorts its collection by those durations, longest first:
the long tests are handed out at the start, the short ones fill the gaps at the end, and
no worker is left with a long test while the other one idles.

Random order stays meaningful: the sort is by coarse duration classes (each twice as long
as the one before, everything under 0.1 s in one) and stable, so pytest-randomly's
shuffle decides the order inside a class, and the seed still reproduces the order.
Tests with no recorded duration (new ones) go first: they may be long. The sort depends
only on the stored file and the seed, so every worker collects the same order (xdist
requires it). A run without xdist, without stored durations, with `as-collected` or
without the cache plugin (`-p no:cacheprovider`) keeps the order pytest gave.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import pytest

from apex_testkit._settings import SETTINGS

ENV = "APEX_TEST_ORDER"
LONGEST_FIRST = "longest-first"
AS_COLLECTED = "as-collected"
CHOICES = (LONGEST_FIRST, AS_COLLECTED)
CACHE_KEY = "apex_testkit/durations"
# The shortest duration class: tests under twice this are all alike (shuffled together).
SHORTEST_CLASS = 0.05


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("apex", "Apex test kit").addoption(
        "--test-order",
        dest="apex_test_order",
        metavar="|".join(CHOICES),
        help=f"xdist workers run the tests that took longest in the last run first, random "
        f"within classes of similar duration (env {ENV}; default {LONGEST_FIRST})",
    )


def parse(config: pytest.Config) -> bool:
    """Whether to sort longest first: the option, else the env variable, else yes."""
    raw = config.getoption("apex_test_order") or os.environ.get(ENV) or LONGEST_FIRST
    if raw not in CHOICES:
        raise pytest.UsageError(
            f"--test-order/{ENV} must be one of {', '.join(CHOICES)}, not {raw!r}"
        )
    return raw == LONGEST_FIRST


def record_key(nodeid: str) -> str:
    """A test's name in the durations file: its node id without the path up to
    site-packages, so that every venv (l2, l2-db) shares the record of an installed test."""
    path, sep, rest = nodeid.partition("::")
    _, found, inside = path.rpartition("site-packages/")
    return (inside if found else path) + sep + rest


def duration_class(seconds: float) -> int:
    """0 under 2 * SHORTEST_CLASS, then one more for each doubling."""
    return max(0, math.floor(math.log2(max(seconds, SHORTEST_CLASS) / SHORTEST_CLASS)))


def longest_first(nodeids: list[str], durations: Mapping[str, float]) -> list[int]:
    """The positions of `nodeids` in the order to run them: unknown tests first, then by
    duration class, longest first; the given order inside each (the sort is stable)."""

    def rank(position: int) -> float:
        seconds = durations.get(record_key(nodeids[position]))
        return -math.inf if seconds is None else -duration_class(seconds)

    return sorted(range(len(nodeids)), key=rank)


def _cache_key(config: pytest.Config) -> str:
    return f"{CACHE_KEY}/{config.stash[SETTINGS].level.value}"


def _stored(config: pytest.Config) -> dict[str, float]:
    cache = getattr(config, "cache", None)
    if cache is None:
        return {}
    stored = cache.get(_cache_key(config), {})
    if not isinstance(stored, dict):
        return {}
    return {k: float(v) for k, v in stored.items() if isinstance(v, int | float)}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Only xdist workers: one process runs every test anyway, and keeps the full shuffle.
    if getattr(config, "workerinput", None) is None or not config.stash[SETTINGS].longest_first:
        return
    durations = _stored(config)
    if durations:
        order = longest_first([item.nodeid for item in items], durations)
        items[:] = [items[position] for position in order]


def pytest_configure(config: pytest.Config) -> None:
    # Reports reach the process that reports the run: xdist's controller, or the only one.
    if getattr(config, "workerinput", None) is None and getattr(config, "cache", None):
        config.pluginmanager.register(_Recorder(config), "apex_testkit_durations")


class _Recorder:
    """Sums each test's phases, then merges them into the stored durations."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.measured: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        key = record_key(report.nodeid)
        self.measured[key] = self.measured.get(key, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        if self.measured and self.config.cache is not None:
            merged = {**_stored(self.config), **self.measured}
            self.config.cache.set(_cache_key(self.config), merged)
