"""--perf (env APEX_TEST_PERF=1): also run the benchmarks (tests marked `perf`).

Declared, parsed and applied here: without it, the run deselects every test marked
`perf` (`nox -s bench` passes it).
"""

from __future__ import annotations

import os

import pytest

from apex_testkit._collection import deselect
from apex_testkit._settings import SETTINGS

ENV = "APEX_TEST_PERF"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("apex", "Apex test kit").addoption(
        "--perf",
        dest="apex_perf",
        action="store_true",
        help=f"also run benchmarks (marker perf; env {ENV}=1)",
    )


def parse(config: pytest.Config) -> bool:
    """The flag, or the env variable set to 1."""
    return bool(config.getoption("apex_perf")) or os.environ.get(ENV) == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.stash[SETTINGS].perf:
        deselect(config, items, lambda item: item.get_closest_marker("perf") is not None)
