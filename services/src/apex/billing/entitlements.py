"""Entitlements: what a tenant's plan allows, published for the other services.

On every change of a tenant's plan, :func:`publish` writes the hash
``<prefix>billing:entitlements:<tenant>`` (``plan``, each limit of
:data:`apex.billing.plans.LIMITS`, and for each limit ``upgrade_to:<limit>``: the cheapest
plan of this instance's table, APEX_PLANS, priced above the tenant's that allows more of
it, or ``""``) and announces the tenant on ``<prefix>billing:changed``, so the gateway,
auth and agents read the new limits, and where a refusal points, at once. A tenant
without the hash is on ``free``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from redis.asyncio import Redis

from apex.billing.plans import LIMITS, Plan
from apex.common.entitlements import UPGRADE_TO, entitlements_key

__all__ = ["changed_channel", "entitlements_key", "publish", "upgrades"]


def changed_channel(prefix: str) -> str:
    return f"{prefix}billing:changed"


def upgrades(plan: Plan, plans: Mapping[str, Plan]) -> dict[str, str | None]:
    """For each limit, the cheapest plan of ``plans`` priced above ``plan`` that allows
    more of it (the first such in the table on a tie), or None."""
    dearer = sorted((p for p in plans.values() if p.price > plan.price), key=lambda p: p.price)
    return {
        limit: next((p.name for p in dearer if getattr(p, limit) > getattr(plan, limit)), None)
        for limit in LIMITS
    }


async def publish(
    redis: Redis, prefix: str, tenant: uuid.UUID, plan: Plan, plans: Mapping[str, Plan]
) -> None:
    """Make ``plan`` (of the table ``plans``) the tenant's entitlements, and say so."""
    mapping: dict[str, str] = {"plan": plan.name}
    mapping.update({name: str(value) for name, value in plan.limits().items()})
    mapping.update(
        {f"{UPGRADE_TO}{limit}": to or "" for limit, to in upgrades(plan, plans).items()}
    )
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(entitlements_key(prefix, tenant), mapping=mapping)  # type: ignore[arg-type]
        pipe.publish(changed_channel(prefix), str(tenant))
        await pipe.execute()
