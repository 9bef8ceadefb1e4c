"""--level L2|L3|L4 (env APEX_TEST_LEVEL, default L2): how the platform is wired.

Declared here, parsed here, applied here: the run keeps only the tests of a test package
marked for the level (and never a `destructive` one at L4), and the `platform` fixture
wires the platform for it (`apex_testkit._sut`: one module per level).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from apex_testkit._collection import deselect, in_test_package
from apex_testkit._level import Level
from apex_testkit._settings import RUN, SETTINGS, KitSettings
from apex_testkit._sut import Platform, platform_for, process_summary
from apex_testkit._worker import Worker

ENV = "APEX_TEST_LEVEL"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("apex", "Apex test kit").addoption(
        "--level",
        dest="apex_level",
        metavar="L2|L3|L4",
        help=f"wiring of the system under test; selects the tests marked for it "
        f"(env {ENV}; default L2)",
    )


def parse(config: pytest.Config) -> Level:
    """The option, else the env variable, else L2."""
    raw = config.getoption("apex_level") or os.environ.get(ENV) or "L2"
    try:
        return Level(raw.upper())
    except ValueError:
        raise pytest.UsageError(f"--level/{ENV} must be one of L2, L3, L4, not {raw!r}") from None


def pytest_report_header(config: pytest.Config) -> str:
    settings = config.stash[SETTINGS]
    target = f", target {settings.target.path}" if settings.target else ""
    return f"apex-testkit: level {settings.level}{target}"


def not_at_level(item: pytest.Item, level: Level) -> bool:
    """Whether a test of a test package stays out of a run at `level`: it is not marked
    for it, or it is destructive and the level is a deployment's."""
    if not in_test_package(item):
        return False
    return not item.get_closest_marker(level.value) or (
        level is Level.L4 and item.get_closest_marker("destructive") is not None
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    level = config.stash[SETTINGS].level
    deselect(config, items, lambda item: not_at_level(item, level))


@pytest.fixture(scope="session")
def apex_level(apex_settings: KitSettings) -> Level:
    """The level this run wires the platform for."""
    return apex_settings.level


@pytest.fixture(scope="session")
def platform(apex_settings: KitSettings, apex_worker: Worker) -> Iterator[Platform]:
    """The platform wired for the run's level: `async with platform.client("auth") as c`."""
    wired = platform_for(apex_settings, apex_worker)
    yield wired
    wired.close()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """L3: the service processes the workers started, and what they cost (the run's owner
    only: every worker has stored its tally by then)."""
    run = config.stash.get(RUN, None)
    lines = process_summary(run) if run is not None and run.owner else []
    if lines:
        terminalreporter.write_sep("-", "apex-testkit service processes (L3)")
        for line in lines:
            terminalreporter.write_line(line)
