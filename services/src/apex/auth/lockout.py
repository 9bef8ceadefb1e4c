"""Failure budgets of sign-in attempts, and the lockout of accounts that spend them.

An attempt (a password, a second-factor code) is counted *before* it is evaluated: one
Lua script checks that the account is not locked and that every budget the attempt draws
on has room, then counts the attempt against each of them. Redis runs scripts one at a
time, so a parallel burst against a budget of N gets exactly N evaluated attempts, the
rest are refused as locked (423) without being looked at. A failed attempt stays
counted; the one that used up a locking budget locks the account (``users.locked_until``
and ``lockout:<subject>:locked``) for that budget's window. A successful attempt resets
the budgets it drew on, and no other: a correct password does not reset the budget of
second factors.

Budgets (Redis keys under the service prefix; windows start with the first attempt):
- ``lockout:<user_id>``: passwords and second factors at sign-in (APEX_LOGIN_LOCKOUT);
  ``lockout:email:<sha256[:32]>`` for addresses nobody has, so 423 reveals nothing.
- ``lockout:mfa:<user_id>``: second-factor codes wherever they are checked, at sign-in
  and at ``DELETE /me/2fa`` (APEX_MFA_LOCKOUT).
- a caller's own, non-locking budget, e.g. the codes one mfa_token may try
  (:meth:`apex.auth.mfa.MfaStore.attempts_budget`): when it is used up the attempt is
  refused with :class:`BudgetSpent` instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import uuid
from collections.abc import Sequence
from typing import Final

import asyncpg
from redis.asyncio import Redis

from apex.common.config import RateLimit

__all__ = ["Attempt", "Budget", "BudgetSpent", "Locked", "Lockout"]

_MILLIS: Final = 1000

# KEYS[1]: the account's lock; KEYS[2..]: the budgets' counters.
# ARGV: per budget, its limit, its window (s) and 1 if using it up locks the account.
# Replies {1, i}: counted, and if i > 0 this attempt was the last one locking budget i
# (1-based; the longest window wins) allowed; {0, 0, ms} when the account is locked;
# {0, i, ms} when budget i has no room left.
_BEGIN: Final = """
local locked = redis.call('PTTL', KEYS[1])
if locked > 0 then return {0, 0, locked} end
for i = 2, #KEYS do
  local limit = tonumber(ARGV[(i - 2) * 3 + 1])
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= limit then
    return {0, i - 1, math.max(redis.call('PTTL', KEYS[i]), 1)}
  end
end
local last, longest = 0, 0
for i = 2, #KEYS do
  local base = (i - 2) * 3
  local window = tonumber(ARGV[base + 2])
  local count = redis.call('INCR', KEYS[i])
  if count == 1 then redis.call('EXPIRE', KEYS[i], window) end
  if count >= tonumber(ARGV[base + 1]) and ARGV[base + 3] == '1' and window > longest then
    last, longest = i - 1, window
  end
end
return {1, last}
"""

# KEYS[1]: the lock, KEYS[2..]: the budgets it ends; ARGV[1]: seconds. A longer lock
# already in place stays.
_LOCK: Final = """
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
end
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""

# Take back attempts that were counted but never evaluated (a concurrent request won).
_RELEASE: Final = """
for i = 1, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
return 1
"""


@dataclasses.dataclass(frozen=True)
class Budget:
    """A counter of failed attempts: its name (for the audit), Redis key and limit, and
    whether using it up locks the account (else only the attempt is refused:
    :class:`BudgetSpent`)."""

    name: str
    key: str
    limit: RateLimit
    locks: bool = True


@dataclasses.dataclass(frozen=True)
class Attempt:
    """An attempt counted before its evaluation: report it with ``failed``/``succeeded``."""

    user_id: uuid.UUID | None
    lock_key: str
    budgets: tuple[Budget, ...]
    # The locking budget this attempt was the last one of: failing it locks the account
    # for that budget's window.
    last_of: Budget | None


class Locked(Exception):
    """The account is locked (423 ``account_locked``), for ``retry_after`` more seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"locked for {retry_after} s")
        self.retry_after = retry_after


class BudgetSpent(Exception):
    """A non-locking budget of the attempt has no room left (e.g. a dead mfa_token)."""

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
        self._begin = redis.register_script(_BEGIN)
        self._lock = redis.register_script(_LOCK)
        self._release = redis.register_script(_RELEASE)

    def key(self, subject: str) -> str:
        """Redis key counting the sign-in failures of a user id (or an unknown e-mail's hash)."""
        return f"{self._prefix}lockout:{subject}"

    @staticmethod
    def unknown_subject(email: str) -> str:
        """The counter subject of an e-mail no user has (so unknown and known look alike)."""
        return "email:" + hashlib.sha256(email.encode()).hexdigest()[:32]

    async def begin(
        self,
        conn: asyncpg.Connection,
        user_id: uuid.UUID | None,
        *,
        email: str = "",
        sign_in: bool = True,
        second_factor: bool = False,
        extra: Sequence[Budget] = (),
    ) -> Attempt:
        """Count an attempt of the user (or unknown ``email``) before it is evaluated.

        It draws on the sign-in budget (``sign_in``), the second-factor budget
        (``second_factor``, known users only) and ``extra``. Raises Locked if the account
        is locked or a locking budget is used up, BudgetSpent for a used-up ``extra``.
        """
        subject = str(user_id) if user_id is not None else self.unknown_subject(email)
        if user_id is not None:
            await self._check_locked_until(conn, user_id)
        budgets = []
        if sign_in:
            budgets.append(Budget("sign_in", self.key(subject), self.limit))
        if second_factor and user_id is not None:
            budgets.append(Budget("second_factor", self.key(f"mfa:{user_id}"), self.mfa_limit))
        budgets.extend(extra)
        lock_key = self.key(subject) + ":locked"
        args: list[int] = []
        for budget in budgets:
            args += [budget.limit.count, budget.limit.window, int(budget.locks)]
        reply = await self._begin(keys=[lock_key, *(b.key for b in budgets)], args=args)
        index = int(reply[1])
        if int(reply[0]) == 1:
            last_of = budgets[index - 1] if index > 0 else None
            return Attempt(user_id, lock_key, tuple(budgets), last_of)
        millis = int(reply[2])
        if index == 0 or budgets[index - 1].locks:
            # A locking budget with no room: the attempts that used it are being evaluated
            # right now, and the account locks if they fail.
            raise Locked(max(1, math.ceil(millis / _MILLIS)))
        raise BudgetSpent(budgets[index - 1])

    async def failed(self, conn: asyncpg.Connection, attempt: Attempt) -> Budget | None:
        """The attempt failed (it stays counted); the budget whose end locked the account
        (for its window) now, or None."""
        budget = attempt.last_of
        if budget is None:
            return None
        seconds = budget.limit.window
        ended = [b.key for b in attempt.budgets if b.locks]
        await self._lock(keys=[attempt.lock_key, *ended], args=[seconds])
        if attempt.user_id is not None:
            await conn.execute(
                "UPDATE users SET locked_until = "
                "greatest(locked_until, now() + make_interval(secs => $2)) WHERE id = $1",
                attempt.user_id,
                float(seconds),
            )
        return budget

    async def succeeded(self, attempt: Attempt) -> None:
        """The attempt succeeded: reset the locking budgets it drew on (only those)."""
        keys = [b.key for b in attempt.budgets if b.locks]
        if keys:
            await self._redis.delete(*keys)

    async def release(self, attempt: Attempt) -> None:
        """Take the attempt back: it was counted but not evaluated (a concurrent one won)."""
        await self._release(keys=[b.key for b in attempt.budgets], args=[])

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

    async def _check_locked_until(self, conn: asyncpg.Connection, user_id: uuid.UUID) -> None:
        locked_until = await conn.fetchval("SELECT locked_until FROM users WHERE id = $1", user_id)
        if locked_until is None:
            return
        remaining = (locked_until - dt.datetime.now(dt.UTC)).total_seconds()
        if remaining > 0:
            raise Locked(max(1, math.ceil(remaining)))
