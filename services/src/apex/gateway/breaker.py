"""Circuit breakers for the gateway's dependencies (auth over HTTP, PostgreSQL).

After ``threshold`` consecutive failures a breaker opens: calls fail fast with
:class:`CircuitOpen` for ``open_seconds``. Then it is half-open and lets exactly one
trial call through; its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["Breaker", "BreakerState", "CircuitOpen"]

T = TypeVar("T")


class BreakerState(enum.IntEnum):
    """Values of the ``apex_gateway_breaker_state`` gauge."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitOpen(Exception):
    """A call was refused without trying: the dependency's breaker is open."""

    def __init__(self, dependency: str) -> None:
        super().__init__(f"circuit open: {dependency}")
        self.dependency = dependency


class Breaker:
    """One dependency's breaker; ``clock`` is injectable for tests."""

    def __init__(
        self,
        dependency: str,
        *,
        threshold: int,
        open_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dependency = dependency
        self.threshold = threshold
        self.open_seconds = open_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> BreakerState:
        """Closed, open, or half-open (the open period is over; a trial may run)."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self.open_seconds:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def acquire(self) -> None:
        """Admit one call or raise CircuitOpen; pair with success() or failure()."""
        state = self.state
        if state is BreakerState.OPEN or (state is BreakerState.HALF_OPEN and self._trial_running):
            raise CircuitOpen(self.dependency)
        if state is BreakerState.HALF_OPEN:
            self._trial_running = True

    def reset(self) -> None:
        """Closed with no failure counted, as a new breaker."""
        self.success()

    def success(self) -> None:
        """The admitted call worked: close the breaker."""
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def failure(self) -> None:
        """The admitted call failed: count it, and open when over the threshold."""
        self._trial_running = False
        if self._opened_at is not None:
            # A failed trial (or a late failure of a call admitted before opening).
            self._opened_at = self._clock()
            return
        self._failures += 1
        if self._failures >= self.threshold:
            self._opened_at = self._clock()

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        failures: tuple[type[BaseException], ...] = (Exception,),
    ) -> T:
        """``await fn()`` through the breaker; exceptions in ``failures`` count against it."""
        self.acquire()
        try:
            result = await fn()
        except failures:
            self.failure()
            raise
        except BaseException:
            # Not the dependency's fault (bad input, cancellation): free a trial slot.
            self._trial_running = False
            raise
        self.success()
        return result
