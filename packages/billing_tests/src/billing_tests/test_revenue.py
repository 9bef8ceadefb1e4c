"""001#100 revenue recognition: a paid month is deferred revenue that becomes revenue day
by day (`floor(amount * days_ended / days)`, the whole on the last day), booked once per
invoice and date; the ledger's invariants hold throughout.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from apex_testkit import FakePayments
from billing_tests.client import (
    MANAGE,
    READ,
    MakeUser,
    bearer,
    ledger_check,
    ledger_of,
    sdk,
    subscribe,
)

RECOGNITION = pytest.mark.bvj(
    segment="enterprise", goal="Revenue is recognised day by day, never more than was billed",
    mrr=10000, scenario="001#100",
)  # fmt: skip
pytestmark = [RECOGNITION, pytest.mark.L2]

NEW_YEAR = 1767225600  # 2026-01-01T00:00:00Z


async def recognise(client: httpx.AsyncClient, admin_token: str, day: str) -> int:
    response = await client.post(
        "/admin/billing/recognize", json={"date": day}, headers=bearer(admin_token)
    )
    assert response.status_code == 200, response.text
    booked: int = response.json()["booked"]
    return booked


async def test_a_month_is_recognised_day_by_day_once(
    billing_client: httpx.AsyncClient,
    make_billing_user: MakeUser,
    fake_payments: FakePayments,
    billing_db: Any,
    admin_token: str,
) -> None:
    owner = await make_billing_user(permissions=(READ, MANAGE))
    clock = sdk(fake_payments).v1.test_helpers.test_clocks.create(params={"frozen_time": NEW_YEAR})
    response = await subscribe(billing_client, owner, "early", test_clock=clock.id)
    assert response.status_code == 200, response.text

    async def revenue() -> int:
        rows = await ledger_of(billing_db, owner)
        return sum(credit - debit for _, account, debit, credit in rows if account == "revenue")

    # Before January 1st has ended, nothing; after 10 of its 31 days, 10/31 of 2900.
    assert await recognise(billing_client, admin_token, "2025-12-31") == 0
    assert await recognise(billing_client, admin_token, "2026-01-10") == 1
    assert await revenue() == 2900 * 10 // 31
    # Run again for the same day: nothing more.
    assert await recognise(billing_client, admin_token, "2026-01-10") == 0
    assert await revenue() == 935
    # An earlier day never takes back what was recognised.
    assert await recognise(billing_client, admin_token, "2026-01-05") == 0
    assert await revenue() == 935
    # The last day recognises the rest exactly; later days add nothing.
    assert await recognise(billing_client, admin_token, "2026-01-31") == 1
    assert await revenue() == 2900
    assert await recognise(billing_client, admin_token, "2026-03-01") == 0
    assert await revenue() == 2900
    check = await ledger_check(billing_client, admin_token)
    assert check["ok"] is True, check
    assert set(check["invariants"]) == {
        "transactions_balance",
        "recognised_within_billed",
        "deferred_not_negative",
        "accounts_sum_to_zero",
        "refunded_within_paid",
    }


async def test_the_admin_routes_need_the_admin_token(
    billing_client: httpx.AsyncClient, make_billing_user: MakeUser, billing_db: Any
) -> None:
    owner = await make_billing_user(permissions=(READ, MANAGE))
    response = await billing_client.post(
        "/admin/billing/recognize", json={"date": "2026-01-10"}, headers=owner.headers
    )
    assert response.status_code == 401, response.text
    assert await billing_db.fetchval("SELECT count(*) FROM billing_ledger") == 0
