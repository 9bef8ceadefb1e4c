"""The kit's settings for one run (level, target, provider chains, perf), as the options
in `apex_testkit._options` parsed them, and where the run keeps them (config stash)."""

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

    def chain(self, server: str) -> tuple[str, ...]:
        """The providers to try for `server`, in order (--services, else all)."""
        return self.chains.get(server, PROVIDERS)


SETTINGS = pytest.StashKey[KitSettings]()
RUN = pytest.StashKey[Run]()
