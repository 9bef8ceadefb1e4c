"""--services SPEC (env APEX_TEST_SERVICES): the provider chain of each server, e.g.
`redis=docker,postgres=local|embedded` (default url|local|embedded|docker).

Declared and parsed here; applied when a worker first needs a server (the run starts it
from the first provider of its chain that works); the run's summary says which provider
supplied each server.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from apex_testkit._masking import mask_secrets
from apex_testkit._provisioning import SERVERS, SERVICES, parse_services
from apex_testkit._provisioning._chain import check_server
from apex_testkit._settings import RUN

ENV = "APEX_TEST_SERVICES"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("apex", "Apex test kit").addoption(
        "--services",
        dest="apex_services",
        metavar="SPEC",
        help="provider chain per service, e.g. redis=docker,postgres=local|embedded "
        f"(env {ENV}; default url|local|embedded|docker)",
    )


def parse(config: pytest.Config) -> dict[str, tuple[str, ...]]:
    """Server name -> its providers in order, for the servers the spec names."""
    spec = config.getoption("apex_services") or os.environ.get(ENV, "")
    try:
        chains = parse_services(spec)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    unknown = sorted(set(chains) - set(SERVICES))
    if unknown:
        raise pytest.UsageError(
            f"--services names unknown service(s) {', '.join(unknown)}; "
            f"known: {', '.join(SERVICES)}"
        )
    return chains


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Which provider supplied each server (and replica) of the run (the run's owner only)."""
    run = config.stash.get(RUN, None)
    if run is None or not run.owner:
        return
    lines = []
    for name, service in SERVERS.items():
        server = run.read(f"server-{name}")
        if server and "error" not in server:
            version = server["version"] or "version unknown"
            line = (
                f"{name}: {server['provider']} {mask_secrets(server['url'])} ({version}), "
                f"ready in {server['ready_seconds']:.3f} s"
            )
            down = check_server(run, service)
            lines.append(f"{line}; {down.summary}" if down else line)
    if lines:
        terminalreporter.write_sep("-", "apex-testkit servers")
        for line in lines:
            terminalreporter.write_line(line)
