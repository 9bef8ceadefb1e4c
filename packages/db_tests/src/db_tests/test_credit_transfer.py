"""001#53 distributed transaction rollback, 002#2 / 004#6 multi-database transaction
coordination: `POST /v1/credits/transfer` across PostgreSQL, ClickHouse and Redis.

The rules under test (contract-data.md, Routes; notes-data.md, ClickHouse side): after
any single fault (PostgreSQL, Redis or ClickHouse down or cut, the process killed) every
effect is visible or none is. PostgreSQL commits first with the outbox row; ClickHouse's
ledger event follows through the relay, once; the Redis balance is a cache, invalidated
at once and again by the relay, never the truth; 409 `insufficient_credit` writes
nothing anywhere.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from apex_testkit import Level, Platform, eventually, tls_context
from db_tests.client import BILLING_READ, BILLING_WRITE, DataUser, MakeUser, error_of
from db_tests.faults import proxied_data
from db_tests.stores import ClickHouseReader, FlowInstance, blocked_by, ended

ROLLBACK = pytest.mark.bvj(
    segment="enterprise", goal="A failed transfer leaves no trace in any store",
    mrr=8000, scenario="001#53",
)  # fmt: skip
COORDINATION = pytest.mark.bvj(
    segment="enterprise", goal="A fault between the stores never half-applies a transfer",
    mrr=150000, scenario="002#2",
)  # fmt: skip
MULTI_DATABASE = pytest.mark.bvj(
    segment="enterprise", goal="Credits agree across PostgreSQL, ClickHouse and Redis",
    mrr=12000, scenario="004#6",
)  # fmt: skip

START = 1000
TRANSFER = "/v1/credits/transfer"
RUN = "/admin/relay/run"


async def funded(make_data_user: MakeUser, flow_db: asyncpg.Connection) -> tuple[DataUser, str]:
    """A sender with START micros (and the permissions to move and read them), and a
    receiver tenant with START."""
    sender = await make_data_user(permissions=(BILLING_WRITE, BILLING_READ))
    assert sender.tenant_id is not None
    receiver = str(uuid.uuid4())
    await flow_db.executemany(
        "INSERT INTO tenant_credits (tenant_id, balance_micros) VALUES ($1::uuid, $2)",
        [(sender.tenant_id, START), (receiver, START)],
    )
    return sender, receiver


async def state(db: asyncpg.Connection, sender: str | None, receiver: str) -> dict[str, Any]:
    """What PostgreSQL holds of the two tenants' credits and transfers."""
    balances = await db.fetch(
        "SELECT tenant_id::text AS t, balance_micros AS b FROM tenant_credits "
        "WHERE tenant_id = ANY($1::uuid[])",
        [sender, receiver],
    )
    by_tenant = {row["t"]: row["b"] for row in balances}
    transfers = await db.fetchval(
        "SELECT count(*) FROM credit_transfers WHERE from_tenant = $1::uuid", sender
    )
    outbox = await db.fetchval("SELECT count(*) FROM outbox WHERE topic = 'credit_transfer'")
    return {
        "balances": [by_tenant.get(sender), by_tenant.get(receiver)],
        "transfers": transfers,
        "outbox": outbox,
    }


def body(receiver: str, amount: int, key: str | None = None) -> dict[str, Any]:
    return {
        "to_tenant": receiver,
        "amount_micros": amount,
        "idempotency_key": key or uuid.uuid4().hex,
    }


async def balance(client: httpx.AsyncClient, user: DataUser) -> dict[str, Any]:
    response = await client.get("/v1/credits", headers=user.headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@ROLLBACK
@pytest.mark.L2
@pytest.mark.L3
async def test_transfer_reaches_every_store_once(
    relay_client: httpx.AsyncClient,
    make_data_user: MakeUser,
    flow_db: asyncpg.Connection,
    data_admin: dict[str, str],
    clickhouse: ClickHouseReader,
) -> None:
    sender, receiver = await funded(make_data_user, flow_db)
    assert (await balance(relay_client, sender))["source"] == "primary"
    assert await balance(relay_client, sender) == {
        "tenant_id": sender.tenant_id, "balance_micros": START, "source": "cache"
    }  # fmt: skip

    moved = await relay_client.post(TRANSFER, json=body(receiver, 300), headers=sender.headers)
    assert moved.status_code == 201, moved.text
    # The cached balance was invalidated with the commit: the next read is fresh.
    assert await balance(relay_client, sender) == {
        "tenant_id": sender.tenant_id, "balance_micros": 700, "source": "primary"
    }  # fmt: skip
    assert await state(flow_db, sender.tenant_id, receiver) == {
        "balances": [700, 1300], "transfers": 1, "outbox": 1
    }  # fmt: skip
    assert await clickhouse.credit_events() == []

    relayed = await relay_client.post(RUN, headers=data_admin)
    assert relayed.status_code == 200, relayed.text
    assert await clickhouse.credit_events() == [
        (moved.json()["id"], sender.tenant_id, receiver, 300)
    ]
    assert (await balance(relay_client, sender))["balance_micros"] == 700


@ROLLBACK
@pytest.mark.L2
@pytest.mark.L3
async def test_insufficient_credit_writes_nothing_anywhere(
    relay_client: httpx.AsyncClient,
    make_data_user: MakeUser,
    flow_db: asyncpg.Connection,
    data_admin: dict[str, str],
    clickhouse: ClickHouseReader,
) -> None:
    sender, receiver = await funded(make_data_user, flow_db)
    assert (await balance(relay_client, sender))["balance_micros"] == START

    refused = await relay_client.post(
        TRANSFER, json=body(receiver, START + 1), headers=sender.headers
    )
    assert refused.status_code == 409, refused.text
    assert error_of(refused) == "insufficient_credit"
    assert await state(flow_db, sender.tenant_id, receiver) == {
        "balances": [START, START], "transfers": 0, "outbox": 0
    }  # fmt: skip
    relayed = await relay_client.post(RUN, headers=data_admin)
    assert relayed.status_code == 200, relayed.text
    assert relayed.json()["relayed"] == 0
    assert await clickhouse.credit_events() == []
    assert await balance(relay_client, sender) == {
        "tenant_id": sender.tenant_id, "balance_micros": START, "source": "cache"
    }  # fmt: skip


@COORDINATION
@pytest.mark.L2
@pytest.mark.L3
async def test_transfer_killed_mid_transaction_leaves_nothing_then_retries_once(
    clean_platform: Platform,
    flow_database: str,
    flow_instance: FlowInstance,
    make_data_user: MakeUser,
    flow_db: asyncpg.Connection,
    data_admin: dict[str, str],
    clickhouse: ClickHouseReader,
) -> None:
    sender, receiver = await funded(make_data_user, flow_db)
    key = uuid.uuid4().hex
    async with (
        clean_platform.start(
            "data", APEX_OUTBOX_RELAY="off", APEX_DATABASE_URL=flow_database
        ) as service,
        httpx.AsyncClient(base_url=service.url, timeout=30, verify=tls_context()) as client,
    ):
        async with flow_db.transaction():
            # The receiver's row is held: the service debits the sender, then waits.
            await flow_db.execute(
                "SELECT 1 FROM tenant_credits WHERE tenant_id = $1::uuid FOR UPDATE", receiver
            )
            sent = asyncio.create_task(
                client.post(TRANSFER, json=body(receiver, 300, key), headers=sender.headers)
            )
            waiting = await eventually(lambda: blocked_by(flow_db), timeout=30, message="mid-way")
            if clean_platform.level is Level.L3:
                await service.kill()  # the process dies with its transaction open
            else:
                for pid in waiting:  # its connection dies; the service retries the transfer
                    await flow_db.fetchval("SELECT pg_terminate_backend($1)", pid)
        if clean_platform.level is Level.L3:
            with pytest.raises(httpx.TransportError):
                await sent
            await eventually(
                lambda: ended(flow_db, waiting), timeout=30, message="the dead transaction gone"
            )
            # Nothing of the half-done transfer is visible.
            assert await state(flow_db, sender.tenant_id, receiver) == {
                "balances": [START, START], "transfers": 0, "outbox": 0
            }  # fmt: skip
            # The client retries with the same key, elsewhere.
            async with flow_instance() as other:
                again = await other.post(
                    TRANSFER, json=body(receiver, 300, key), headers=sender.headers
                )
            assert again.status_code == 201, again.text
        else:
            answer = await sent
            assert answer.status_code == 201, answer.text

    assert await state(flow_db, sender.tenant_id, receiver) == {
        "balances": [700, 1300], "transfers": 1, "outbox": 1
    }  # fmt: skip
    async with flow_instance() as other:
        relayed = await other.post(RUN, headers=data_admin)
    assert relayed.status_code == 200, relayed.text
    assert [event[3] for event in await clickhouse.credit_events()] == [300]


@MULTI_DATABASE
@pytest.mark.L3
async def test_clickhouse_down_the_ledger_follows_once_it_is_back(
    clean_platform: Platform,
    flow_database: str,
    make_data_user: MakeUser,
    flow_db: asyncpg.Connection,
    data_admin: dict[str, str],
    clickhouse: ClickHouseReader,
) -> None:
    sender, receiver = await funded(make_data_user, flow_db)
    async with proxied_data(
        clean_platform,
        instance=21,
        APEX_DATABASE_URL=flow_database,
        via="clickhouse",
        APEX_OUTBOX_RELAY="off",
    ) as data:
        data.proxy.down()
        moved = await data.client.post(TRANSFER, json=body(receiver, 250), headers=sender.headers)
        assert moved.status_code == 201, moved.text
        cut = await data.client.post(RUN, headers=data_admin)
        assert cut.status_code == 503, cut.text
        assert cut.json()["pending"] == 1
        assert await clickhouse.credit_events() == []

        data.proxy.up()
        back = await data.client.post(RUN, headers=data_admin)
        assert back.status_code == 200, back.text
        again = await data.client.post(RUN, headers=data_admin)
    assert again.json()["relayed"] == 0
    assert await clickhouse.credit_events() == [
        (moved.json()["id"], sender.tenant_id, receiver, 250)
    ]
    assert await state(flow_db, sender.tenant_id, receiver) == {
        "balances": [750, 1250], "transfers": 1, "outbox": 1
    }  # fmt: skip


@MULTI_DATABASE
@pytest.mark.L3
async def test_redis_cut_during_transfer_the_cache_catches_up(
    clean_platform: Platform,
    flow_database: str,
    make_data_user: MakeUser,
    flow_db: asyncpg.Connection,
    data_admin: dict[str, str],
) -> None:
    sender, receiver = await funded(make_data_user, flow_db)
    async with proxied_data(
        clean_platform,
        instance=22,
        APEX_DATABASE_URL=flow_database,
        via="redis",
        APEX_OUTBOX_RELAY="off",
    ) as data:
        await balance(data.client, sender)
        assert (await balance(data.client, sender))["source"] == "cache"

        data.proxy.down()
        moved = await data.client.post(TRANSFER, json=body(receiver, 400), headers=sender.headers)
        assert moved.status_code == 201, moved.text
        # Redis down: a miss, answered by PostgreSQL, never a 5xx.
        assert await balance(data.client, sender) == {
            "tenant_id": sender.tenant_id, "balance_micros": 600, "source": "primary"
        }  # fmt: skip
        cut = await data.client.post(RUN, headers=data_admin)
        assert cut.status_code == 503, cut.text
        # The invalidations Redis missed wait in their queue; the ledger went on.
        assert cut.json()["relayed"] == 1
        assert await flow_db.fetchval("SELECT count(*) FROM cache_invalidations") == 2

        data.proxy.up()
        back = await data.client.post(RUN, headers=data_admin)
        assert back.status_code == 200, back.text
        assert back.json()["pending"] == 0
        assert await flow_db.fetchval("SELECT count(*) FROM cache_invalidations") == 0
        assert (await balance(data.client, sender))["balance_micros"] == 600


@COORDINATION
@pytest.mark.L3
async def test_postgres_down_nothing_is_written_and_the_cache_stays_true(
    clean_platform: Platform,
    flow_database: str,
    make_data_user: MakeUser,
    flow_db: asyncpg.Connection,
) -> None:
    sender, receiver = await funded(make_data_user, flow_db)
    async with proxied_data(
        clean_platform,
        instance=23,
        APEX_DATABASE_URL=flow_database,
        via="postgres",
        APEX_OUTBOX_RELAY="off",
        APEX_DB_CONNECT_DEADLINE="1",
    ) as data:
        assert (await balance(data.client, sender))["balance_micros"] == START
        data.proxy.down()
        failed = await data.client.post(TRANSFER, json=body(receiver, 100), headers=sender.headers)
        assert failed.status_code == 503, failed.text
        assert error_of(failed) == "database_unavailable"
        data.proxy.up()
        assert await balance(data.client, sender) == {
            "tenant_id": sender.tenant_id, "balance_micros": START, "source": "cache"
        }  # fmt: skip
    assert await state(flow_db, sender.tenant_id, receiver) == {
        "balances": [START, START], "transfers": 0, "outbox": 0
    }  # fmt: skip
