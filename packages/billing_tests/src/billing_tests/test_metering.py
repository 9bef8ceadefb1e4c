"""001#97 usage metering, and the 003 row "agent cost tracking: cost attributed and billed".

The rules under test (contract-billing.md § Metering, notes-billing.md § Metering):
usage written to apex.data (`POST /v1/usage`) reaches the tenant's
`GET /v1/billing/usage?from&to` as one line per kind, agent and model (the records'
`agent`/`model` labels, `""` when absent) with its quantity, cost, count of events and
price (the line's cost in micro-dollars as US cents, rounded up once per line); the
total is the sum of the lines' prices; a record sent again with its idempotency key is
counted once; the period is `[from, to)`; another tenant's usage never shows; the admin
check recomputes the lines from the raw records and agrees to the cent, and reports a
raw record the aggregates lack. At L3 an agent run's cost is billed to its tenant.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from typing import Any

import httpx
import pytest
from agent_tests.client import AUDIENCE as AGENTS
from agent_tests.client import READ_RUNS, RUN_AGENTS, final_run, submit
from auth_tests.access import context_token

from apex_testkit import FakeLlm, FakePayments
from billing_tests.client import (
    MANAGE,
    READ,
    MakeUser,
    bearer,
    cents_of,
    error_of,
    metered,
    record,
    sdk,
    subscribe,
    tenant_of,
    usage_check,
    usage_of,
    write_usage,
)

METERING = pytest.mark.bvj(
    segment="enterprise", goal="Tenants are billed exactly what they used, once",
    mrr=20000, scenario="001#97",
)  # fmt: skip
AGENT_COST = pytest.mark.bvj(
    segment="enterprise", goal="What an agent run costs is attributed and billed to its tenant",
    mrr=25000, scenario="003:agent cost tracking",
)  # fmt: skip

JANUARY = ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
WRITER = {"agent": "writer", "model": "gpt-4o-mini", "provider": "llm", "run_id": "r1"}
PLANNER = {"agent": "planner", "model": "gpt-4o", "provider": "llm", "run_id": "r2"}


def line(
    kind: str, labels: dict[str, str], quantity: int, cost: int, events: int
) -> dict[str, Any]:
    """A usage line as the contract shows it, priced by the rule."""
    return {
        "kind": kind,
        "agent": labels.get("agent", ""),
        "model": labels.get("model", ""),
        "quantity": quantity,
        "cost_micros": cost,
        "events": events,
        "price": {"amount": cents_of(cost), "currency": "usd"},
    }


@METERING
@pytest.mark.L2
@pytest.mark.L3
async def test_usage_is_metered_once_per_event_priced_per_line_and_checked(
    billing_client: httpx.AsyncClient,
    billing_data_client: httpx.AsyncClient,
    billing_auth_client: httpx.AsyncClient,
    make_billing_user: MakeUser,
    admin_token: str,
) -> None:
    user = await make_billing_user(permissions=(READ, RUN_AGENTS))
    other = await make_billing_user(permissions=(READ, RUN_AGENTS))
    mine = [
        record("a", "llm", 1200, 12_345, "2026-01-05T10:00:00Z", **WRITER),
        record("b", "llm", 800, 20_001, "2026-01-20T08:30:00Z", **WRITER),
        record("c", "llm", 10, 1, "2026-01-31T23:59:59Z", **PLANNER),
        record("d", "api", 7, 0, "2026-01-10T00:00:00Z"),
        # Outside [from, to): the last second of December, and `to` itself.
        record("e", "llm", 5, 990_000, "2025-12-31T23:59:59Z", **WRITER),
        record("f", "llm", 5, 990_000, "2026-02-01T00:00:00Z", **WRITER),
    ]
    assert await write_usage(billing_data_client, billing_auth_client, user, mine) == [201] * 6
    # The retried event: the same idempotency key, counted once whatever it carries.
    retry = [record("a", "llm", 1200, 12_345, "2026-01-05T10:00:00Z", **WRITER)]
    assert await write_usage(billing_data_client, billing_auth_client, user, retry) == [200]
    theirs = [record("a", "llm", 999, 50_000, "2026-01-05T10:00:00Z", **WRITER)]
    assert await write_usage(billing_data_client, billing_auth_client, other, theirs) == [201]

    usage = await metered(billing_client, user, events=4, period=JANUARY)
    # Per line, rounded up once: 32,346 micro-dollars is 4 cents (per event it would be 5).
    expected = [
        line("api", {}, 7, 0, 1),
        line("llm", PLANNER, 10, 1, 1),
        line("llm", WRITER, 2000, 32_346, 2),
    ]
    assert usage["tenant_id"] == tenant_of(user)
    assert usage["lines"] == expected
    assert usage["total"] == {"amount": 0 + 1 + 4, "currency": "usd"}
    their_usage = await metered(billing_client, other, events=1, period=JANUARY)
    assert their_usage["lines"] == [line("llm", WRITER, 999, 50_000, 1)]
    assert their_usage["total"] == {"amount": 5, "currency": "usd"}

    # The invoice of the period has the same lines and total.
    response = await billing_client.post(
        "/admin/billing/usage-invoice",
        json={"tenant": tenant_of(user), "from": JANUARY[0], "to": JANUARY[1]},
        headers=bearer(admin_token),
    )
    assert response.status_code == 200, response.text
    invoice = response.json()
    assert (invoice["lines"], invoice["total"]) == (expected, usage["total"])

    # Recomputed from the raw records: the same to the cent.
    check = await usage_check(billing_client, admin_token, tenant_of(user), *JANUARY)
    assert check["ok"] is True, check
    assert (check["events"], check["lines"], check["mismatches"]) == (4, 3, [])
    money = {"amount": 5, "currency": "usd"}
    assert check["total"] == {"aggregate": money, "raw": money}


@METERING
@pytest.mark.L2
@pytest.mark.L3
async def test_the_check_reports_a_raw_event_the_aggregates_lack(
    billing_client: httpx.AsyncClient,
    billing_data_client: httpx.AsyncClient,
    billing_auth_client: httpx.AsyncClient,
    make_billing_user: MakeUser,
    billing_db: Any,
    admin_token: str,
) -> None:
    user = await make_billing_user(permissions=(READ, RUN_AGENTS))
    first = [record("a", "llm", 100, 10_000, "2026-01-05T10:00:00Z", **WRITER)]
    await write_usage(billing_data_client, billing_auth_client, user, first)
    await metered(billing_client, user, events=1, period=JANUARY)
    assert (await usage_check(billing_client, admin_token, tenant_of(user), *JANUARY))["ok"]

    # A record in PostgreSQL that never reached ClickHouse (no outbox row).
    await billing_db.execute(
        "INSERT INTO usage_records (id, tenant_id, user_id, kind, quantity, cost_micros, "
        "idempotency_key, occurred_at, labels) VALUES ($1, $2, $3, 'llm', 1, 1, 'stray', "
        "'2026-01-06T00:00:00Z', $4::jsonb)",
        uuid.uuid4(),
        uuid.UUID(tenant_of(user)),
        uuid.UUID(user.key_user.user_id),
        '{"agent": "writer", "model": "gpt-4o-mini"}',
    )
    check = await usage_check(billing_client, admin_token, tenant_of(user), *JANUARY)
    assert check["ok"] is False
    assert check["total"] == {
        "aggregate": {"amount": 1, "currency": "usd"},
        "raw": {"amount": 2, "currency": "usd"},
    }
    assert check["mismatches"] == [
        {
            "kind": "llm",
            "agent": "writer",
            "model": "gpt-4o-mini",
            "aggregate": line("llm", WRITER, 100, 10_000, 1),
            "raw": line("llm", WRITER, 101, 10_001, 2),
        }
    ]


@METERING
@pytest.mark.L2
@pytest.mark.L3
async def test_usage_lines_are_added_once_to_the_next_provider_invoice(
    billing_client: httpx.AsyncClient,
    billing_data_client: httpx.AsyncClient,
    billing_auth_client: httpx.AsyncClient,
    make_billing_user: MakeUser,
    fake_payments: FakePayments,
    admin_token: str,
) -> None:
    provider = sdk(fake_payments)
    new_year = 1767225600  # 2026-01-01T00:00:00Z
    clock = provider.v1.test_helpers.test_clocks.create(params={"frozen_time": new_year}).id
    owner = await make_billing_user(permissions=(READ, MANAGE, RUN_AGENTS))
    assert (await subscribe(billing_client, owner, "early", test_clock=clock)).status_code == 200
    usage = [
        record("a", "llm", 1200, 12_345, "2026-01-05T10:00:00Z", **WRITER),
        record("b", "llm", 800, 20_001, "2026-01-20T08:30:00Z", **WRITER),
        record("c", "llm", 10, 1, "2026-01-31T23:59:59Z", **PLANNER),
        record("d", "api", 7, 0, "2026-01-10T00:00:00Z"),
    ]
    await write_usage(billing_data_client, billing_auth_client, owner, usage)
    await metered(billing_client, owner, events=4, period=JANUARY)

    body = {"tenant": tenant_of(owner), "from": JANUARY[0], "to": JANUARY[1]}
    answers = []
    for _ in range(2):  # the second call adds nothing
        response = await billing_client.post(
            "/admin/billing/usage-invoice", json=body, headers=bearer(admin_token)
        )
        assert response.status_code == 200, response.text
        answers.append(response.json())
    items = answers[0]["invoice_items"]
    # The priced lines only (the api line costs 0), in line order.
    assert [(i["kind"], i["agent"], i["model"], i["amount"]) for i in items] == [
        ("llm", "planner", "gpt-4o", 1),
        ("llm", "writer", "gpt-4o-mini", 4),
    ]
    assert answers[1]["invoice_items"] == items
    subscription = answers[0]["subscription"]
    assert subscription is not None

    # February's renewal invoice carries the usage once, with the plan's month.
    provider.v1.test_helpers.test_clocks.advance(
        clock, params={"frozen_time": new_year + 31 * 86400 + 60}
    )
    february = provider.v1.invoices.list(params={"subscription": subscription}).data[0]
    assert february.billing_reason == "subscription_cycle"
    assert sorted(line.amount for line in february.lines.data) == [1, 4, 2900]
    assert february.amount_paid == 2905


@METERING
@pytest.mark.L2
async def test_usage_refuses_bad_periods_and_callers_without_the_permission(
    billing_client: httpx.AsyncClient, make_billing_user: MakeUser, admin_token: str
) -> None:
    reader = await make_billing_user(permissions=(READ,))
    stranger = await make_billing_user(permissions=())
    url = "/v1/billing/usage"
    response = await billing_client.get(
        url, params={"from": JANUARY[0], "to": JANUARY[1]}, headers=stranger.headers
    )
    assert (response.status_code, error_of(response)) == (403, "forbidden")
    for since, until in (
        (JANUARY[1], JANUARY[0]),  # from after to
        (JANUARY[0], JANUARY[0]),  # an empty period
        ("2026-01-01T00:00:00", JANUARY[1]),  # no time zone
        ("2026-01-01T00:00:00.5Z", JANUARY[1]),  # finer than ClickHouse keeps
    ):
        response = await billing_client.get(
            url, params={"from": since, "to": until}, headers=reader.headers
        )
        assert (response.status_code, error_of(response)) == (422, "invalid_period"), since
    params = {"tenant": tenant_of(reader), "from": JANUARY[0], "to": JANUARY[1]}
    response = await billing_client.get("/admin/billing/usage/check", params=params)
    assert response.status_code == 401, response.text
    # The reader's usage is still empty and readable.
    response = await billing_client.get(
        url, params={"from": JANUARY[0], "to": JANUARY[1]}, headers=reader.headers
    )
    assert response.status_code == 200, response.text
    assert (response.json()["lines"], response.json()["total"]["amount"]) == ([], 0)


@AGENT_COST
@pytest.mark.L3
async def test_an_agent_runs_cost_is_metered_and_billed_to_its_tenant(
    billing_client: httpx.AsyncClient,
    billing_agents_client: httpx.AsyncClient,
    billing_auth_client: httpx.AsyncClient,
    make_billing_user: MakeUser,
    fake_llm: FakeLlm,
    admin_token: str,
) -> None:
    user = await make_billing_user(permissions=(READ, RUN_AGENTS, READ_RUNS))
    other = await make_billing_user(permissions=(READ, RUN_AGENTS, READ_RUNS))
    runner = dataclasses.replace(
        user, token=await context_token(billing_auth_client, user.tokens, AGENTS)
    )
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    period = (
        (now - datetime.timedelta(hours=1)).isoformat(),
        (now + datetime.timedelta(hours=1)).isoformat(),
    )
    fake_llm.reply("The answer, billed.")
    run = await final_run(
        billing_agents_client, runner, await submit(billing_agents_client, runner)
    )
    assert run["status"] == "succeeded", run
    tokens = run["usage"]["prompt_tokens"] + run["usage"]["completion_tokens"]
    assert run["cost_micros"] > 0

    usage = await metered(billing_client, user, events=1, period=period)
    [billed] = usage["lines"]
    assert (billed["kind"], billed["agent"]) == ("llm", "assistant")
    assert (billed["quantity"], billed["cost_micros"], billed["events"]) == (
        tokens,
        run["cost_micros"],
        1,
    )
    assert usage["total"] == {"amount": cents_of(run["cost_micros"]), "currency": "usd"}
    check = await usage_check(billing_client, admin_token, tenant_of(user), *period)
    assert (check["ok"], check["events"]) == (True, 1)
    assert (await usage_of(billing_client, other, *period))["lines"] == []
