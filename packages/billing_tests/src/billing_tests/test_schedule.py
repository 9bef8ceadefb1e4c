"""The billing schedule (notes-billing.md § Scheduled invoicing): usage periods invoiced
once they close, revenue recognised daily, and usage that arrives for an invoiced period
corrected, so invoices agree with the raw events to the cent.

The rules under test: time is cut into periods of APEX_USAGE_PERIOD seconds aligned to
the Unix epoch (here 1 s, the shortest: each test waits for its period to close; late
usage arrives for the same second after its period was invoiced); a pass
(every APEX_BILLING_SCHEDULE_INTERVAL seconds, or `POST /admin/billing/schedule/run`)
invoices each closed period of a live subscription once, as invoice items on its next
provider invoice priced by the line rule (cents rounded up once per line), corrects an
invoiced period whose lines grew (one more item: the line's new price minus what was
invoiced), and recognises revenue through yesterday (a paid January 2026 is wholly
recognised by now). Running a pass again books and invoices nothing. The renewal invoice
is read at the provider (test clock at 2026-01-01).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from agent_tests.client import RUN_AGENTS

from apex_testkit import FakePayments, Platform, eventually
from billing_tests.client import (
    MANAGE,
    READ,
    BillingUser,
    MakeUser,
    bearer,
    cents_of,
    ledger_of,
    metered,
    record,
    sdk,
    subscribe,
    tenant_of,
    usage_check,
    write_usage,
)

SCHEDULE = pytest.mark.bvj(
    segment="enterprise", goal="Usage is invoiced and revenue recognised on time, once",
    mrr=20000, scenario="001#97",
)  # fmt: skip
pytestmark = [SCHEDULE, pytest.mark.L2, pytest.mark.L3]

# Usage periods (APEX_USAGE_PERIOD, whole seconds): the shortest, as both tests wait
# for their period to close (half of it on average).
PERIOD = 1
NEW_YEAR = 1767225600  # 2026-01-01T00:00:00Z
WRITER = {"agent": "writer", "model": "gpt-4o-mini"}


def settings(interval: str, period: int) -> dict[str, str]:
    """apex.billing's settings here: its schedule every `interval` seconds (or off), usage
    periods of `period` seconds, periods corrected for an hour."""
    return {
        "APEX_BILLING_SCHEDULE_INTERVAL": interval,
        "APEX_USAGE_PERIOD": str(period),
        "APEX_USAGE_LATE_WINDOW": "3600",
    }


@pytest.fixture
async def scheduled_billing(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """apex.billing running its schedule every 0.2 s: an instance of this test alone.

    Its loop ends with the test. The worker's instance of these settings would be kept
    for the next tests and go on running passes over their tenants, invoicing and
    correcting periods before their own passes do."""
    async with (
        clean_platform.start("billing", **settings("0.2", PERIOD)) as instance,
        httpx.AsyncClient(base_url=instance.url) as client,
    ):
        yield client


@pytest.fixture
async def manual_billing(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """apex.billing with its schedule off: passes only through the admin route."""
    async with clean_platform.client("billing", instance=0, **settings("off", PERIOD)) as client:
        yield client


async def converted_on_new_year(
    billing: httpx.AsyncClient, make_billing_user: MakeUser, fake_payments: FakePayments
) -> tuple[BillingUser, str]:
    """A tenant converted to early on a test clock at 2026-01-01 (January paid: 2900),
    and the clock."""
    clock = sdk(fake_payments).v1.test_helpers.test_clocks.create(params={"frozen_time": NEW_YEAR})
    owner = await make_billing_user(permissions=(READ, MANAGE, RUN_AGENTS))
    response = await subscribe(billing, owner, "early", test_clock=clock.id)
    assert response.status_code == 200, response.text
    return owner, clock.id


def current_period(length: int) -> tuple[datetime.datetime, datetime.datetime]:
    """The usage period of `length` seconds that holds this second."""
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    start = now // length * length
    return (
        datetime.datetime.fromtimestamp(start, datetime.UTC),
        datetime.datetime.fromtimestamp(start + length, datetime.UTC),
    )


def iso(moment: datetime.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def items_of(db: Any, user: BillingUser) -> list[tuple[int, bool]]:
    """The tenant's usage invoice items as recorded: (amount, correction), in order."""
    rows = await db.fetch(
        "SELECT amount, correction FROM billing_usage_items WHERE tenant_id = $1 ORDER BY id",
        uuid.UUID(tenant_of(user)),
    )
    return [(r["amount"], r["correction"]) for r in rows]


async def run_pass(billing: httpx.AsyncClient, admin_token: str) -> dict[str, Any]:
    response = await billing.post("/admin/billing/schedule/run", headers=bearer(admin_token))
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def renewal_lines(fake_payments: FakePayments, clock: str, subscription: str) -> Any:
    """February's renewal invoice, once the test clock passed 2026-02-01."""
    provider = sdk(fake_payments)
    provider.v1.test_helpers.test_clocks.advance(
        clock, params={"frozen_time": NEW_YEAR + 31 * 86400 + 60}
    )
    february = provider.v1.invoices.list(params={"subscription": subscription}).data[0]
    assert february.billing_reason == "subscription_cycle"
    return february


async def subscription_id(billing: httpx.AsyncClient, user: BillingUser) -> str:
    invoices = await billing.get("/v1/billing/invoices", headers=user.headers)
    assert invoices.status_code == 200, invoices.text
    found: str = invoices.json()["invoices"][0]["subscription_id"]
    return found


async def test_the_schedule_invoices_closed_periods_and_recognises_revenue_once(
    scheduled_billing: httpx.AsyncClient,
    billing_data_client: httpx.AsyncClient,
    billing_auth_client: httpx.AsyncClient,
    make_billing_user: MakeUser,
    fake_payments: FakePayments,
    billing_db: Any,
    admin_token: str,
) -> None:
    owner, clock = await converted_on_new_year(scheduled_billing, make_billing_user, fake_payments)
    period = current_period(PERIOD)
    usage = [record("a", "llm", 1200, 12_345, iso(period[0]), **WRITER)]
    await write_usage(billing_data_client, billing_auth_client, owner, usage)

    async def done() -> bool:
        revenue = sum(c for _, account, _, c in await ledger_of(billing_db, owner)
                      if account == "revenue")  # fmt: skip
        return revenue == 2900 and await items_of(billing_db, owner) == [(cents_of(12_345), False)]

    # By itself: the period invoiced once it closed, January recognised whole.
    await eventually(done, timeout=60, message="usage invoiced and January recognised")
    ledger = await ledger_of(billing_db, owner)
    assert len([row for row in ledger if row[0].startswith("recognise:")]) == 2
    for _ in range(2):  # run again: nothing more
        again = await run_pass(scheduled_billing, admin_token)
        assert (again["items"], again["recognised"]) == (0, 0), again
    assert await ledger_of(billing_db, owner) == ledger
    assert await items_of(billing_db, owner) == [(2, False)]

    # The provider put the usage on February's invoice once, beside the plan's month.
    february = renewal_lines(fake_payments, clock, await subscription_id(scheduled_billing, owner))
    assert sorted(line.amount for line in february.lines.data) == [2, 2900]
    check = await usage_check(scheduled_billing, admin_token, tenant_of(owner), *map(iso, period))
    assert check["ok"] is True, check
    assert check["total"]["raw"] == {"amount": 2, "currency": "usd"}


async def test_usage_arriving_for_an_invoiced_period_is_corrected_to_the_cent(
    manual_billing: httpx.AsyncClient,
    billing_data_client: httpx.AsyncClient,
    billing_auth_client: httpx.AsyncClient,
    make_billing_user: MakeUser,
    fake_payments: FakePayments,
    billing_db: Any,
    admin_token: str,
) -> None:
    owner, clock = await converted_on_new_year(manual_billing, make_billing_user, fake_payments)
    period = current_period(PERIOD)
    window = (iso(period[0]), iso(period[1]))
    first = [record("a", "llm", 1200, 12_345, window[0], **WRITER)]
    await write_usage(billing_data_client, billing_auth_client, owner, first)
    await metered(manual_billing, owner, events=1, period=window)

    async def invoiced() -> bool:
        await run_pass(manual_billing, admin_token)
        return await items_of(billing_db, owner) == [(2, False)]

    await eventually(invoiced, timeout=60, message="the period invoiced once closed")

    # Late: the same line of the same period (its one second), after it was invoiced.
    late = [record("b", "llm", 800, 20_001, window[0], **WRITER)]
    await write_usage(billing_data_client, billing_auth_client, owner, late)
    await metered(manual_billing, owner, events=2, period=window)
    corrected = await run_pass(manual_billing, admin_token)
    assert corrected["items"] == 1, corrected
    # The line is 32,346 micro-dollars, 4 cents: 2 were invoiced, the correction is 2
    # (priced alone the late record would be 3).
    whole = cents_of(12_345 + 20_001)
    assert await items_of(billing_db, owner) == [(2, False), (whole - 2, True)]
    assert (await run_pass(manual_billing, admin_token))["items"] == 0
    assert await items_of(billing_db, owner) == [(2, False), (whole - 2, True)]
    # The period's usage invoice lists both items.
    response = await manual_billing.post(
        "/admin/billing/usage-invoice",
        json={"tenant": tenant_of(owner), "from": window[0], "to": window[1]},
        headers=bearer(admin_token),
    )
    assert response.status_code == 200, response.text
    items = [(i["amount"], i["correction"]) for i in response.json()["invoice_items"]]
    assert items == [(2, False), (whole - 2, True)]
    assert await items_of(billing_db, owner) == items

    # February's invoice carries the period's usage at its whole price, as the raw events.
    february = renewal_lines(fake_payments, clock, await subscription_id(manual_billing, owner))
    assert sorted(line.amount for line in february.lines.data) == [2, 2, 2900]
    assert february.amount_paid == 2900 + whole
    check = await usage_check(manual_billing, admin_token, tenant_of(owner), *window)
    assert check["ok"] is True, check
    assert check["total"]["raw"] == {"amount": whole, "currency": "usd"}
