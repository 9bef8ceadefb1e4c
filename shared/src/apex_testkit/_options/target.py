"""--target FILE (env APEX_TEST_TARGET): the TOML file naming a deployment's URLs (L4).

Declared and parsed here; L4 needs it. Applied by the `platform` fixture at L4
(`apex_testkit._sut.deployed`); a test that needs a key the file lacks fails with the
TargetError alone (the kit's plugin reports it without a traceback).
"""

from __future__ import annotations

import os

import pytest

from apex_testkit._level import Level
from apex_testkit._target import Target, TargetError, load_target

ENV = "APEX_TEST_TARGET"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("apex", "Apex test kit").addoption(
        "--target",
        dest="apex_target",
        metavar="FILE",
        help=f"TOML file with the deployment's URLs, for L4 (env {ENV})",
    )


def parse(config: pytest.Config, level: Level) -> Target | None:
    """The target file the option (else the env variable) names, read and checked."""
    path = config.getoption("apex_target") or os.environ.get(ENV)
    if path:
        try:
            return load_target(path)
        except TargetError as exc:
            raise pytest.UsageError(str(exc)) from None
    if level is Level.L4:
        raise pytest.UsageError(
            f"--level L4 needs --target FILE (or {ENV}): a TOML file with the "
            "deployment's URLs. `nox -s l4` makes one by starting a local stack."
        )
    return None
