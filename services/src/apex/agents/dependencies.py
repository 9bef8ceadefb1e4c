"""Errors of the services apex.agents depends on: each one counted, logged at a bounded rate.

A dependency that is down (apex.data unreachable or hanging) fails every request to it
in a row. :class:`DependencyErrors` counts each failure in
``apex_agents_dependency_errors_total{dependency}`` and logs a warning at most once per
``APEX_ERROR_LOG_INTERVAL`` seconds per dependency, saying how many failures it did not
log since the last warning (001#92: a dead dependency does not flood the log); the first
success after failures logs once that the dependency is back. :meth:`snapshot` is what
``GET /admin/dependencies`` answers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

__all__ = ["DependencyErrors"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _State:
    """One dependency's failures: counted, logged, not logged since the last warning."""

    errors: int = 0
    logged: int = 0
    suppressed: int = 0
    last_error: str | None = None
    last_logged: float | None = None
    down: bool = False


class DependencyErrors:
    """Counts and rate-limits the warnings of failing dependencies."""

    def __init__(
        self,
        registry: CollectorRegistry,
        interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._states: dict[str, _State] = {}
        self._counter = Counter(
            "apex_agents_dependency_errors",
            "Failed requests to a dependency of the service, by dependency (e.g. data)",
            ["dependency"],
            registry=registry,
        )

    def failed(self, dependency: str, error: str) -> None:
        """Count a failure of ``dependency``; log it unless one was logged within the
        interval (then it only counts as suppressed)."""
        state = self._states.setdefault(dependency, _State())
        state.errors += 1
        state.last_error = error
        state.down = True
        self._counter.labels(dependency).inc()
        now = self._clock()
        if state.last_logged is not None and now - state.last_logged < self._interval:
            state.suppressed += 1
            return
        log.warning(
            "dependency %s failing: %s (%d more failures since the last warning)",
            dependency,
            error,
            state.suppressed,
        )
        state.logged += 1
        state.suppressed = 0
        state.last_logged = now

    def recovered(self, dependency: str) -> None:
        """``dependency`` answered: logged once after failures."""
        state = self._states.get(dependency)
        if state is not None and state.down:
            state.down = False
            log.warning("dependency %s answers again after %d failures", dependency, state.errors)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per dependency: ``{state: down|ok, errors, logged, suppressed, last_error}``."""
        return {
            name: {
                "state": "down" if state.down else "ok",
                "errors": state.errors,
                "logged": state.logged,
                "suppressed": state.suppressed,
                "last_error": state.last_error,
            }
            for name, state in sorted(self._states.items())
        }
