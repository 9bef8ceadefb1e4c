"""001#57 batch insert and 001#82 batch processing: `POST /v1/usage/batch` stores a batch
through COPY, all of it or nothing.

The rules under test (contract-data.md, Routes; notes-data.md, Batches): up to
10,000 records per request, COPY into a temporary table then one `INSERT ... ON
CONFLICT DO NOTHING` with their outbox rows, in one transaction; 201 `{"inserted": n}`
counts the new records, so a batch submitted again inserts 0 and changes nothing; a
single bad record refuses the whole batch with 422 naming it (`records.<index>.<field>`)
and nothing is written; a batch that fails inside PostgreSQL after its COPY (here: past
the statement timeout) leaves nothing either, and the same batch sent again is stored
whole. The throughput (COPY against executemany) is `test_batch_bench.py`'s.

State is read back through the summary (`Cache-Control: no-cache`: from the database),
so the API-only tests also run at L4 against a deployment.
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
    error_of,
    usage_body,
)
from db_tests.state import Connect, outbox_count, usage_count

BATCH = pytest.mark.bvj(
    segment="enterprise", goal="Bulk usage is stored whole or not at all, fast",
    mrr=4000, scenario="001#57",
)  # fmt: skip
PROCESSING = pytest.mark.bvj(
    segment="enterprise", goal="Bulk operations finish whole, once, whatever fails",
    mrr=7000, scenario="001#82",
)  # fmt: skip
pytestmark = [pytest.mark.L2, pytest.mark.L3]

KINDS = ("tokens", "tool_calls", "images")
NO_CACHE = {"Cache-Control": "no-cache"}


@pytest.fixture
async def user(make_data_user: MakeUser) -> DataUser:
    return await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))


def _records(user: DataUser, count: int) -> list[dict[str, Any]]:
    return [
        usage_body(user.user_id, kind=KINDS[i % 3], quantity=i, cost_micros=2 * i + 1)
        for i in range(count)
    ]


def _totals(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for record in records:
        kind = totals.setdefault(record["kind"], {"quantity": 0, "cost_micros": 0})
        kind["quantity"] += record["quantity"]
        kind["cost_micros"] += record["cost_micros"]
    return totals


async def _post(
    client: httpx.AsyncClient, user: DataUser, records: list[dict[str, Any]]
) -> httpx.Response:
    return await client.post("/v1/usage/batch", json={"records": records}, headers=user.headers)


async def _stored(client: httpx.AsyncClient, user: DataUser) -> dict[str, Any]:
    """What the database holds for the user's tenant: totals per kind."""
    response = await client.get("/v1/usage/summary", headers={**user.headers, **NO_CACHE})
    assert response.status_code == 200, response.text
    by_kind: dict[str, Any] = response.json()["by_kind"]
    return by_kind


@BATCH
@pytest.mark.L4
async def test_every_record_of_a_full_batch_is_stored_once(
    data_client: httpx.AsyncClient, user: DataUser
) -> None:
    records = _records(user, 10_000)
    response = await _post(data_client, user, records)
    assert response.status_code == 201, response.text
    assert response.json() == {"inserted": 10_000}
    assert await _stored(data_client, user) == _totals(records)


@PROCESSING
@pytest.mark.L4
async def test_a_batch_submitted_again_inserts_nothing_more(
    data_client: httpx.AsyncClient, user: DataUser
) -> None:
    records = _records(user, 600)
    first = await _post(data_client, user, records)
    assert first.status_code == 201, first.text
    again = await _post(data_client, user, records)
    assert again.status_code == 201, again.text
    assert again.json() == {"inserted": 0}
    # Half of it again with 300 new records: only the new ones count.
    more = _records(user, 300)
    mixed = await _post(data_client, user, records[::2] + more)
    assert mixed.status_code == 201, mixed.text
    assert mixed.json() == {"inserted": 300}
    assert await _stored(data_client, user) == _totals(records + more)


@BATCH
@pytest.mark.L4
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"quantity": -1}, "quantity"),
        ({"cost_micros": "12"}, "cost_micros"),
        ({"kind": "Not A Kind"}, "kind"),
        ({"idempotency_key": "nul\x00inside"}, "idempotency_key"),
        ({"occurred_at": "0001-01-01T00:00:00+14:00"}, "occurred_at"),
        ({"occurred_at": "9999-12-31T23:59:59-14:00"}, "occurred_at"),
        ({"surprise": True}, "surprise"),
    ],
    ids=[
        "negative", "string-number", "kind", "nul-in-key", "before-year-1-utc",
        "after-year-9999-utc", "unknown-field",
    ],
)  # fmt: skip
async def test_one_bad_record_refuses_the_batch_and_is_named(
    data_client: httpx.AsyncClient, user: DataUser, change: dict[str, Any], field: str
) -> None:
    records = _records(user, 100)
    records[57] = {**records[57], **change}
    response = await _post(data_client, user, records)
    assert response.status_code == 422, response.text
    assert error_of(response) == "invalid_request"
    assert f"records.57.{field}" in response.json()["detail"]
    assert await _stored(data_client, user) == {}


@BATCH
async def test_a_refused_batch_writes_no_record_and_no_outbox_row(
    data_client: httpx.AsyncClient, user: DataUser, data_db: Any
) -> None:
    records = _records(user, 50)
    records[-1] = {**records[-1], "idempotency_key": "\x00"}
    response = await _post(data_client, user, records)
    assert response.status_code == 422, response.text
    assert await usage_count(data_db) == 0
    assert await outbox_count(data_db) == 0


@BATCH
async def test_a_batch_over_the_limit_is_refused_whole(
    data_client: httpx.AsyncClient, user: DataUser, data_db: Any
) -> None:
    response = await _post(data_client, user, _records(user, 10_001))
    assert response.status_code == 422, response.text
    assert "records:" in response.json()["detail"]
    assert await usage_count(data_db) == 0


@PROCESSING
async def test_a_batch_failing_after_its_copy_leaves_nothing_and_goes_whole_next_time(
    data_with: OpenData, user: DataUser, db_connect: Connect, data_db: Any
) -> None:
    # 0.5 s: past it the locked insert fails, while the COPY of 1,000 rows before it (a
    # few ms) fits even on a loaded machine. The batch is sent again through an instance
    # with the default timeout, so the retry never races the window.
    client = await data_with(APEX_DB_STATEMENT_TIMEOUT="0.5")
    records = _records(user, 1_000)
    # The COPY goes into the batch's temporary table; its INSERT into usage_records then
    # waits for this lock past the statement timeout: the batch fails half done.
    locker = await db_connect()
    lock = locker.transaction()
    await lock.start()
    await locker.execute("LOCK TABLE usage_records IN ACCESS EXCLUSIVE MODE")
    failed = await _post(client, user, records)
    assert failed.status_code == 504, failed.text
    assert error_of(failed) == "statement_timeout"
    await lock.rollback()
    assert await usage_count(data_db) == 0
    assert await outbox_count(data_db) == 0
    stored = await _post(await data_with(), user, records)
    assert stored.status_code == 201, stored.text
    assert stored.json() == {"inserted": 1_000}
    assert await usage_count(data_db, user.tenant_id) == 1_000
    assert await outbox_count(data_db, user.tenant_id) == 1_000
