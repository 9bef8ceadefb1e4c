"""The system under test, wired by level: a test asks for a client, the level decides
what is behind it.

- `platform`: the `Platform` every level implements (and its level checks), and the
  `RunningService` a test starts for itself.
- `in_process` (L2): the service imported and served in the test's own event loop.
- `processes` (L3): the service as a separate process (`python -m <module> --fd N`).
- `deployed` (L4): the deployment a --target file names.
- `wiring`: what each instance is wired to, read from apex.topology.
"""

from __future__ import annotations

from apex_testkit._level import Level
from apex_testkit._settings import KitSettings
from apex_testkit._sut.deployed import DeployedPlatform
from apex_testkit._sut.in_process import InProcessPlatform
from apex_testkit._sut.platform import Platform, ProxiedService, RunningService
from apex_testkit._sut.processes import ProcessPlatform, ServiceProcess, process_summary
from apex_testkit._worker import Worker


def platform_for(settings: KitSettings, worker: Worker) -> Platform:
    """The platform wired for the run's level (L4: the run's target)."""
    if settings.target is not None and settings.level is Level.L4:
        return DeployedPlatform(settings.target)
    if settings.level is Level.L3:
        return ProcessPlatform(worker)
    return InProcessPlatform(worker)


__all__ = [
    "DeployedPlatform",
    "InProcessPlatform",
    "Platform",
    "ProcessPlatform",
    "ProxiedService",
    "RunningService",
    "ServiceProcess",
    "platform_for",
    "process_summary",
]
