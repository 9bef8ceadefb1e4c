"""pytest plugin of the affected-tests map (`-p tools.affected.contexts`): every line a test
runs is recorded under the test's key as coverage's dynamic context.

The nox sessions measure with coverage's process hook (COVERAGE_PROCESS_START), not
pytest-cov, so the plugin switches the context of that running Coverage object: from the
test's set-up to its teardown, everything the process runs counts for the test (the app at
L2 is in process; other tasks and threads too), and everything else (imports, collection,
session start and end) stays in the empty context. xdist's workers load the plugin too.
"""

from __future__ import annotations

from collections.abc import Generator

import coverage
import pytest

from tools.shards import key_of_nodeid


def pytest_configure(config: pytest.Config) -> None:
    if coverage.Coverage.current() is None:
        raise pytest.UsageError(
            "tools.affected.contexts needs coverage running in the process "
            "(COVERAGE_PROCESS_START, as `nox -s affected -- --record` sets it)"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    current = coverage.Coverage.current()
    if current is None:  # the controller of an xdist run: its workers run the tests
        return (yield)
    current.switch_context(key_of_nodeid(item.nodeid))
    try:
        return (yield)
    finally:
        current.switch_context("")
