"""Passwords (argon2id hashes) and the lockout of accounts after repeated failures.

Hashing runs in a worker thread: argon2id is deliberately slow and memory-hard, and
must not stall the event loop. Failed password and second-factor attempts count in a
Redis window per account (``lockout:<user_id>``); reaching APEX_LOGIN_LOCKOUT locks
the account (``users.locked_until``) for the window's length.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import math
import uuid
from typing import Final

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from redis.asyncio import Redis

from apex.common.config import RateLimit

__all__ = [
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "Lockout",
    "check_password_policy",
    "hash_password",
    "verify_password",
]

MIN_PASSWORD_LENGTH: Final = 12
# argon2 hashes any length, but a megabyte "password" is an attack on our CPU.
MAX_PASSWORD_LENGTH: Final = 1024

_HASHER: Final = PasswordHasher()  # argon2id, RFC 9106 low-memory profile
# Verified against when the e-mail is unknown, so a miss costs what a wrong password does.
_DUMMY_HASH: Final = _HASHER.hash("apex-unknown-user-password")

# Count one failure and return the count; the window starts with the first failure.
_FAIL: Final = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


def check_password_policy(password: str) -> str:
    """``password`` if acceptable, else ValueError saying why (never echoing it)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    if not password.strip():
        raise ValueError("a password cannot be only whitespace")
    return password


async def hash_password(password: str) -> str:
    """The argon2id hash (PHC string) of ``password``."""
    return await asyncio.to_thread(_HASHER.hash, password)


async def verify_password(password: str, stored_hash: str | None) -> bool:
    """Whether ``password`` matches ``stored_hash`` (None: no password; costs the same)."""
    return await asyncio.to_thread(_verify, password, stored_hash)


def _verify(password: str, stored_hash: str | None) -> bool:
    try:
        matches = _HASHER.verify(stored_hash or _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return matches and stored_hash is not None


@dataclasses.dataclass(frozen=True)
class LockState:
    """Whether an account is locked, and for how many more seconds."""

    locked: bool
    retry_after: int = 0


class Lockout:
    """Failed-attempt counting and account lockout (APEX_LOGIN_LOCKOUT)."""

    def __init__(self, redis: Redis, *, prefix: str, limit: RateLimit) -> None:
        self._redis = redis
        self._prefix = prefix
        self.limit = limit
        self._fail = redis.register_script(_FAIL)

    def key(self, subject: str) -> str:
        """Redis key counting the failures of a user id (or of an unknown e-mail's hash)."""
        return f"{self._prefix}lockout:{subject}"

    @staticmethod
    def unknown_subject(email: str) -> str:
        """The counter subject of an e-mail no user has (so unknown and known look alike)."""
        return "email:" + hashlib.sha256(email.encode()).hexdigest()[:32]

    async def state(
        self, conn: asyncpg.Connection, user_id: uuid.UUID | None, email: str
    ) -> LockState:
        """Whether the account (or the unknown e-mail) is locked now."""
        if user_id is None:
            ttl = await self._unknown_lock_ttl(email)
            return LockState(ttl > 0, ttl)
        locked_until = await conn.fetchval("SELECT locked_until FROM users WHERE id = $1", user_id)
        if locked_until is None:
            return LockState(False)
        remaining = (locked_until - dt.datetime.now(dt.UTC)).total_seconds()
        return LockState(remaining > 0, max(1, math.ceil(remaining)) if remaining > 0 else 0)

    async def failed(self, conn: asyncpg.Connection, user_id: uuid.UUID | None, email: str) -> bool:
        """Count one failure; True when this failure locked the account."""
        subject = str(user_id) if user_id is not None else self.unknown_subject(email)
        # Redis expires in whole seconds (the lockout is parsed as whole seconds anyway).
        window = math.ceil(self.limit.window)
        count = int(await self._fail(keys=[self.key(subject)], args=[window]))
        if count < self.limit.count:
            return False
        if user_id is None:
            # The counter itself is the lock for addresses nobody has.
            await self._redis.set(self.key(subject) + ":locked", "1", ex=window)
            await self._redis.delete(self.key(subject))
            return count == self.limit.count
        await self._redis.delete(self.key(subject))
        row = await conn.fetchval(
            "UPDATE users SET locked_until = now() + make_interval(secs => $2) "
            "WHERE id = $1 AND (locked_until IS NULL OR locked_until < now()) RETURNING id",
            user_id,
            float(self.limit.window),
        )
        return row is not None

    async def clear(self, conn: asyncpg.Connection, user_id: uuid.UUID) -> None:
        """Forget the failures of a user (successful login) and lift a lock (password reset)."""
        await self._redis.delete(self.key(str(user_id)))
        await conn.execute(
            "UPDATE users SET locked_until = NULL WHERE id = $1 AND locked_until IS NOT NULL",
            user_id,
        )

    async def reset_failures(self, user_id: uuid.UUID) -> None:
        """Forget the failures of a user without touching an active lock."""
        await self._redis.delete(self.key(str(user_id)))

    async def _unknown_lock_ttl(self, email: str) -> int:
        ttl = int(await self._redis.ttl(self.key(self.unknown_subject(email)) + ":locked"))
        return max(ttl, 0)
