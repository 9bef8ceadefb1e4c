"""Passwords: the policy and argon2id hashes (the lockout is apex.auth.lockout).

Hashing runs in a worker thread: argon2id is deliberately slow and memory-hard, and
must not stall the event loop. Its cost is a setting (``Settings.password_hash_cost``):
production keeps argon2's defaults, test environments set cheap values.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Final

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from apex.common.config import PasswordHashCost

__all__ = [
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "Hasher",
    "check_password_policy",
    "hasher",
]

MIN_PASSWORD_LENGTH: Final = 12
# argon2 hashes any length, but a megabyte "password" is an attack on our CPU.
MAX_PASSWORD_LENGTH: Final = 1024


def check_password_policy(password: str) -> str:
    """``password`` if acceptable, else ValueError saying why (never echoing it)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    if not password.strip():
        raise ValueError("a password cannot be only whitespace")
    return password


class Hasher:
    """argon2id hashes at one cost; verifies hashes of any cost (each carries its own)."""

    def __init__(self, cost: PasswordHashCost) -> None:
        self.cost = cost
        self._argon2 = PasswordHasher(
            time_cost=cost.time_cost,
            memory_cost=cost.memory_kib,
            parallelism=cost.parallelism,
            type=Type.ID,
        )
        # Verified against when the e-mail is unknown, so a miss costs what a wrong
        # password does.
        self._dummy_hash = self._argon2.hash("apex-unknown-user-password")

    async def hash(self, password: str) -> str:
        """The argon2id hash (PHC string) of ``password``."""
        return await asyncio.to_thread(self._argon2.hash, password)

    async def verify(self, password: str, stored_hash: str | None) -> bool:
        """Whether ``password`` matches ``stored_hash`` (None: no password; costs the same)."""
        return await asyncio.to_thread(self._verify, password, stored_hash)

    def _verify(self, password: str, stored_hash: str | None) -> bool:
        try:
            matches = self._argon2.verify(stored_hash or self._dummy_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return matches and stored_hash is not None


@functools.lru_cache(maxsize=4)
def hasher(cost: PasswordHashCost) -> Hasher:
    """The process's hasher for ``cost`` (its dummy hash is computed once)."""
    return Hasher(cost)
