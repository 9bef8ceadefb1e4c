"""The apex-testkit pytest plugin (entry point pytest11): the run's lifetime and settings.

It loads the kit's other plugins: collection rules (`_collection`), one plugin per option
(`_options/`: --level, --target, --services, --perf) and the fixtures (`_fixtures`).

The xdist controller (or the single pytest process) owns the run; workers join it
through workerinput, so the whole session shares one server per service.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from apex_testkit._level import WrongLevel
from apex_testkit._options import PLUGINS as OPTIONS
from apex_testkit._options import level, perf, services, target
from apex_testkit._provisioning import ServiceUnavailable
from apex_testkit._run import Run
from apex_testkit._settings import RUN, SETTINGS, KitSettings
from apex_testkit._target import TargetError

pytest_plugins = ["apex_testkit._collection", *OPTIONS, "apex_testkit._fixtures"]

RUN_DIR_KEY = "apex_testkit_run_dir"
# Errors whose message says it all: reported without the traceback through the kit.
KIT_ERRORS = (ServiceUnavailable, TargetError, WrongLevel)


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
    )
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
    """A server no provider could supply, a target lacking a key, or something the level
    does not have is reported as its message alone: the traceback through the kit says
    nothing the message does not."""
    report: pytest.TestReport = yield
    if call.excinfo is not None and call.excinfo.errisinstance(KIT_ERRORS):
        report.longrepr = f"{call.excinfo.typename}: {call.excinfo.value}"
    return report
