"""The apex-testkit pytest plugin (entry point pytest11): the run's lifetime and settings.

It loads the kit's other plugins: collection rules (`_collection`), one plugin per option
(`_options/`: --level, --target, --services, --perf, --test-timeout, --test-order) and the
fixtures (`_fixtures`).

The xdist controller (or the single pytest process) owns the run; workers join it
through workerinput, so the whole session shares one server per service.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from apex_testkit._level import WrongLevel
from apex_testkit._options import PLUGINS as OPTIONS
from apex_testkit._options import level, order, perf, services, target, timeout
from apex_testkit._provisioning import SERVERS, ServiceUnavailable
from apex_testkit._provisioning._chain import check_server
from apex_testkit._run import Run, RunDirError
from apex_testkit._settings import RUN, SETTINGS, KitSettings
from apex_testkit._target import TargetError

pytest_plugins = ["apex_testkit._collection", *OPTIONS, "apex_testkit._fixtures"]

RUN_DIR_KEY = "apex_testkit_run_dir"
# Errors whose message says it all: reported without the traceback through the kit.
KIT_ERRORS = (TargetError, WrongLevel)
# The kit's errors this process has reported in full: later tests get their brief.
_REPORTED = pytest.StashKey[set[str]]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Tests are plain `async def` with function-scoped loops, also when a package runs
    # from site-packages with no ini file of ours (pip install apex-auth-tests); an
    # explicit --asyncio-mode still wins.
    if config.getoption("asyncio_mode", None) is None:
        config.option.asyncio_mode = "auto"
    # In this order, so that with several bad values the first one is named first.
    chosen = level.parse(config)
    config.stash[SETTINGS] = KitSettings(
        level=chosen,
        target=target.parse(config, chosen),
        chains=services.parse(config),
        perf=perf.parse(config),
        test_timeout=timeout.parse(config),
        longest_first=order.parse(config),
    )
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        config.stash[RUN] = Run.attach(workerinput[RUN_DIR_KEY])
    else:
        try:
            config.stash[RUN] = Run.create()
        except RunDirError as exc:
            raise pytest.UsageError(str(exc)) from None
    config.stash[_REPORTED] = set()
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
    """A server no provider could supply, a server of the run that died, a target lacking
    a key, or something the level does not have is reported as its message alone: the
    traceback through the kit says nothing the message does not. A server's error is told
    in full once per process, then in one line. A failure while a server of the run is
    down is put down to it."""
    report: pytest.TestReport = yield
    excinfo = call.excinfo
    if excinfo is not None and excinfo.errisinstance(KIT_ERRORS):
        report.longrepr = f"{excinfo.typename}: {excinfo.value}"
    elif excinfo is not None and excinfo.errisinstance(ServiceUnavailable):
        report.longrepr = _once(item.config, excinfo.typename, excinfo.value)
    elif report.failed and "apex_worker" in getattr(item, "fixturenames", ()):
        # Only on failure: the state of the run's server processes, read from /proc.
        run = item.config.stash[RUN]
        down = [d for d in (check_server(run, s) for s in SERVERS.values()) if d]
        if down:
            report.longrepr = "\n".join(_once(item.config, "ServerDown", d) for d in down)
    return report


def _once(config: pytest.Config, typename: str, exc: BaseException) -> str:
    reported = config.stash[_REPORTED]
    message = str(exc)
    if message in reported:
        return f"{typename}: {getattr(exc, 'brief', message)}"
    reported.add(message)
    return f"{typename}: {message}"
