"""Seats: a tenant's users counted against its plan (contract-billing.md § Entitlements).

With APEX_PLAN_LIMITS on, a new user of a tenant takes a seat: :func:`take` runs inside
the transaction that creates the user, holds a transaction lock on the tenant (parallel
creations are counted one after another, so they never admit more than the plan allows),
counts the tenant's users and raises a 402 ``plan_limit_exceeded`` ApiError when they
fill the plan's ``seats``
(read from apex.billing's entitlements at that moment: an upgrade applies at once).
Users without a tenant take no seat.
"""

from __future__ import annotations

import uuid

import asyncpg
from redis.asyncio import Redis

from apex.common import entitlements
from apex.common.http import ApiError

__all__ = ["take"]


async def take(conn: asyncpg.Connection, redis: Redis, prefix: str, tenant: uuid.UUID) -> None:
    """Make sure the tenant has a seat for one more user (call in the creating
    transaction, before the insert); a 402 ApiError if not."""
    # One creation of the tenant's users at a time until this transaction ends.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"seats:{tenant}")
    plan = await entitlements.read(redis, prefix, tenant)
    used = await conn.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1", tenant)
    if not plan.allows("seats", int(used)):
        body = entitlements.refusal(plan, "seats")
        raise ApiError(402, body.pop("error"), body.pop("detail"), extra=body)
