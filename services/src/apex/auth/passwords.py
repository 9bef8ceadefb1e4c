"""Passwords: the policy and argon2id hashes (the lockout is apex.auth.lockout).

Hashing runs in a worker thread: argon2id is deliberately slow and memory-hard, and
must not stall the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
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
