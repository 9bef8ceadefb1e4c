"""A tenant's plan limits as apex.billing publishes them (contract-billing.md § Entitlements).

apex.billing writes the hash ``<prefix>billing:entitlements:<tenant>`` (``plan`` and one
field per limit) on every change of the tenant's plan; a tenant without the hash is on
``free``, whose limits are the contract's table (:data:`FREE`). apex.auth (``seats``),
apex.gateway (``ws_connections``) and apex.agents (``tokens_per_day``,
``requests_per_minute``) read it with :func:`read` at the moment they admit something,
one ``HGETALL`` per check: that is cheaper than keeping a cache coherent with
``billing:changed`` (notes-billing.md § Tier enforcement), and an upgrade applies at once.

:func:`refusal` is the body of the 402 ``plan_limit_exceeded`` answer: ``limit`` (the
limit's name), ``allowed`` (its value on the plan), ``plan`` and ``upgrade_to``: the
cheapest plan above the tenant's that allows more, or null. apex.billing publishes it
with the limits (field ``upgrade_to:<limit>``), from its own plan table (APEX_PLANS); for
a tenant without published entitlements (or a hash without the field) it is the
smallest tier of the contract's table that allows more.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from redis.asyncio import Redis

__all__ = ["FREE", "TIERS", "UPGRADE_TO", "Entitlements", "entitlements_key", "read", "refusal"]

# The contract's plan table (contract-billing.md § Plans), cheapest first: what a tenant
# without published entitlements may use, and where an upgrade leads.
TIERS: Final[Mapping[str, Mapping[str, int]]] = MappingProxyType(
    {
        "free": {
            "requests_per_minute": 60,
            "tokens_per_day": 100_000,
            "seats": 1,
            "ws_connections": 2,
        },
        "early": {
            "requests_per_minute": 600,
            "tokens_per_day": 2_000_000,
            "seats": 5,
            "ws_connections": 20,
        },
        "mid": {
            "requests_per_minute": 3_000,
            "tokens_per_day": 20_000_000,
            "seats": 25,
            "ws_connections": 200,
        },
        "enterprise": {
            "requests_per_minute": 30_000,
            "tokens_per_day": 500_000_000,
            "seats": 1_000,
            "ws_connections": 5_000,
        },
    }
)
# The prefix of the published fields naming, per limit, the plan to upgrade to ("": none).
UPGRADE_TO: Final = "upgrade_to:"


@dataclasses.dataclass(frozen=True)
class Entitlements:
    """A tenant's plan and its limits (name -> whole number), and per limit the plan a
    refusal points to (None: the top; a limit not in ``upgrades``: the contract's
    table decides)."""

    plan: str
    limits: Mapping[str, int]
    upgrades: Mapping[str, str | None] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )

    def allows(self, limit: str, in_use: int) -> bool:
        """Whether one more of ``limit`` fits beside ``in_use``."""
        return in_use < self.limits[limit]


FREE: Final = Entitlements("free", TIERS["free"])


def entitlements_key(prefix: str, tenant: uuid.UUID | str) -> str:
    """The hash apex.billing publishes the tenant's entitlements in."""
    return f"{prefix}billing:entitlements:{tenant}"


async def read(redis: Redis, prefix: str, tenant: uuid.UUID | str) -> Entitlements:
    """The tenant's entitlements; :data:`FREE` when none are published. A field that is
    missing or not a whole number keeps the free plan's value for that limit."""
    raw: dict[Any, Any] = await redis.hgetall(entitlements_key(prefix, tenant))
    if not raw:
        return FREE
    fields = {_text(key): _text(value) for key, value in raw.items()}
    limits = {
        name: int(fields[name]) if fields.get(name, "").isdigit() else default
        for name, default in FREE.limits.items()
    }
    upgrades = {
        name[len(UPGRADE_TO) :]: value or None
        for name, value in fields.items()
        if name.startswith(UPGRADE_TO)
    }
    return Entitlements(
        fields.get("plan") or FREE.plan, MappingProxyType(limits), MappingProxyType(upgrades)
    )


def refusal(entitlements: Entitlements, limit: str) -> dict[str, Any]:
    """The body of the 402 ``plan_limit_exceeded`` answer for ``limit``."""
    allowed = entitlements.limits[limit]
    if limit in entitlements.upgrades:
        upgrade_to = entitlements.upgrades[limit]
    else:
        upgrade_to = next((name for name, row in TIERS.items() if row[limit] > allowed), None)
    return {
        "error": "plan_limit_exceeded",
        "detail": f"the {entitlements.plan} plan allows {allowed} {limit.replace('_', ' ')}"
        + (f"; upgrade to {upgrade_to} for more" if upgrade_to else ""),
        "limit": limit,
        "allowed": allowed,
        "plan": entitlements.plan,
        "upgrade_to": upgrade_to,
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
