"""001#63 cross-database references: ClickHouse usage events against PostgreSQL's
records and users, `GET /admin/references/check` and `POST /admin/references/repair`.

The rules under test (contract-data.md, Routes; notes-data.md, ClickHouse side): an event
whose record or user is gone from PostgreSQL is an orphan; a relayed record with no event
is missing; a record still waiting in the outbox is lag, not an inconsistency; repair
deletes the orphans and re-enqueues the missing, after which (and one relay pass) both
stores agree record for record.
"""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg
import httpx
import pytest

from db_tests.stores import ClickHouseReader, write_usage

REFERENCES = pytest.mark.bvj(
    segment="enterprise", goal="Analytics never count usage the billing database lost",
    mrr=5000, scenario="001#63",
)  # fmt: skip
pytestmark = [REFERENCES, pytest.mark.L2]

CHECK = "/admin/references/check"
REPAIR = "/admin/references/repair"
RUN = "/admin/relay/run"


async def make_user(conn: asyncpg.Connection, tenant: str) -> str:
    user = str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO users (id, email, tier, tenant_id) VALUES ($1::uuid, $2, 'pro', $3::uuid)",
        user,
        f"{user}@refs.tests.apex.invalid",
        tenant,
    )
    return user


async def test_consistent_stores_check_clean_and_lag_is_not_missing(
    relay_client: httpx.AsyncClient, data_admin: dict[str, str], flow_db: asyncpg.Connection
) -> None:
    tenant = str(uuid.uuid4())
    user = await make_user(flow_db, tenant)
    for quantity in (1, 2, 3):
        await write_usage(flow_db, tenant, user, quantity=quantity)
    relayed = await relay_client.post(RUN, headers=data_admin)
    assert relayed.status_code == 200, relayed.text
    await write_usage(flow_db, tenant, user, quantity=4)  # in the outbox: lag

    check = await relay_client.get(CHECK, headers=data_admin)
    assert check.status_code == 200, check.text
    assert check.json() == {
        "orphans": [], "missing": [], "checked_events": 3, "checked_records": 4,
        "consistent": True,
    }  # fmt: skip


async def test_inconsistencies_are_found_and_repaired(
    relay_client: httpx.AsyncClient,
    data_admin: dict[str, str],
    flow_db: asyncpg.Connection,
    clickhouse: ClickHouseReader,
) -> None:
    tenant = str(uuid.uuid4())
    user = await make_user(flow_db, tenant)
    leaving = await make_user(flow_db, tenant)
    kept = await write_usage(flow_db, tenant, user, quantity=1)
    deleted_record = await write_usage(flow_db, tenant, user, quantity=2)
    of_deleted_user = await write_usage(flow_db, tenant, leaving, quantity=3)
    relayed = await relay_client.post(RUN, headers=data_admin)
    assert relayed.status_code == 200, relayed.text

    # Behind the platform's back: a record and a user deleted in PostgreSQL, an event
    # inserted into ClickHouse alone, an event lost from ClickHouse.
    await flow_db.execute("DELETE FROM usage_records WHERE id = $1::uuid", deleted_record)
    await flow_db.execute("DELETE FROM users WHERE id = $1::uuid", leaving)
    stray = str(uuid.uuid4())
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    await clickhouse.insert_events(
        [(uuid.UUID(stray), uuid.UUID(tenant), uuid.UUID(user), "tokens", 9, 9, now, 1)]
    )
    lost = await write_usage(flow_db, tenant, user, quantity=5)
    await flow_db.execute(
        "UPDATE outbox SET relayed_at = now() WHERE payload->>'id' = $1", lost
    )  # acked, never sent

    check = await relay_client.get(CHECK, headers=data_admin)
    assert check.status_code == 200, check.text
    report = check.json()
    assert report["orphans"] == sorted([deleted_record, of_deleted_user, stray])
    assert report["missing"] == [lost]
    assert report["consistent"] is False

    repaired = await relay_client.post(REPAIR, headers=data_admin)
    assert repaired.status_code == 200, repaired.text
    assert repaired.json() == {"deleted": 3, "requeued": 1}
    relayed = await relay_client.post(RUN, headers=data_admin)
    assert relayed.status_code == 200, relayed.text
    assert relayed.json()["relayed"] == 1

    assert await clickhouse.event_ids() == {kept, lost}
    again = await relay_client.get(CHECK, headers=data_admin)
    assert again.status_code == 200, again.text
    assert again.json()["consistent"] is True
