"""Sliding-window rate limits in Redis.

Each limited subject has a sorted set of the times of its accepted events. One Lua
script drops the events older than the window, counts the rest and, if below the
limit, records the new event: Redis runs scripts one at a time, so a concurrent burst
against a limit of N gets exactly N acceptances, whatever the number of service
instances. Time comes from the Redis server, so instances with skewed clocks agree.
apex.auth limits its API and sign-ins with it, apex.agents a plan's run submissions per
minute (``apex.agents.plan_limits``).
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from typing import Final

from redis.asyncio import Redis

from apex.common.settings import RateLimit

__all__ = ["Decision", "SlidingWindowLimiter", "retry_after_seconds"]

_MICROS: Final = 1_000_000

_SLIDING_WINDOW: Final = """
-- KEYS[1]: the subject's sorted set of event times (microseconds).
-- ARGV[1]: window in seconds, ARGV[2]: limit, ARGV[3]: a unique member for this event.
-- Replies {accepted (0/1), remaining, microseconds until a slot frees up}.
if redis.replicate_commands then
  -- Redis < 5 refuses writes after TIME unless effects replication is switched on.
  pcall(redis.replicate_commands)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1]) * 1000000
local limit = tonumber(ARGV[2])
-- Numbers passed to redis.call become strings with 14 significant digits; format
-- microsecond timestamps (16 digits) by hand so they keep their precision.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  return {1, limit - count - 1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + window - now}
"""


@dataclasses.dataclass(frozen=True)
class Decision:
    """Whether an event was accepted, how many more fit now, and when to retry if not."""

    allowed: bool
    remaining: int
    retry_after: int


def retry_after_seconds(micros: int) -> int:
    """Whole seconds a client should wait before a slot frees up (``Retry-After``), at least 1."""
    return max(1, math.ceil(micros / _MICROS))


class SlidingWindowLimiter:
    """Sliding-window limits on subjects under one Redis key prefix."""

    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self._prefix = prefix
        self._script = redis.register_script(_SLIDING_WINDOW)

    def key(self, subject: str) -> str:
        """The Redis key holding ``subject``'s window."""
        return f"{self._prefix}rl:{subject}"

    async def hit(self, subject: str, limit: RateLimit) -> Decision:
        """Count one event for ``subject`` if ``limit`` allows it."""
        reply = await self._script(
            keys=[self.key(subject)], args=[limit.window, limit.count, uuid.uuid4().hex]
        )
        accepted, remaining, wait = (int(value) for value in reply)
        if accepted:
            return Decision(allowed=True, remaining=remaining, retry_after=0)
        return Decision(allowed=False, remaining=0, retry_after=retry_after_seconds(wait))
