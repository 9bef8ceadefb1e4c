"""A circuit breaker per LLM provider: closed, open, half-open.

A breaker is ``closed`` while its provider answers. After ``APEX_BREAKER_FAILURES``
consecutive failed calls (a call fails once its retries are spent) it ``opens``: no
request is sent to the provider. ``APEX_BREAKER_RESET`` seconds after it opened it is
``half_open``: the next call is the one trial (other calls meanwhile still skip the
provider); the trial's success closes the breaker, its failure opens it again for another
RESET. A trial that ends without an outcome (its run cancelled or timed out) frees the
trial for the next call. A breaker lives in one process (each worker process has its own).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

__all__ = ["Breaker", "State"]


class State(enum.Enum):
    """A breaker's state; ``value`` is its code in the ``apex_agents_breaker_state`` gauge."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2

    @property
    def label(self) -> str:
        """The state as ``/healthz`` names it: closed, open, half_open."""
        return self.name.lower()


class Breaker:
    """The breaker of one provider (not thread-safe: one event loop uses it)."""

    def __init__(
        self,
        failures: int,
        reset: float,
        *,
        on_open: Callable[[], object] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1 or reset <= 0:
            raise ValueError("a breaker needs failures >= 1 and reset > 0")
        self._failures = failures
        self._reset = reset
        self._on_open = on_open
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> State:
        """Closed; open; or half-open once RESET has passed since it opened."""
        if self._opened_at is None:
            return State.CLOSED
        if self._trial or self._clock() - self._opened_at >= self._reset:
            return State.HALF_OPEN
        return State.OPEN

    def allow(self) -> bool:
        """Whether a call may go to the provider now; a half-open breaker allows one trial
        (the caller must then report ``success``, ``failure`` or ``abandon``)."""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN and not self._trial:
            self._trial = True
            return True
        return False

    def success(self) -> None:
        """The provider answered: the breaker closes, the failure count starts again."""
        self._consecutive = 0
        self._opened_at = None
        self._trial = False

    def failure(self) -> None:
        """A call failed (after its retries): count it; open at the threshold, or again
        after a failed trial."""
        if self._trial:
            self._open()
            return
        if self._opened_at is not None:
            return  # a call that began before another call's failure opened the breaker
        self._consecutive += 1
        if self._consecutive >= self._failures:
            self._open()

    def abandon(self) -> None:
        """A call allowed by ``allow`` ended without an outcome (cancelled): a half-open
        trial is free again."""
        self._trial = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._trial = False
        self._consecutive = 0
        self._on_open()
