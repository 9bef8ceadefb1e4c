"""The levels the platform is wired at, and the one check that says a test asked for
something its level does not have (the "L2/L3 only" guard, written once)."""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Level(enum.StrEnum):
    """How the system under test is wired (DESIGN.md § Levels)."""

    L2 = "L2"  # imported, in the test process
    L3 = "L3"  # separate OS processes over real sockets
    L4 = "L4"  # a deployment named by --target


# Where the platform is ours to reconfigure, start, and stand fakes in for its third
# parties; where its services are processes (to kill, or to put a fault proxy before).
OWN_PLATFORM = (Level.L2, Level.L3)
PROCESSES = (Level.L3,)


class WrongLevel(RuntimeError):
    """A test asked for something that does not exist at the run's level."""


def require_level(level: Level, levels: Iterable[Level], what: str) -> None:
    """Raise WrongLevel, naming `what` and the levels that have it, unless `level` is one."""
    allowed = tuple(levels)
    if level not in allowed:
        names = "/".join(allowed)
        raise WrongLevel(
            f"{what} exists at {names} only, and this run is {level}: "
            f"mark the test for {names} only"
        )
