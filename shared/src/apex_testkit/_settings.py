"""The kit's settings for one run (level, target, provider chains, perf, test timeout, test
order), as the options in `apex_testkit._options` parsed them, and where the run keeps them
(config stash)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from apex_testkit._level import Level
from apex_testkit._provisioning import PROVIDERS
from apex_testkit._run import Run
from apex_testkit._target import Target


@dataclass(frozen=True)
class KitSettings:
    """What a run was asked for: each field is one option (`_options/<name>.py`)."""

    level: Level
    target: Target | None
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    perf: bool = False
    test_timeout: float = 300.0  # seconds per test phase; 0 = no limit
    longest_first: bool = True  # xdist workers sort by the last runs' durations

    def chain(self, server: str) -> tuple[str, ...]:
        """The providers to try for `server`, in order (--services, else all)."""
        return self.chains.get(server, PROVIDERS)


SETTINGS = pytest.StashKey[KitSettings]()
RUN = pytest.StashKey[Run]()
