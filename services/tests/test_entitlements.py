"""apex.common.entitlements: the free plan by default, the 402 body, the APEX_PLAN_LIMITS switch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from apex.billing.entitlements import upgrades
from apex.billing.plans import LIMITS, Plan
from apex.common import entitlements
from apex.common.config import Settings
from apex.common.settings import ConfigError
from apex.gateway.settings import GatewaySettings


class _Hashes:
    """A Redis stand-in answering HGETALL from a dict."""

    def __init__(self, hashes: dict[str, dict[str, str]]) -> None:
        self.hashes = hashes

    async def hgetall(self, key: str) -> dict[str, str]:
        return self.hashes.get(key, {})


def _read(hashes: dict[str, dict[str, str]], tenant: str) -> entitlements.Entitlements:
    redis: Any = _Hashes(hashes)
    return asyncio.run(entitlements.read(redis, "p:", tenant))


def test_a_tenant_without_published_entitlements_is_on_the_contracts_free_plan() -> None:
    found = _read({}, "t1")
    assert found.plan == "free"
    assert (found.limits["seats"], found.limits["ws_connections"]) == (1, 2)


def test_published_entitlements_are_read_as_billing_writes_them() -> None:
    key = entitlements.entitlements_key("p:", "t1")
    assert key == "p:billing:entitlements:t1"
    found = _read({key: {"plan": "early", "seats": "5", "ws_connections": "20"}}, "t1")
    assert (found.plan, found.limits["seats"], found.limits["ws_connections"]) == ("early", 5, 20)
    assert found.allows("seats", 4)
    assert not found.allows("seats", 5)


@pytest.mark.parametrize(
    ("plan", "limit", "allowed", "upgrade_to"),
    [
        ("free", "seats", 1, "early"),
        ("early", "ws_connections", 20, "mid"),
        ("enterprise", "seats", 1000, None),
    ],
)
def test_the_refusal_names_the_limit_the_plan_and_the_next_tier(
    plan: str, limit: str, allowed: int, upgrade_to: str | None
) -> None:
    body = entitlements.refusal(entitlements.Entitlements(plan, entitlements.TIERS[plan]), limit)
    assert body["error"] == "plan_limit_exceeded"
    assert (body["limit"], body["allowed"], body["plan"], body["upgrade_to"]) == (
        limit,
        allowed,
        plan,
        upgrade_to,
    )


@pytest.mark.parametrize("settings_type", [Settings, GatewaySettings])
def test_plan_limits_are_off_unless_switched_on(settings_type: Any) -> None:
    base = {"APEX_REDIS_URL": "redis://cache:6379/0"}
    assert settings_type.from_env(base).plan_limits is False
    assert settings_type.from_env({**base, "APEX_PLAN_LIMITS": "ON"}).plan_limits is True
    with pytest.raises(ConfigError, match="APEX_PLAN_LIMITS must be on or off"):
        settings_type.from_env({**base, "APEX_PLAN_LIMITS": "yes"})


def _plans(**rows: tuple[int, int, int]) -> dict[str, Plan]:
    """A plan table: name -> (price, requests per minute, seats); other limits alike."""
    return {
        name: Plan(name, price, rate, 100_000, seats, 2)
        for name, (price, rate, seats) in rows.items()
    }


def test_billing_publishes_where_an_upgrade_leads_in_its_own_table() -> None:
    # An operator's table: "team" is dearer than "solo" yet allows fewer runs a minute.
    plans = _plans(
        free=(0, 60, 1), solo=(1_000, 600, 1), team=(5_000, 100, 10), big=(9_000, 900, 10)
    )
    assert upgrades(plans["free"], plans)["requests_per_minute"] == "solo"
    assert upgrades(plans["free"], plans)["seats"] == "team"
    assert upgrades(plans["solo"], plans)["requests_per_minute"] == "big"
    assert upgrades(plans["big"], plans) == dict.fromkeys(LIMITS)


def test_a_published_upgrade_is_the_refusals_and_an_empty_one_is_none() -> None:
    key = entitlements.entitlements_key("p:", "t1")
    published = {
        "plan": "solo",
        "requests_per_minute": "600",
        f"{entitlements.UPGRADE_TO}requests_per_minute": "big",
        f"{entitlements.UPGRADE_TO}seats": "",
    }
    found = _read({key: published}, "t1")
    assert entitlements.refusal(found, "requests_per_minute")["upgrade_to"] == "big"
    assert entitlements.refusal(found, "seats")["upgrade_to"] is None
    # Not published (a hash written before the field existed): the contract's table.
    assert entitlements.refusal(found, "ws_connections")["upgrade_to"] == "early"
