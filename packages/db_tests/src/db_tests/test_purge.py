"""004#2: `POST /admin/tenants/purge` deletes every row a tenant wrote to apex.data, as
the database sees it (the API-only checks, which also run at L4, are in
`test_public_api.py`).

The rules under test (contract-data.md, Routes; notes-data.md, purges): the tenant's
usage records, the outbox rows carrying them or its transfers (relayed or not), its
transfers (sent or received) and its balance are deleted, and counted; another tenant's
rows stay, except a transfer to or from the purged tenant.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from db_tests.client import BILLING_WRITE, RUN_AGENTS, MakeUser, purge_tenants, usage_body
from db_tests.state import outbox_count, usage_count

STACK = pytest.mark.bvj(
    segment="platform", goal="A test run leaves the shared stack as it found it",
    mrr=5000, scenario="004#2",
)  # fmt: skip
pytestmark = [STACK, pytest.mark.L2, pytest.mark.L3]


async def _rows(db: Any, tenant: str) -> dict[str, int]:
    counts = await db.fetchrow(
        "SELECT (SELECT count(*) FROM credit_transfers "
        "        WHERE from_tenant = $1::uuid OR to_tenant = $1::uuid) AS transfers, "
        "(SELECT count(*) FROM tenant_credits WHERE tenant_id = $1::uuid) AS credits, "
        "(SELECT count(*) FROM outbox WHERE topic = 'credit_transfer' AND "
        "        (payload->>'from_tenant' = $1::uuid::text "
        "         OR payload->>'to_tenant' = $1::uuid::text)) AS transfer_rows",
        tenant,
    )
    return {key: int(value) for key, value in counts.items()} | {
        "records": await usage_count(db, tenant),
        "record_rows": await outbox_count(db, tenant),
    }


async def test_a_purge_deletes_records_transfers_balances_and_their_outbox_rows(
    data_client: httpx.AsyncClient, make_data_user: MakeUser, data_db: Any, admin_token: str
) -> None:
    gone = await make_data_user(permissions=(RUN_AGENTS, BILLING_WRITE))
    kept = await make_data_user(permissions=(RUN_AGENTS, BILLING_WRITE))
    await data_db.executemany(
        "INSERT INTO tenant_credits (tenant_id, balance_micros) VALUES ($1::uuid, 1000)",
        [(gone.tenant_id,), (kept.tenant_id,)],
    )
    for user in (gone, kept):
        records = [usage_body(user.user_id) for _ in range(3)]
        stored = await data_client.post(
            "/v1/usage/batch", json={"records": records}, headers=user.headers
        )
        assert stored.status_code == 201, stored.text
    moved = await data_client.post(
        "/v1/credits/transfer",
        json={"to_tenant": kept.tenant_id, "amount_micros": 100, "idempotency_key": "p"},
        headers=gone.headers,
    )
    assert moved.status_code == 201, moved.text
    assert await _rows(data_db, str(gone.tenant_id)) == {
        "transfers": 1, "credits": 1, "transfer_rows": 1, "records": 3, "record_rows": 3,
    }  # fmt: skip

    purged = await purge_tenants(data_client, admin_token, [str(gone.tenant_id)])
    assert purged == {
        "usage_records": 3, "outbox": 4, "credit_transfers": 1, "tenant_credits": 1,
        "tenants": 1,
    }  # fmt: skip
    assert await _rows(data_db, str(gone.tenant_id)) == dict.fromkeys(
        ("transfers", "credits", "transfer_rows", "records", "record_rows"), 0
    )
    # The other tenant keeps its records, their outbox rows and its balance (with the
    # credit it received); only the transfer that named the purged tenant went.
    assert await _rows(data_db, str(kept.tenant_id)) == {
        "transfers": 0, "credits": 1, "transfer_rows": 0, "records": 3, "record_rows": 3,
    }  # fmt: skip
    balance = await data_db.fetchval(
        "SELECT balance_micros FROM tenant_credits WHERE tenant_id = $1::uuid", kept.tenant_id
    )
    assert balance == 1100


@pytest.mark.parametrize("body", [{}, {"tenant_ids": []}, {"tenant_ids": ["not-a-uuid"]}])
async def test_a_bad_purge_is_422_and_deletes_nothing(
    data_client: httpx.AsyncClient, make_data_user: MakeUser, data_db: Any, admin_token: str,
    body: dict[str, Any],
) -> None:  # fmt: skip
    user = await make_data_user(permissions=(RUN_AGENTS,))
    stored = await data_client.post(
        "/v1/usage", json=usage_body(user.user_id), headers=user.headers
    )
    assert stored.status_code == 201, stored.text
    response = await data_client.post(
        "/admin/tenants/purge", json=body, headers={"Authorization": f"Bearer {admin_token}"}
    )
    assert response.status_code == 422, response.text
    assert await usage_count(data_db) == 1
