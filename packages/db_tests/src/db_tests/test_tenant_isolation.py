"""002#10 multi-tenant isolation with row-level security, proven from the outside.

The rules under test (contract-data.md, Who is asking): the tenant is the context
token's `tid`; every tenant query runs in a tenant transaction, so tenant A never sees
or changes B's records; a code path that forgets the tenant context runs as the service
role (`apex_data`), which FORCE RLS shows no tenant row; writing needs `agents:run`,
reading `billing:read`, a token without a tenant is 403 `no_tenant`.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from db_tests.client import (
    BILLING_READ,
    RUN_AGENTS,
    MakeUser,
    admin_headers,
    bearer,
    error_of,
    usage_body,
)
from db_tests.state import outbox_count, usage_count

ISOLATION = pytest.mark.bvj(
    segment="enterprise", goal="No tenant ever sees another tenant's usage",
    mrr=20000, scenario="002#10",
)  # fmt: skip
pytestmark = [ISOLATION, pytest.mark.L2, pytest.mark.L3]

BOTH = (RUN_AGENTS, BILLING_READ)


async def _summary(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.get("/v1/usage/summary", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.L4
async def test_a_tenant_sees_only_its_own_records(
    data_client: httpx.AsyncClient, make_data_user: MakeUser
) -> None:
    alice = await make_data_user(permissions=BOTH)
    bob = await make_data_user(permissions=BOTH)
    for user, quantity in ((alice, 5), (alice, 6), (bob, 100)):
        body = usage_body(user.user_id, quantity=quantity)
        stored = await data_client.post("/v1/usage", json=body, headers=user.headers)
        assert stored.status_code == 201, stored.text
    assert (await _summary(data_client, alice.headers))["by_kind"] == {
        "tokens": {"quantity": 11, "cost_micros": 500}
    }
    assert (await _summary(data_client, bob.headers))["by_kind"] == {
        "tokens": {"quantity": 100, "cost_micros": 250}
    }


async def test_a_tenant_with_no_records_sees_nothing(
    data_client: httpx.AsyncClient, make_data_user: MakeUser, data_db: Any
) -> None:
    alice = await make_data_user(permissions=BOTH)
    stranger = await make_data_user(permissions=BOTH)
    stored = await data_client.post(
        "/v1/usage", json=usage_body(alice.user_id), headers=alice.headers
    )
    assert stored.status_code == 201, stored.text
    assert (await _summary(data_client, stranger.headers))["by_kind"] == {}
    assert await usage_count(data_db) == 1


async def test_idempotency_keys_belong_to_their_tenant(
    data_client: httpx.AsyncClient, make_data_user: MakeUser, data_db: Any
) -> None:
    alice = await make_data_user(permissions=BOTH)
    bob = await make_data_user(permissions=BOTH)
    key = "shared-key"
    first = await data_client.post(
        "/v1/usage", json=usage_body(alice.user_id, idempotency_key=key), headers=alice.headers
    )
    assert first.status_code == 201, first.text
    # Bob's request with Alice's key is Bob's own first record, not Alice's.
    second = await data_client.post(
        "/v1/usage", json=usage_body(bob.user_id, idempotency_key=key), headers=bob.headers
    )
    assert second.status_code == 201, second.text
    assert second.json()["tenant_id"] == bob.tenant_id
    assert second.json()["id"] != first.json()["id"]
    assert await usage_count(data_db, alice.tenant_id) == 1
    assert await usage_count(data_db, bob.tenant_id) == 1


async def test_a_path_without_tenant_context_sees_no_record(
    data_client: httpx.AsyncClient, make_data_user: MakeUser, data_db: Any, admin_token: str
) -> None:
    alice = await make_data_user(permissions=BOTH)
    for _ in range(3):
        stored = await data_client.post(
            "/v1/usage", json=usage_body(alice.user_id), headers=alice.headers
        )
        assert stored.status_code == 201, stored.text
    response = await data_client.get("/admin/isolation", headers=admin_headers(admin_token))
    assert response.status_code == 200, response.text
    # The service's connections run as apex_data, and outside a tenant transaction FORCE
    # RLS shows that role none of the 3 records the database holds.
    assert response.json() == {"role": "apex_data", "usage_records_visible": 0}
    assert await usage_count(data_db) == 3
    # The same, from a connection of our own as that role: the policy, not the route.
    async with data_db.transaction():
        await data_db.execute("SET LOCAL ROLE apex_data")
        assert await data_db.fetchval("SELECT count(*) FROM usage_records") == 0


async def test_the_service_role_cannot_write_a_record_outside_a_tenant(data_db: Any) -> None:
    import asyncpg  # noqa: PLC0415 - the tests that read the database only

    async with data_db.transaction():
        await data_db.execute("SET LOCAL ROLE apex_data")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await data_db.execute(
                "INSERT INTO usage_records (id, tenant_id, user_id, kind, quantity, "
                "cost_micros, idempotency_key) VALUES (gen_random_uuid(), gen_random_uuid(), "
                "gen_random_uuid(), 'tokens', 1, 1, 'k')"
            )
    assert await usage_count(data_db) == 0


async def test_a_token_without_a_tenant_is_403_and_writes_nothing(
    data_client: httpx.AsyncClient, make_data_user: MakeUser, data_db: Any
) -> None:
    loner = await make_data_user(tenant=None, permissions=BOTH)
    response = await data_client.post(
        "/v1/usage", json=usage_body(loner.user_id), headers=loner.headers
    )
    assert response.status_code == 403, response.text
    assert error_of(response) == "no_tenant"
    assert await usage_count(data_db) == 0


async def test_writing_needs_agents_run(
    data_client: httpx.AsyncClient, make_data_user: MakeUser, data_db: Any
) -> None:
    reader = await make_data_user(permissions=(BILLING_READ,))
    response = await data_client.post(
        "/v1/usage", json=usage_body(reader.user_id), headers=reader.headers
    )
    assert response.status_code == 403, response.text
    assert error_of(response) == "forbidden"
    assert await usage_count(data_db) == 0
    assert await outbox_count(data_db) == 0


@pytest.mark.L4
async def test_reading_needs_billing_read(
    data_client: httpx.AsyncClient, make_data_user: MakeUser
) -> None:
    writer = await make_data_user(permissions=(RUN_AGENTS,))
    response = await data_client.get("/v1/usage/summary", headers=writer.headers)
    assert response.status_code == 403, response.text
    assert error_of(response) == "forbidden"


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("not-a-token"), {"Authorization": "Basic abc"}],
    ids=["none", "garbage", "basic"],
)
async def test_a_request_without_a_valid_context_token_is_401_and_writes_nothing(
    data_client: httpx.AsyncClient, data_db: Any, headers: dict[str, str]
) -> None:
    body = usage_body("00000000-0000-0000-0000-000000000001")
    response = await data_client.post("/v1/usage", json=body, headers=headers)
    assert response.status_code == 401, response.text
    assert error_of(response) == "invalid_token"
    assert await usage_count(data_db) == 0


async def test_an_access_token_is_not_a_context_token(
    data_client: httpx.AsyncClient, make_data_user: MakeUser, data_db: Any
) -> None:
    user = await make_data_user(permissions=BOTH)
    response = await data_client.post(
        "/v1/usage", json=usage_body(user.user_id), headers=bearer(user.tokens.access)
    )
    assert response.status_code == 401, response.text
    assert await usage_count(data_db) == 0
