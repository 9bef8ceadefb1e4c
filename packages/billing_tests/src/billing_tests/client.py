"""A client of the Apex billing service (apex.billing), for any team's tests.

Public: `BillingUser` (a platform user of one tenant with a context token for apex.billing:
`auth_tests.access.ServiceUser`), `READ`/`MANAGE` (the permissions), `subscribe`,
`subscription_of`, `status_of`, `ledger_of` (the tenant's ledger rows, from the database),
`ledger_check`, `entitlements_of`, `tenant_of` (what the other services read in Redis), `sdk` (the
official `stripe` client of the payment provider, to read its state), `prorated`
(Stripe's prorated amount, computed here from the rule), `error_of`; metering:
`usage_of` (GET /v1/billing/usage), `usage_check` (the admin check), `cents_of` (the
price rule of notes-billing.md § Metering, written out here), `record` and `write_usage`
(usage written to apex.data as a user), `metered` (waits until usage reached billing).
`MakeUser` is the type of the `make_billing_user` fixture.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import httpx
import stripe
from auth_tests.access import ServiceUser, bearer, context_token

from apex_testkit import FakePayments, eventually

__all__ = [
    "AUDIENCE",
    "MANAGE",
    "READ",
    "BillingUser",
    "MakeUser",
    "bearer",
    "cents_of",
    "change",
    "entitlements_of",
    "error_of",
    "ledger_check",
    "ledger_of",
    "metered",
    "prorated",
    "record",
    "sdk",
    "status_of",
    "subscribe",
    "subscription_of",
    "tenant_of",
    "usage_check",
    "usage_of",
    "write_usage",
]

# The audience apex.billing accepts context tokens for.
AUDIENCE: Final = "apex-billing"
READ: Final = "billing:read"
MANAGE: Final = "billing:manage"
BillingUser = ServiceUser
# `await make_billing_user(permissions=(...))`: what `make_billing_user` hands out.
MakeUser = Callable[..., Awaitable[BillingUser]]


def sdk(fake: FakePayments) -> stripe.StripeClient:
    """The official client of the payment provider the platform uses (its own retries
    off), to read the provider's state."""
    return stripe.StripeClient(
        fake.api_key, base_addresses={"api": fake.base_url}, max_network_retries=0
    )


async def subscribe(
    client: httpx.AsyncClient,
    user: BillingUser,
    plan: str,
    card: str = "pm_card_visa",
    **extra: Any,
) -> httpx.Response:
    """POST /v1/billing/subscription as `user` (the response, unchecked)."""
    body = {"plan": plan, "payment_method": card, **extra}
    return await client.post("/v1/billing/subscription", json=body, headers=user.headers)


async def subscription_of(client: httpx.AsyncClient, user: BillingUser) -> dict[str, Any]:
    """GET /v1/billing/subscription as `user` (200 asserted)."""
    response = await client.get("/v1/billing/subscription", headers=user.headers)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def change(client: httpx.AsyncClient, user: BillingUser, plan: str) -> dict[str, Any]:
    """Change `user`'s subscription to `plan` (200 asserted); the state answered."""
    response = await client.post(
        "/v1/billing/subscription/change", json={"plan": plan}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


def tenant_of(user: BillingUser) -> str:
    """The user's tenant (every billing user has one)."""
    assert user.tenant_id is not None
    return user.tenant_id


async def ledger_of(db: Any, user: BillingUser) -> list[tuple[str, str, int, int]]:
    """The user's tenant's ledger rows, in booking order: (transaction, account, debit,
    credit)."""
    rows = await db.fetch(
        "SELECT transaction_id, account, debit, credit FROM billing_ledger "
        "WHERE tenant_id = $1 ORDER BY id",
        uuid.UUID(tenant_of(user)),
    )
    return [(r["transaction_id"], r["account"], r["debit"], r["credit"]) for r in rows]


async def status_of(client: httpx.AsyncClient, user: BillingUser) -> str:
    """The status of the user's tenant's subscription (`none` without one)."""
    status: str = (await subscription_of(client, user))["status"]
    return status


async def ledger_check(client: httpx.AsyncClient, admin_token: str) -> dict[str, Any]:
    """GET /admin/billing/ledger/check (200 asserted)."""
    response = await client.get("/admin/billing/ledger/check", headers=bearer(admin_token))
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def entitlements_of(redis: Any, prefix: str, user: BillingUser) -> dict[str, str]:
    """The user's tenant's entitlements as the other services read them (empty: free)."""
    key = f"{prefix}billing:entitlements:{tenant_of(user)}"
    found: dict[str, str] = await redis.hgetall(key)
    return found


def prorated(amount: int, left: int, whole: int) -> int:
    """`amount * left / whole` rounded half away from zero (Stripe's proration of one
    line), in integers."""
    return (2 * amount * left + whole) // (2 * whole)


def error_of(response: httpx.Response) -> str:
    """The machine-readable error code of a refused response."""
    code: str = response.json()["error"]
    return code


def cents_of(cost_micros: int) -> int:
    """The price of a usage line (notes-billing.md § Metering): its cost in micro-dollars
    in US cents, rounded up once per line."""
    cents, rest = divmod(cost_micros, 10_000)
    return cents + (1 if rest else 0)


async def usage_of(
    client: httpx.AsyncClient, user: BillingUser, since: str, until: str
) -> dict[str, Any]:
    """GET /v1/billing/usage?from&to as `user` (200 asserted)."""
    response = await client.get(
        "/v1/billing/usage", params={"from": since, "to": until}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def usage_check(
    client: httpx.AsyncClient, admin_token: str, tenant: str, since: str, until: str
) -> dict[str, Any]:
    """GET /admin/billing/usage/check (200 asserted)."""
    response = await client.get(
        "/admin/billing/usage/check",
        params={"tenant": tenant, "from": since, "to": until},
        headers=bearer(admin_token),
    )
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def write_usage(
    data: httpx.AsyncClient,
    auth: httpx.AsyncClient,
    user: BillingUser,
    records: list[dict[str, Any]],
) -> list[int]:
    """POST /v1/usage of each record as `user` (a context token for apex.data); the
    statuses (201 new, 200 an idempotency key seen before)."""
    headers = bearer(await context_token(auth, user.tokens, "apex-data"))
    statuses = []
    for record in records:
        body = {"user_id": user.key_user.user_id, **record}
        response = await data.post("/v1/usage", json=body, headers=headers)
        assert response.status_code in (200, 201), response.text
        statuses.append(response.status_code)
    return statuses


def record(key: str, kind: str, quantity: int, cost: int, at: str, **labels: str) -> dict[str, Any]:
    """A usage record of `POST /v1/usage` (apex.data) with these labels."""
    return {
        "kind": kind,
        "quantity": quantity,
        "cost_micros": cost,
        "idempotency_key": key,
        "occurred_at": at,
        "labels": labels,
    }


async def metered(
    billing: httpx.AsyncClient, user: BillingUser, *, events: int, period: tuple[str, str]
) -> dict[str, Any]:
    """The user's usage of `period` (`[from, to)`) once at least `events` of its events
    reached it (apex.data's relay copies them to ClickHouse)."""

    async def arrived() -> dict[str, Any] | None:
        usage = await usage_of(billing, user, *period)
        return usage if sum(x["events"] for x in usage["lines"]) >= events else None

    found: dict[str, Any] | None = await eventually(
        arrived, timeout=60, message=f"{events} usage events metered"
    )
    assert found is not None  # eventually returns a truthy value
    return found
