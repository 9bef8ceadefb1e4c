"""Per-connection message rate limit: a token bucket of ``count`` messages per ``seconds``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """Allows bursts of up to ``count`` messages, refilled at ``count / seconds`` per second."""

    def __init__(
        self, count: int, seconds: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = float(count)
        self.rate = count / seconds
        self._clock = clock
        self._tokens = float(count)
        self._updated = clock()

    def take(self) -> int:
        """0 if the message may pass, else the milliseconds until one may (drop this one)."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - self._tokens) / self.rate * 1000))
