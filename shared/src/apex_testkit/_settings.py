"""The kit's settings for one run: level, target, provider chains; options or env."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field

import pytest

from apex_testkit._provisioning import PROVIDERS, SERVICES, parse_services
from apex_testkit._run import Run
from apex_testkit._target import Target, TargetError, load_target


class Level(enum.StrEnum):
    """How the system under test is wired (DESIGN.md § Levels)."""

    L2 = "L2"  # imported, in the test process
    L3 = "L3"  # separate OS processes over real sockets
    L4 = "L4"  # a deployment named by --target


@dataclass(frozen=True)
class KitSettings:
    level: Level
    target: Target | None
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    perf: bool = False

    def chain(self, service: str) -> tuple[str, ...]:
        return self.chains.get(service, PROVIDERS)

    @classmethod
    def from_config(cls, config: pytest.Config) -> KitSettings:
        """Options win over env variables; every bad value is a UsageError that says why."""
        raw_level = config.getoption("apex_level") or os.environ.get("APEX_TEST_LEVEL") or "L2"
        try:
            level = Level(raw_level.upper())
        except ValueError:
            raise pytest.UsageError(
                f"--level/APEX_TEST_LEVEL must be one of L2, L3, L4, not {raw_level!r}"
            ) from None
        target_path = config.getoption("apex_target") or os.environ.get("APEX_TEST_TARGET")
        target = None
        if target_path:
            try:
                target = load_target(target_path)
            except TargetError as exc:
                raise pytest.UsageError(str(exc)) from None
        elif level is Level.L4:
            raise pytest.UsageError(
                "--level L4 needs --target FILE (or APEX_TEST_TARGET): a TOML file with the "
                "deployment's URLs. `nox -s l4` makes one by starting a local stack."
            )
        spec = config.getoption("apex_services") or os.environ.get("APEX_TEST_SERVICES", "")
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
        perf = bool(config.getoption("apex_perf")) or os.environ.get("APEX_TEST_PERF") == "1"
        return cls(level=level, target=target, chains=chains, perf=perf)


SETTINGS = pytest.StashKey[KitSettings]()
RUN = pytest.StashKey[Run]()
