"""Users: the ``users`` table and e-mail normalisation."""

from __future__ import annotations

import dataclasses
import re
import uuid
from typing import Any, Final

import asyncpg

__all__ = [
    "DuplicateEmail",
    "User",
    "create_user",
    "delete_users_in_domain",
    "get_user",
    "is_test_domain",
    "normalize_email",
    "set_tier",
]

MAX_EMAIL_LENGTH: Final = 254
# Deliberately loose: one "@", no spaces, a dot in the domain. Whether an address
# really receives mail is for a confirmation e-mail to find out, not a regex.
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# Only a domain under the reserved TLD .invalid (RFC 2606) is a test run's namespace and
# can be bulk-deleted: no real user has such an address, so a clean-up never reaches a
# customer.
_TEST_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+invalid")


class DuplicateEmail(Exception):
    """Another user already has this e-mail address."""


@dataclasses.dataclass(frozen=True)
class User:
    """A row of ``users``."""

    id: uuid.UUID
    email: str
    tier: str
    tenant_id: uuid.UUID | None

    def to_json(self) -> dict[str, Any]:
        """The API's view of the user."""
        return {
            "id": str(self.id),
            "email": self.email,
            "tier": self.tier,
            "tenant_id": str(self.tenant_id) if self.tenant_id is not None else None,
        }


def normalize_email(value: str) -> str:
    """``value`` trimmed and lower-cased; ValueError if it does not look like an address."""
    email = value.strip().lower()
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(email):
        raise ValueError("not an e-mail address")
    return email


async def create_user(
    conn: asyncpg.Connection,
    email: str,
    tier: str,
    tenant_id: uuid.UUID | None,
    *,
    password_hash: str | None = None,
    phone: str | None = None,
) -> User:
    """Insert a user; raise DuplicateEmail when the address is taken."""
    try:
        row = await conn.fetchrow(
            "INSERT INTO users (id, email, tier, tenant_id, password_hash, phone) "
            "VALUES ($1, $2, $3, $4, $5, $6) "
            "RETURNING id, email, tier, tenant_id",
            uuid.uuid4(),
            email,
            tier,
            tenant_id,
            password_hash,
            phone,
        )
    except asyncpg.UniqueViolationError:
        raise DuplicateEmail(email) from None
    if row is None:
        raise RuntimeError("INSERT ... RETURNING returned no row")
    return _user(row)


async def get_user(conn: asyncpg.Connection, user_id: uuid.UUID) -> User | None:
    """The user ``user_id``, or None."""
    row = await conn.fetchrow("SELECT id, email, tier, tenant_id FROM users WHERE id = $1", user_id)
    return _user(row) if row is not None else None


async def set_tier(conn: asyncpg.Connection, user_id: uuid.UUID, tier: str) -> User | None:
    """Change the tier of ``user_id``; None if there is no such user."""
    row = await conn.fetchrow(
        "UPDATE users SET tier = $2, updated_at = now() WHERE id = $1 "
        "RETURNING id, email, tier, tenant_id",
        user_id,
        tier,
    )
    return _user(row) if row is not None else None


async def delete_users_in_domain(
    conn: asyncpg.Connection, domain: str
) -> tuple[int, list[uuid.UUID]]:
    """Delete every user whose (normalized) e-mail is in ``domain`` or one of its
    subdomains (a run's IdP users are ``idp.<domain>``): how many, and the tenants they
    left with no user at all (nobody can reach those tenants any more)."""
    # The domain is matched literally: LIKE's wildcards in it would widen the match.
    rows = await conn.fetch(
        "DELETE FROM users WHERE right(lower(email), length($1)) = $1 "
        "OR right(split_part(lower(email), '@', 2), length($2)) = $2 RETURNING tenant_id",
        f"@{domain.lower()}",
        f".{domain.lower()}",
    )
    tenants = sorted({row["tenant_id"] for row in rows if row["tenant_id"] is not None})
    remaining = await conn.fetch(
        "SELECT DISTINCT tenant_id FROM users WHERE tenant_id = ANY($1::uuid[])", tenants
    )
    left = {row["tenant_id"] for row in remaining}
    return len(rows), [tenant for tenant in tenants if tenant not in left]


def is_test_domain(domain: str) -> bool:
    """Whether ``domain`` (lower-case) is under the reserved TLD .invalid: a test run's."""
    return _TEST_DOMAIN.fullmatch(domain) is not None


def _user(row: asyncpg.Record) -> User:
    return User(id=row["id"], email=row["email"], tier=row["tier"], tenant_id=row["tenant_id"])
