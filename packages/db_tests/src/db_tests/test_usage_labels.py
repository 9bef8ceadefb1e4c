"""Usage records' labels and the usage writers' service credential (issue 12: the agents'
costs in apex.data). 001#51: labels stored with the record and copied to ClickHouse, where
cost per agent and model is one query; 002#10: the service credential writes usage for
the tenant it names and can do nothing else.

The rules under test (contract-data.md, notes-data.md § Labels and the usage writers'
credential): `labels` is an object of at most 16 strings (keys 1-64 of `a-z 0-9 _`
starting with a letter, values at most 200 characters); anything else is 422 with nothing
written; a record answers with its labels (`{}` if none); `GET /v1/usage/analytics/agents`
sums ClickHouse's copy per agent and model label (`""` when absent). APEX_USAGE_TOKEN as
the bearer of `POST /v1/usage`, with the tenant in `X-Apex-Tenant`, stores the record for
that tenant; without the header 403 `no_tenant`; a wrong credential 401; the credential
reads nothing (401 on the summary).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from db_tests.client import (
    BILLING_READ,
    RUN_AGENTS,
    DataUser,
    MakeUser,
    OpenData,
    bearer,
    error_of,
    usage_body,
)
from db_tests.state import outbox_count, usage_count

SYNC = pytest.mark.bvj(
    segment="enterprise", goal="Billing sees agents' costs per agent and model",
    mrr=12000, scenario="001#51",
)  # fmt: skip
ISOLATION = pytest.mark.bvj(
    segment="enterprise", goal="The agents' billing credential writes usage and nothing else",
    mrr=10000, scenario="002#10",
)  # fmt: skip
pytestmark = [pytest.mark.L2, pytest.mark.L3]

CREDENTIAL = "usage-writers-credential-of-this-test"
MINI = {"agent": "assistant", "model": "gpt-4o-mini", "provider": "llm", "run_id": "r1"}


@pytest.fixture
async def writer(make_data_user: MakeUser) -> DataUser:
    return await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))


@SYNC
async def test_labels_are_kept_and_summed_per_agent_and_model_in_clickhouse(
    relay_client: httpx.AsyncClient, writer: DataUser, data_admin: dict[str, str]
) -> None:
    records = [
        (MINI, 100, 250),
        ({**MINI, "run_id": "r2"}, 50, 125),
        ({"agent": "writer", "model": "gpt-4o"}, 10, 1000),
        (None, 7, 7),
    ]
    for labels, quantity, cost in records:
        body = usage_body(writer.user_id, quantity=quantity, cost_micros=cost)
        if labels is not None:
            body["labels"] = labels
        written = await relay_client.post("/v1/usage", json=body, headers=writer.headers)
        assert written.status_code == 201, written.text
        assert written.json()["labels"] == (labels or {})

    relayed = await relay_client.post("/admin/relay/run", headers=data_admin)
    assert relayed.status_code == 200, relayed.text
    response = await relay_client.get("/v1/usage/analytics/agents", headers=writer.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "tenant_id": writer.tenant_id,
        "by_agent_model": [
            {"agent": "", "model": "", "quantity": 7, "cost_micros": 7},
            {"agent": "assistant", "model": "gpt-4o-mini", "quantity": 150, "cost_micros": 375},
            {"agent": "writer", "model": "gpt-4o", "quantity": 10, "cost_micros": 1000},
        ],
        "relay_lag": 0,
        "source": "clickhouse",
    }


@SYNC
@pytest.mark.parametrize(
    "labels",
    [
        ["agent"],
        {"Agent": "x"},
        {"9agent": "x"},
        {"agent": 7},
        {"agent": "x" * 201},
        {f"k{n}": "v" for n in range(17)},
    ],
    ids=["not-an-object", "upper-case", "digit-first", "not-a-string", "too-long", "too-many"],
)
async def test_bad_labels_are_422_and_write_nothing(
    data_client: httpx.AsyncClient, writer: DataUser, data_db: Any, labels: Any
) -> None:
    body = {**usage_body(writer.user_id), "labels": labels}
    response = await data_client.post("/v1/usage", json=body, headers=writer.headers)
    assert response.status_code == 422, response.text
    assert error_of(response) == "invalid_request"
    assert await usage_count(data_db) == 0
    assert await outbox_count(data_db) == 0


@ISOLATION
async def test_the_usage_credential_writes_for_the_tenant_it_names_and_reads_nothing(
    data_with: OpenData, writer: DataUser, data_db: Any
) -> None:
    client = await data_with(APEX_USAGE_TOKEN=CREDENTIAL)
    tenant = writer.tenant_id or ""
    body = usage_body(writer.user_id, labels=MINI)

    refusals = [
        (bearer(CREDENTIAL), 403, "no_tenant"),
        ({**bearer(CREDENTIAL), "X-Apex-Tenant": "not-a-tenant"}, 403, "no_tenant"),
        ({**bearer(CREDENTIAL + "x"), "X-Apex-Tenant": tenant}, 401, "invalid_token"),
    ]
    for headers, status, error in refusals:
        refused = await client.post("/v1/usage", json=body, headers=headers)
        assert (refused.status_code, error_of(refused)) == (status, error), refused.text
    assert await usage_count(data_db) == 0

    headers = {**bearer(CREDENTIAL), "X-Apex-Tenant": tenant}
    written = await client.post("/v1/usage", json=body, headers=headers)
    assert written.status_code == 201, written.text
    record = written.json()
    assert (record["tenant_id"], record["user_id"], record["labels"]) == (
        tenant,
        writer.user_id,
        MINI,
    )
    assert await usage_count(data_db, tenant) == await usage_count(data_db) == 1
    # The same record again (a redelivery): the first one, nothing written.
    again = await client.post("/v1/usage", json=body, headers=headers)
    assert (again.status_code, again.json()["id"]) == (200, record["id"])
    assert await usage_count(data_db) == 1

    read = await client.get("/v1/usage/summary", headers=headers)
    assert (read.status_code, error_of(read)) == (401, "invalid_token"), read.text
