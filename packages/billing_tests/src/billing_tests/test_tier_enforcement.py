"""003 subscription tier enforcement: apex.auth counts a tenant's users against its plan's
seats and apex.gateway its WebSocket connections against `ws_connections`, reading the
entitlements apex.billing publishes (a tenant without them is on `free`). Over the limit
the answer is 402 `plan_limit_exceeded` with `limit`, `allowed`, `plan` and `upgrade_to`
(contract-billing.md § Entitlements, notes-billing.md § Tier enforcement) and nothing is
done: no user is created, no connection registered (a slot freed later admits exactly one
more). An upgrade through apex.billing lifts the limit at once. Both services enforce
with APEX_PLAN_LIMITS=on, which these tests set. Expectations: the contract's plan table
(free: 1 seat, 2 connections; early: 5 seats, 20 connections).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from auth_tests.access import bearer
from auth_tests.client import AuthAdmin
from ws_tests.client import HandshakeRefused, WsClient, close_quietly, open_ws

from apex_testkit import Platform
from billing_tests.client import MANAGE, READ, BillingUser, MakeUser, subscribe, tenant_of

TIERS = pytest.mark.bvj(
    segment="platform", goal="Each tier gets what it pays for, and an upgrade unlocks more at once",
    mrr=40000, scenario="003:subscription tier enforcement",
)  # fmt: skip
pytestmark = [TIERS, pytest.mark.L2, pytest.mark.L3]


@pytest.fixture
async def owner(make_billing_user: MakeUser) -> BillingUser:
    """The first user of a new tenant (its one free seat), allowed to change the plan."""
    return await make_billing_user(permissions=(READ, MANAGE))


@pytest.fixture
async def enforcing_auth(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """A client of apex.auth enforcing plan limits."""
    async with clean_platform.client("auth", APEX_PLAN_LIMITS="on") as client:
        yield client


@pytest.fixture
async def enforcing_gateway(clean_platform: Platform) -> AsyncIterator[str]:
    """The ws:// base URL of apex.gateway enforcing plan limits."""
    async with clean_platform.serve("gateway", APEX_PLAN_LIMITS="on") as url:
        yield url


async def add_user(
    auth: httpx.AsyncClient, admin_token: str, namespace: str, tenant: str | None
) -> httpx.Response:
    """POST /admin/users: a new user of `tenant` (None: of none; the response, unchecked)."""
    admin = AuthAdmin(auth, admin_token, namespace)
    body = {"email": admin.new_email(), "tier": "pro"}
    if tenant is not None:
        body["tenant_id"] = tenant
    return await auth.post("/admin/users", json=body, headers=bearer(admin_token))


async def users_of(db: Any, tenant: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM users WHERE tenant_id = $1", uuid.UUID(tenant)
    )
    return count


def assert_refused(body: dict[str, Any], limit: str, allowed: int, plan: str, up: str) -> None:
    assert body["error"] == "plan_limit_exceeded", body
    fields = (body["limit"], body["allowed"], body["plan"], body["upgrade_to"])
    assert fields == (limit, allowed, plan, up), body


async def test_seats_are_the_plans_and_an_upgrade_adds_them_at_once(
    enforcing_auth: httpx.AsyncClient,
    billing_client: httpx.AsyncClient,
    owner: BillingUser,
    admin_token: str,
    billing_namespace: str,
    billing_db: Any,
) -> None:
    tenant = tenant_of(owner)
    # free: one seat, the owner's.
    refused = await add_user(enforcing_auth, admin_token, billing_namespace, tenant)
    assert refused.status_code == 402, refused.text
    assert_refused(refused.json(), "seats", 1, "free", "early")
    assert await users_of(billing_db, tenant) == 1
    # A user of no tenant takes no seat of anyone's.
    loose = await add_user(enforcing_auth, admin_token, billing_namespace, None)
    assert loose.status_code == 201, loose.text

    upgraded = await subscribe(billing_client, owner, "early")
    assert upgraded.status_code == 200, upgraded.text
    # early: five seats, usable at once.
    for _ in range(4):
        added = await add_user(enforcing_auth, admin_token, billing_namespace, tenant)
        assert added.status_code == 201, added.text
    assert await users_of(billing_db, tenant) == 5
    sixth = await add_user(enforcing_auth, admin_token, billing_namespace, tenant)
    assert sixth.status_code == 402, sixth.text
    assert_refused(sixth.json(), "seats", 5, "early", "mid")
    assert await users_of(billing_db, tenant) == 5


async def test_connections_are_the_plans_and_an_upgrade_adds_them_at_once(
    enforcing_gateway: str,
    billing_client: httpx.AsyncClient,
    owner: BillingUser,
) -> None:
    opened: list[WsClient] = []
    try:
        # free: two connections for the whole tenant.
        opened += [await open_ws(enforcing_gateway, owner.tokens.access) for _ in range(2)]
        with pytest.raises(HandshakeRefused) as refused:
            await open_ws(enforcing_gateway, owner.tokens.access)
        assert refused.value.status == 402
        assert_refused(refused.value.body, "ws_connections", 2, "free", "early")
        # The refused handshake registered nothing: one freed slot admits exactly one.
        await close_quietly(opened.pop())
        opened.append(await open_ws(enforcing_gateway, owner.tokens.access))
        with pytest.raises(HandshakeRefused) as again:
            await open_ws(enforcing_gateway, owner.tokens.access)
        assert again.value.status == 402

        upgraded = await subscribe(billing_client, owner, "early")
        assert upgraded.status_code == 200, upgraded.text
        # early: twenty, usable at once.
        opened.append(await open_ws(enforcing_gateway, owner.tokens.access))
        assert len(opened) == 3
    finally:
        for client in opened:
            await close_quietly(client)
