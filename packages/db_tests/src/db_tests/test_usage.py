"""001#51 PostgreSQL-ClickHouse transaction sync, the PostgreSQL half: a usage record
and its outbox row commit together, exactly once per idempotency key.

The rules under test (contract-data.md, Routes): `POST /v1/usage` answers 201 with the
record and `X-Apex-LSN`, the same idempotency key again 200 with the first record and
nothing written; bad input is 422 with nothing written; `POST /v1/usage/batch` stores
many records through COPY in one transaction (duplicates skipped, outbox rows included);
`GET /v1/usage/summary` totals per kind in a time window.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from db_tests.client import BILLING_READ, RUN_AGENTS, DataUser, MakeUser, error_of, usage_body
from db_tests.state import outbox_count, usage_count

SYNC = pytest.mark.bvj(
    segment="enterprise", goal="Every usage record billed once: stored with its outbox row",
    mrr=12000, scenario="001#51",
)  # fmt: skip
pytestmark = [SYNC, pytest.mark.L2, pytest.mark.L3]

LSN = re.compile(r"[0-9A-F]{1,8}/[0-9A-F]{1,8}")


@pytest.fixture
async def writer(make_data_user: MakeUser) -> DataUser:
    return await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))


async def test_a_record_commits_with_its_outbox_row(
    data_client: httpx.AsyncClient, writer: DataUser, data_db: Any
) -> None:
    body = usage_body(writer.user_id, kind="tokens", quantity=7, cost_micros=21)
    response = await data_client.post("/v1/usage", json=body, headers=writer.headers)
    assert response.status_code == 201, response.text
    assert LSN.fullmatch(response.headers["X-Apex-LSN"]), response.headers
    record = response.json()
    assert record["tenant_id"] == writer.tenant_id
    assert (record["kind"], record["quantity"], record["cost_micros"]) == ("tokens", 7, 21)
    stored = await data_db.fetchrow("SELECT * FROM usage_records WHERE id = $1::uuid", record["id"])
    assert stored["idempotency_key"] == body["idempotency_key"]
    outbox = await data_db.fetch("SELECT topic, payload, relayed_at FROM outbox")
    assert len(outbox) == 1
    payload = json.loads(outbox[0]["payload"])
    # -- data-flow: not `relayed_at IS NULL`: the relay runs in every instance's background
    # (contract-data.md) and may already have copied the row; what it copied is
    # test_outbox_relay.py's business.
    assert outbox[0]["topic"] == "usage"
    assert (payload["id"], payload["tenant_id"]) == (record["id"], writer.tenant_id)
    assert (payload["quantity"], payload["cost_micros"]) == (7, 21)


async def test_the_same_idempotency_key_returns_the_first_record_and_writes_nothing(
    data_client: httpx.AsyncClient, writer: DataUser, data_db: Any
) -> None:
    body = usage_body(writer.user_id, quantity=5)
    first = await data_client.post("/v1/usage", json=body, headers=writer.headers)
    assert first.status_code == 201, first.text
    again = await data_client.post(
        "/v1/usage", json={**body, "quantity": 999}, headers=writer.headers
    )
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert await usage_count(data_db, writer.tenant_id) == 1
    assert await outbox_count(data_db, writer.tenant_id) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"quantity": -1},
        {"cost_micros": -5},
        {"quantity": 2**63},
        {"quantity": True},
        {"quantity": "7"},
        {"kind": ""},
        {"kind": "Tokens!"},
        {"user_id": "not-a-uuid"},
        {"idempotency_key": ""},
        {"idempotency_key": "k" * 201},
        {"occurred_at": "2026-01-01T00:00:00"},
        {"unexpected": 1},
    ],
    ids=lambda change: next(iter(change)) + "=" + str(next(iter(change.values())))[:12],
)
async def test_bad_input_is_422_and_writes_nothing(
    data_client: httpx.AsyncClient, writer: DataUser, data_db: Any, change: dict[str, Any]
) -> None:
    body = {**usage_body(writer.user_id), **change}
    response = await data_client.post("/v1/usage", json=body, headers=writer.headers)
    assert response.status_code == 422, response.text
    assert error_of(response) == "invalid_request"
    assert await usage_count(data_db) == 0
    assert await outbox_count(data_db) == 0


@pytest.mark.parametrize(
    "missing", ["user_id", "kind", "quantity", "cost_micros", "idempotency_key"]
)
async def test_a_missing_field_is_422_and_writes_nothing(
    data_client: httpx.AsyncClient, writer: DataUser, data_db: Any, missing: str
) -> None:
    body = usage_body(writer.user_id)
    del body[missing]
    response = await data_client.post("/v1/usage", json=body, headers=writer.headers)
    assert response.status_code == 422, response.text
    assert await usage_count(data_db) == 0


async def test_occurred_at_is_kept(
    data_client: httpx.AsyncClient, writer: DataUser, data_db: Any
) -> None:
    body = usage_body(writer.user_id, occurred_at="2026-03-01T12:30:00+02:00")
    response = await data_client.post("/v1/usage", json=body, headers=writer.headers)
    assert response.status_code == 201, response.text
    stored = await data_db.fetchval(
        "SELECT occurred_at = '2026-03-01T10:30:00Z'::timestamptz FROM usage_records"
    )
    assert stored is True


async def test_a_batch_is_stored_with_its_outbox_rows_in_one_go(
    data_client: httpx.AsyncClient, writer: DataUser, data_db: Any
) -> None:
    records = [usage_body(writer.user_id, quantity=i, cost_micros=2 * i) for i in range(250)]
    response = await data_client.post(
        "/v1/usage/batch", json={"records": records}, headers=writer.headers
    )
    assert response.status_code == 201, response.text
    assert response.json() == {"inserted": 250}
    assert LSN.fullmatch(response.headers["X-Apex-LSN"])
    assert await usage_count(data_db, writer.tenant_id) == 250
    assert await outbox_count(data_db, writer.tenant_id) == 250
    total = await data_db.fetchval("SELECT sum(quantity) FROM usage_records")
    assert total == sum(range(250))


async def test_a_batch_skips_keys_already_stored_and_repeated(
    data_client: httpx.AsyncClient, writer: DataUser, data_db: Any
) -> None:
    first = usage_body(writer.user_id)
    stored = await data_client.post("/v1/usage", json=first, headers=writer.headers)
    assert stored.status_code == 201, stored.text
    fresh = usage_body(writer.user_id)
    records = [first, fresh, {**fresh, "quantity": 1}]
    response = await data_client.post(
        "/v1/usage/batch", json={"records": records}, headers=writer.headers
    )
    assert response.status_code == 201, response.text
    assert response.json() == {"inserted": 1}
    assert await usage_count(data_db, writer.tenant_id) == 2
    assert await outbox_count(data_db, writer.tenant_id) == 2


@pytest.mark.parametrize(
    "records",
    [[], "not a list", [{"kind": "tokens"}]],
    ids=["empty", "not-a-list", "bad-record"],
)
async def test_a_bad_batch_is_422_and_writes_nothing(
    data_client: httpx.AsyncClient, writer: DataUser, data_db: Any, records: Any
) -> None:
    good = [usage_body(writer.user_id)]
    body = {"records": good + records if isinstance(records, list) and records else records}
    response = await data_client.post("/v1/usage/batch", json=body, headers=writer.headers)
    assert response.status_code == 422, response.text
    assert await usage_count(data_db) == 0
    assert await outbox_count(data_db) == 0


@pytest.mark.L4
async def test_the_summary_totals_each_kind_in_the_window(
    data_client: httpx.AsyncClient, writer: DataUser
) -> None:
    rows = [
        ("tokens", 10, 1, "2026-01-01T00:00:00Z"),
        ("tokens", 20, 2, "2026-01-02T00:00:00Z"),
        ("tool_calls", 3, 30, "2026-01-02T12:00:00Z"),
        ("tokens", 400, 4, "2026-01-05T00:00:00Z"),
    ]
    records = [
        usage_body(writer.user_id, kind=k, quantity=q, cost_micros=c, occurred_at=t)
        for k, q, c, t in rows
    ]
    stored = await data_client.post(
        "/v1/usage/batch", json={"records": records}, headers=writer.headers
    )
    assert stored.status_code == 201, stored.text
    response = await data_client.get(
        "/v1/usage/summary",
        params={"since": "2026-01-01T00:00:00Z", "until": "2026-01-05T00:00:00Z"},
        headers=writer.headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tenant_id"] == writer.tenant_id
    assert body["by_kind"] == {
        "tokens": {"quantity": 30, "cost_micros": 3},
        "tool_calls": {"quantity": 3, "cost_micros": 30},
    }
    assert body["source"] == "primary"


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"since": "yesterday"}, {}),
        ({"since": "2026-01-01T00:00:00"}, {}),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, {}),
        ({}, {"X-Apex-Min-LSN": "not-an-lsn"}),
    ],
    ids=["since-not-a-time", "since-naive", "since-after-until", "bad-min-lsn"],
)
@pytest.mark.L4
async def test_a_bad_summary_query_is_422(
    data_client: httpx.AsyncClient,
    writer: DataUser,
    params: dict[str, str],
    headers: dict[str, str],
) -> None:
    response = await data_client.get(
        "/v1/usage/summary", params=params, headers={**writer.headers, **headers}
    )
    assert response.status_code == 422, response.text
    assert error_of(response) == "invalid_request"
