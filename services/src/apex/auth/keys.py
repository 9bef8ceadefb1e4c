"""API keys: their format, how their secrets are stored, and the ``api_keys`` table.

A key reads ``apx_<id>_<secret>``: a 12-character public id (what admins and audit
events name) and a 40-character secret. Only the SHA-256 of the secret is stored;
the plaintext is shown once, when the key is created.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import re
import secrets
import string
import uuid
from typing import Any, Final

import asyncpg

__all__ = [
    "ApiKey",
    "KeyOwner",
    "create_api_key",
    "find_owner",
    "format_api_key",
    "generate_key_id",
    "generate_secret",
    "get_api_key",
    "hash_secret",
    "is_key_id",
    "mark_used",
    "parse_api_key",
    "revoke_api_key",
    "verify_secret",
]

PREFIX: Final = "apx"
KEY_ID_LENGTH: Final = 12
SECRET_LENGTH: Final = 40
MAX_SECRET_LENGTH: Final = 128
_KEY_ID_ALPHABET: Final = string.ascii_lowercase + string.digits
_SECRET_ALPHABET: Final = string.ascii_letters + string.digits
_KEY_ID = re.compile(rf"[a-z0-9]{{{KEY_ID_LENGTH}}}")
_API_KEY = re.compile(
    rf"{PREFIX}_(?P<id>[a-z0-9]{{{KEY_ID_LENGTH}}})_(?P<secret>[A-Za-z0-9]{{32,{MAX_SECRET_LENGTH}}})"
)
# Compared against when a key id is unknown, so a miss costs the same hashing and
# comparison as a wrong secret.
_DUMMY_HASH: Final = hashlib.sha256(b"apex-unknown-key").hexdigest()


def generate_key_id() -> str:
    """A fresh public key id: 12 lower-case letters and digits."""
    return "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))


def generate_secret() -> str:
    """A fresh secret: 40 letters and digits (about 238 bits)."""
    return "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))


def format_api_key(key_id: str, secret: str) -> str:
    """The plaintext key handed to the user."""
    return f"{PREFIX}_{key_id}_{secret}"


def parse_api_key(text: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    match = _API_KEY.fullmatch(text)
    if match is None:
        return None
    return match.group("id"), match.group("secret")


def is_key_id(text: str) -> bool:
    """Whether ``text`` has the shape of a key id."""
    return _KEY_ID.fullmatch(text) is not None


def hash_secret(secret: str) -> str:
    """The stored form of a secret: hex SHA-256.

    A plain hash suffices (no salt, no slow KDF): the secret is 238 random bits,
    not a password a dictionary could guess.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def verify_secret(secret: str, stored_hash: str | None) -> bool:
    """Whether ``secret`` hashes to ``stored_hash``, compared in constant time."""
    expected = stored_hash if stored_hash is not None else _DUMMY_HASH
    matches = hmac.compare_digest(hash_secret(secret).encode(), expected.encode())
    return matches and stored_hash is not None


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """A row of ``api_keys`` without its secret hash."""

    id: str
    user_id: uuid.UUID
    name: str
    scopes: list[str]
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None

    def to_json(self) -> dict[str, Any]:
        """The admin API's view of the key: never the secret or its hash."""
        return {
            "id": self.id,
            "user_id": str(self.user_id),
            "name": self.name,
            "scopes": list(self.scopes),
            "created_at": self.created_at.isoformat(),
            "last_used_at": _iso(self.last_used_at),
            "revoked_at": _iso(self.revoked_at),
        }


@dataclasses.dataclass(frozen=True)
class KeyOwner:
    """What a token exchange needs: the key's hash and state, and its user."""

    key_id: str
    secret_sha256: str
    scopes: list[str]
    revoked: bool
    user_id: uuid.UUID
    email: str
    tier: str
    tenant_id: uuid.UUID | None


async def create_api_key(
    conn: asyncpg.Connection, user_id: uuid.UUID, name: str, scopes: list[str]
) -> tuple[ApiKey, str]:
    """Store a new key for ``user_id``; return it with its plaintext (the only time it exists)."""
    secret = generate_secret()
    for _attempt in range(3):
        key_id = generate_key_id()
        # 36**12 ids make a collision unlikely, not impossible: retry on one.
        row = await conn.fetchrow(
            "INSERT INTO api_keys (id, user_id, name, scopes, secret_sha256) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING "
            "RETURNING id, user_id, name, scopes, created_at, last_used_at, revoked_at",
            key_id,
            user_id,
            name,
            scopes,
            hash_secret(secret),
        )
        if row is not None:
            return _api_key(row), format_api_key(key_id, secret)
    raise RuntimeError("could not allocate a unique API key id")


async def get_api_key(conn: asyncpg.Connection, key_id: str) -> ApiKey | None:
    """The key ``key_id``, or None."""
    row = await conn.fetchrow(
        "SELECT id, user_id, name, scopes, created_at, last_used_at, revoked_at "
        "FROM api_keys WHERE id = $1",
        key_id,
    )
    return _api_key(row) if row is not None else None


async def revoke_api_key(conn: asyncpg.Connection, key_id: str) -> tuple[ApiKey | None, bool]:
    """Revoke ``key_id``; return the key (None if unknown) and whether this call revoked it."""
    row = await conn.fetchrow(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL "
        "RETURNING id, user_id, name, scopes, created_at, last_used_at, revoked_at",
        key_id,
    )
    if row is not None:
        return _api_key(row), True
    return await get_api_key(conn, key_id), False


async def find_owner(conn: asyncpg.Connection, key_id: str) -> KeyOwner | None:
    """The key ``key_id`` joined with its user, or None."""
    row = await conn.fetchrow(
        "SELECT k.id, k.secret_sha256, k.scopes, k.revoked_at IS NOT NULL AS revoked, "
        "u.id AS user_id, u.email, u.tier, u.tenant_id "
        "FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = $1",
        key_id,
    )
    if row is None:
        return None
    return KeyOwner(
        key_id=row["id"],
        secret_sha256=row["secret_sha256"],
        scopes=list(row["scopes"]),
        revoked=row["revoked"],
        user_id=row["user_id"],
        email=row["email"],
        tier=row["tier"],
        tenant_id=row["tenant_id"],
    )


async def mark_used(conn: asyncpg.Connection, key_id: str) -> bool:
    """Record a use of ``key_id``; False when the key has been revoked meanwhile."""
    row = await conn.fetchrow(
        "UPDATE api_keys SET last_used_at = now() "
        "WHERE id = $1 AND revoked_at IS NULL RETURNING id",
        key_id,
    )
    return row is not None


def _api_key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["id"],
        user_id=row["user_id"],
        name=row["name"],
        scopes=list(row["scopes"]),
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
