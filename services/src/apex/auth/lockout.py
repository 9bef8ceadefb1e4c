"""Failure budgets of sign-in attempts, and the lockout of accounts that spend them.

Every attempt (a password, a second-factor code) is admitted *before* it is evaluated,
by one Lua script: the account must not be locked, and each budget the attempt draws on
must have room for it, counting its failures so far *and* the attempts being evaluated
at this moment. Redis runs scripts one at a time, so a parallel burst against a budget of
N gets at most N evaluations in flight; the others wait (briefly, polling) until those
are decided, and then find the account locked (423) or the budget free again. So 40
parallel wrong passwords against a limit of 5 are 5 evaluated guesses and 35 refusals,
and 6 devices signing in at once with the right password all get in.

A failed attempt counts against each budget it drew on; the failure that fills a locking
budget locks the account (``users.locked_until`` and ``lockout:<subject>:locked``) for
that budget's window and empties the budget. A successful attempt empties the locking
budgets it drew on, and no other: a correct password does not reset the budget of second
factors.

Budgets (Redis keys under the service prefix; failures expire a window after the first,
to the millisecond):
- ``lockout:<user_id>``: passwords and second factors at sign-in (APEX_LOGIN_LOCKOUT);
  ``lockout:email:<sha256[:32]>`` for addresses nobody has, so 423 reveals nothing.
- ``lockout:mfa:<user_id>``: second-factor codes wherever they are checked, at sign-in
  and at ``DELETE /me/2fa`` (APEX_MFA_LOCKOUT).
- a caller's own, non-locking budget, e.g. the codes one mfa_token may try
  (:meth:`apex.auth.mfa.MfaStore.attempts_budget`): when it is full the attempt is
  refused with :class:`BudgetSpent` instead.
Each has ``<key>:inflight``, the attempts being evaluated (expiring after
INFLIGHT_TTL, should a process die mid-attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Final

import asyncpg
from redis.asyncio import Redis

from apex.common.config import RateLimit

__all__ = ["INFLIGHT_TTL", "Attempt", "Budget", "BudgetSpent", "Locked", "Lockout"]

# Seconds an attempt may stay "being evaluated" (an argon2 check takes well under one).
INFLIGHT_TTL: Final = 30
# How long an attempt waits for the ones in flight before it is refused as locked.
ADMISSION_TIMEOUT: Final = 10.0
_MILLIS: Final = 1000

# KEYS[1]: the account's lock; then per budget its failures and its in-flight counter.
# ARGV[1]: INFLIGHT_TTL; then per budget its limit. Replies {1} admitted, {0, 0, ms}
# locked, {0, i, ms} budget i (1-based) full of failures, {2} wait: full of attempts
# being evaluated.
_ADMIT: Final = """
local locked = redis.call('PTTL', KEYS[1])
if locked > 0 then return {0, 0, locked} end
local busy = false
for i = 1, (#KEYS - 1) / 2 do
  local limit = tonumber(ARGV[i + 1])
  local failures = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  if failures >= limit then
    return {0, i, math.max(redis.call('PTTL', KEYS[2 * i]), 1)}
  end
  if failures + tonumber(redis.call('GET', KEYS[2 * i + 1]) or '0') >= limit then
    busy = true
  end
end
if busy then return {2} end
for i = 1, (#KEYS - 1) / 2 do
  redis.call('INCR', KEYS[2 * i + 1])
  redis.call('EXPIRE', KEYS[2 * i + 1], ARGV[1])
end
return {1}
"""

# A failure. KEYS as for _ADMIT; ARGV per budget: limit, window (milliseconds), 1 if it
# locks. Replies the (1-based) locking budget this failure filled (the longest window
# wins), or 0.
_FAIL: Final = """
local filled, longest = 0, 0
for i = 1, (#KEYS - 1) / 2 do
  local base = (i - 1) * 3
  local window = tonumber(ARGV[base + 2])
  if tonumber(redis.call('GET', KEYS[2 * i + 1]) or '0') > 0 then
    redis.call('DECR', KEYS[2 * i + 1])
  end
  local failures = redis.call('INCR', KEYS[2 * i])
  if failures == 1 then redis.call('PEXPIRE', KEYS[2 * i], window) end
  if ARGV[base + 3] == '1' and failures >= tonumber(ARGV[base + 1]) and window > longest then
    filled, longest = i, window
  end
end
if filled > 0 then
  if redis.call('PTTL', KEYS[1]) < longest then
    redis.call('SET', KEYS[1], '1', 'PX', longest)
  end
  for i = 1, (#KEYS - 1) / 2 do
    if ARGV[(i - 1) * 3 + 3] == '1' then redis.call('DEL', KEYS[2 * i]) end
  end
end
return filled
"""

# The end of an attempt that did not fail: KEYS its in-flight counters, then the failure
# counters to empty (a success's locking budgets; none when it is only taken back).
_END: Final = """
for i = 1, tonumber(ARGV[1]) do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
for i = tonumber(ARGV[1]) + 1, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""


@dataclasses.dataclass(frozen=True)
class Budget:
    """A counter of failed attempts: its name (for the audit), Redis key and limit, and
    whether filling it locks the account (else only the attempt is refused:
    :class:`BudgetSpent`)."""

    name: str
    key: str
    limit: RateLimit
    locks: bool = True

    @property
    def inflight_key(self) -> str:
        """The Redis key counting this budget's attempts being evaluated."""
        return f"{self.key}:inflight"


@dataclasses.dataclass
class Attempt:
    """An admitted attempt: end it with ``failed``, ``succeeded`` or ``release``."""

    user_id: uuid.UUID | None
    lock_key: str
    budgets: tuple[Budget, ...]
    ended: bool = False

    @property
    def keys(self) -> list[str]:
        """The lock, then each budget's failure and in-flight counters."""
        keys = [self.lock_key]
        for budget in self.budgets:
            keys += [budget.key, budget.inflight_key]
        return keys


class Locked(Exception):
    """The account is locked (423 ``account_locked``), for ``retry_after`` more seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"locked for {retry_after} s")
        self.retry_after = retry_after


class BudgetSpent(Exception):
    """A non-locking budget of the attempt is full (e.g. an mfa_token's wrong codes)."""

    def __init__(self, budget: Budget) -> None:
        super().__init__(f"no attempts left in {budget.key}")
        self.budget = budget


class Lockout:
    """Attempt budgets and account lockout (APEX_LOGIN_LOCKOUT, APEX_MFA_LOCKOUT)."""

    def __init__(
        self, redis: Redis, *, prefix: str, limit: RateLimit, mfa_limit: RateLimit
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self.limit = limit
        self.mfa_limit = mfa_limit
        self._admit = redis.register_script(_ADMIT)
        self._fail = redis.register_script(_FAIL)
        self._end = redis.register_script(_END)

    def key(self, subject: str) -> str:
        """Redis key counting the sign-in failures of a user id (or an unknown e-mail's hash)."""
        return f"{self._prefix}lockout:{subject}"

    @staticmethod
    def unknown_subject(email: str) -> str:
        """The counter subject of an e-mail no user has (so unknown and known look alike)."""
        return "email:" + hashlib.sha256(email.encode()).hexdigest()[:32]

    @contextlib.asynccontextmanager
    async def attempt(
        self,
        user_id: uuid.UUID | None,
        *,
        locked_until: dt.datetime | None = None,
        email: str = "",
        sign_in: bool = True,
        second_factor: bool = False,
        extra: Sequence[Budget] = (),
    ) -> AsyncIterator[Attempt]:
        """:meth:`begin`, and :meth:`release` on the way out if nothing ended the attempt
        (the request failed before its evaluation was decided)."""
        attempt = await self.begin(
            user_id,
            locked_until=locked_until,
            email=email,
            sign_in=sign_in,
            second_factor=second_factor,
            extra=extra,
        )
        try:
            yield attempt
        finally:
            if not attempt.ended:
                await self.release(attempt)

    async def begin(
        self,
        user_id: uuid.UUID | None,
        *,
        locked_until: dt.datetime | None = None,
        email: str = "",
        sign_in: bool = True,
        second_factor: bool = False,
        extra: Sequence[Budget] = (),
    ) -> Attempt:
        """Admit an attempt of the user (whose ``users.locked_until`` is given), or of the
        unknown ``email``, to its evaluation.

        It draws on the sign-in budget (``sign_in``), the second-factor budget
        (``second_factor``, known users only) and ``extra``. Waits while the attempts in
        flight fill a budget (hold no database connection meanwhile); raises Locked if the
        account is (or stays) locked, BudgetSpent if an ``extra`` budget is full.
        """
        subject = str(user_id) if user_id is not None else self.unknown_subject(email)
        if locked_until is not None:
            remaining = (locked_until - dt.datetime.now(dt.UTC)).total_seconds()
            if remaining > 0:
                raise Locked(max(1, math.ceil(remaining)))
        budgets = []
        if sign_in:
            budgets.append(Budget("sign_in", self.key(subject), self.limit))
        if second_factor and user_id is not None:
            budgets.append(Budget("second_factor", self.key(f"mfa:{user_id}"), self.mfa_limit))
        budgets.extend(extra)
        attempt = Attempt(user_id, self.key(subject) + ":locked", tuple(budgets))
        args = [INFLIGHT_TTL, *(b.limit.count for b in budgets)]
        deadline = time.monotonic() + ADMISSION_TIMEOUT
        delay = 0.005
        while True:
            reply = await self._admit(keys=attempt.keys, args=args)
            if int(reply[0]) == 1:
                return attempt
            if int(reply[0]) == 0:
                index, millis = int(reply[1]), int(reply[2])
                if index == 0 or budgets[index - 1].locks:
                    raise Locked(max(1, math.ceil(millis / _MILLIS)))
                raise BudgetSpent(budgets[index - 1])
            if time.monotonic() >= deadline:
                raise Locked(1)
            # The attempts in flight are decided within an argon2 check or two.
            await asyncio.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.1)

    async def failed(self, conn: asyncpg.Connection, attempt: Attempt) -> Budget | None:
        """The attempt failed: it counts; the budget it filled (the account is then locked
        for that budget's window), or None."""
        args: list[int] = []
        for budget in attempt.budgets:
            # Milliseconds: Redis expires these windows with PEXPIRE / PX.
            args += [budget.limit.count, budget.limit.window_ms, int(budget.locks)]
        attempt.ended = True
        filled = int(await self._fail(keys=attempt.keys, args=args))
        if filled == 0:
            return None
        budget = attempt.budgets[filled - 1]
        if attempt.user_id is not None:
            await conn.execute(
                "UPDATE users SET locked_until = "
                "greatest(locked_until, now() + make_interval(secs => $2)) WHERE id = $1",
                attempt.user_id,
                float(budget.limit.window),
            )
        return budget

    async def succeeded(self, attempt: Attempt) -> None:
        """The attempt succeeded: empty the locking budgets it drew on (only those)."""
        emptied = [b.key for b in attempt.budgets if b.locks]
        await self._finish(attempt, emptied)

    async def release(self, attempt: Attempt) -> None:
        """Take the attempt back: it was admitted but not evaluated (a concurrent one won)."""
        await self._finish(attempt, [])

    async def clear(self, conn: asyncpg.Connection, user_id: uuid.UUID) -> None:
        """Forget the user's failures and lift a lock (password reset)."""
        subject = str(user_id)
        await self._redis.delete(
            self.key(subject), self.key(subject) + ":locked", self.key(f"mfa:{subject}")
        )
        await conn.execute(
            "UPDATE users SET locked_until = NULL WHERE id = $1 AND locked_until IS NOT NULL",
            user_id,
        )

    async def _finish(self, attempt: Attempt, emptied: list[str]) -> None:
        attempt.ended = True
        inflight = [b.inflight_key for b in attempt.budgets]
        await self._end(keys=[*inflight, *emptied], args=[len(inflight)])
