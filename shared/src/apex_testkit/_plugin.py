"""The apex-testkit pytest plugin (entry point pytest11): options, markers, the run's
lifetime, level selection and a summary of the servers used.

The xdist controller (or the single pytest process) owns the run; workers join it
through workerinput, so the whole session shares one server per service.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from apex_testkit._provisioning import SERVICES, ServiceUnavailable
from apex_testkit._run import Run
from apex_testkit._settings import RUN, SETTINGS, KitSettings
from apex_testkit._target import TargetError

pytest_plugins = ["apex_testkit._collection", "apex_testkit._fixtures"]

RUN_DIR_KEY = "apex_testkit_run_dir"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("apex", "Apex test kit")
    group.addoption(
        "--level",
        dest="apex_level",
        metavar="L2|L3|L4",
        help="wiring of the system under test; selects the tests marked for it "
        "(env APEX_TEST_LEVEL; default L2)",
    )
    group.addoption(
        "--target",
        dest="apex_target",
        metavar="FILE",
        help="TOML file with the deployment's URLs, for L4 (env APEX_TEST_TARGET)",
    )
    group.addoption(
        "--services",
        dest="apex_services",
        metavar="SPEC",
        help="provider chain per service, e.g. redis=docker,postgres=local|embedded "
        "(env APEX_TEST_SERVICES; default url|local|embedded|docker)",
    )
    parser.addini(
        "apex_test_packages",
        type="linelist",
        help="import names to treat as test packages besides the installed ones",
    )
    group.addoption(
        "--perf",
        dest="apex_perf",
        action="store_true",
        help="also run benchmarks (marker perf; env APEX_TEST_PERF=1)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Tests are plain `async def` with function-scoped loops, also when a package runs
    # from site-packages with no ini file of ours (pip install apex-auth-tests); an
    # explicit --asyncio-mode still wins.
    if config.getoption("asyncio_mode", None) is None:
        config.option.asyncio_mode = "auto"
    config.stash[SETTINGS] = KitSettings.from_config(config)
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        config.stash[RUN] = Run.attach(workerinput[RUN_DIR_KEY])
    else:
        config.stash[RUN] = Run.create()
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(config), "apex_testkit_xdist")


class _XdistHooks:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[RUN_DIR_KEY] = str(self.config.stash[RUN].path)


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(RUN, None)
    if run is not None:
        run.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A service no provider could supply, or a target lacking a key, is reported as its
    message alone: the traceback through the kit says nothing the message does not."""
    report: pytest.TestReport = yield
    if call.excinfo is not None and call.excinfo.errisinstance((ServiceUnavailable, TargetError)):
        report.longrepr = f"{call.excinfo.typename}: {call.excinfo.value}"
    return report


def pytest_report_header(config: pytest.Config) -> str:
    settings = config.stash[SETTINGS]
    target = f", target {settings.target.path}" if settings.target else ""
    return f"apex-testkit: level {settings.level}{target}"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    run = config.stash.get(RUN, None)
    if run is None or not run.owner:
        return
    lines = []
    for name in SERVICES:
        server = run.read(f"server-{name}")
        if server and "error" not in server:
            version = server["version"] or "version unknown"
            lines.append(
                f"{name}: {server['provider']} {server['url']} ({version}), "
                f"ready in {server['ready_seconds']:.3f} s"
            )
    if lines:
        terminalreporter.write_sep("-", "apex-testkit servers")
        for line in lines:
            terminalreporter.write_line(line)
