"""Entitlements: what a tenant's plan allows, published for the other services.

On every change of a tenant's plan, :func:`publish` writes the hash
``<prefix>billing:entitlements:<tenant>`` (``plan`` and each limit of
:data:`apex.billing.plans.LIMITS`) and announces the tenant on ``<prefix>billing:changed``,
so the gateway, auth and agents read the new limits at once. A tenant without the hash is
on ``free``.
"""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

from apex.billing.plans import Plan
from apex.common.entitlements import entitlements_key

__all__ = ["changed_channel", "entitlements_key", "publish"]


def changed_channel(prefix: str) -> str:
    return f"{prefix}billing:changed"


async def publish(redis: Redis, prefix: str, tenant: uuid.UUID, plan: Plan) -> None:
    """Make ``plan`` the tenant's entitlements, and say so."""
    mapping: dict[str, str] = {"plan": plan.name}
    mapping.update({name: str(value) for name, value in plan.limits().items()})
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(entitlements_key(prefix, tenant), mapping=mapping)  # type: ignore[arg-type]
        pipe.publish(changed_channel(prefix), str(tenant))
        await pipe.execute()
