"""001#58 lock contention and deadlocks.

The rules under test (contract-data.md, Behaviours): two credit transfers in opposite
directions at once deadlock in PostgreSQL (40P01); the service retries its transaction
with backoff and jitter, so both succeed (`apex_data_retries_total{reason="deadlock"}`
grows); after APEX_DB_RETRIES attempts it answers 409 `conflict_retry_exhausted` with
nothing written. The other transfer is played by the test's own transaction, locking in
the opposite order, so the deadlock happens every time, not by chance of timing.

PostgreSQL looks for the cycle once a backend has waited `deadlock_timeout` (the kit's
servers: 0.2 s), and the backend that looks first loses: the service's, which waited
first, as long as the test's own update comes within that time. On a machine too loaded
for that, the test's transaction is the one refused; the attempt does not count, and the
test starts again from empty stores.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from apex_testkit import Platform, eventually
from db_tests.client import BILLING_WRITE, DataUser, MakeUser, OpenData, error_of
from db_tests.state import Connect, metrics, outbox_count, sample, waiting_backends

DEADLOCKS = pytest.mark.bvj(
    segment="enterprise", goal="Concurrent transfers never fail for lock contention alone",
    mrr=10000, scenario="001#58",
)  # fmt: skip
pytestmark = [DEADLOCKS, pytest.mark.L2, pytest.mark.L3]

START = 1000
# Attempts at the deadlock before the test gives up (each one that did not fall on the
# service is undone by a reset).
ATTEMPTS = 5


class _Missed(Exception):
    """PostgreSQL refused the test's own transaction, not the service's."""


async def _balances(db: Any, *tenants: str) -> list[int]:
    rows = await db.fetch(
        "SELECT tenant_id::text, balance_micros FROM tenant_credits "
        "WHERE tenant_id = ANY($1::uuid[])",
        list(tenants),
    )
    by_tenant = {r["tenant_id"]: r["balance_micros"] for r in rows}
    return [by_tenant.get(t, 0) for t in tenants]


async def _funded(make_data_user: MakeUser, data_db: Any) -> tuple[DataUser, str, str]:
    """A sender (and its tenant) with START micros, and a receiver tenant with START."""
    sender = await make_data_user(permissions=(BILLING_WRITE,))
    assert sender.tenant_id is not None
    receiver = str(uuid.uuid4())
    await data_db.executemany(
        "INSERT INTO tenant_credits (tenant_id, balance_micros) VALUES ($1::uuid, $2)",
        [(sender.tenant_id, START), (receiver, START)],
    )
    return sender, sender.tenant_id, receiver


async def _opposite_transfer_deadlocks(
    client: httpx.AsyncClient, sender: DataUser, receiver: str, db_connect: Connect, data_db: Any
) -> httpx.Response:
    """The service moves 300 sender -> receiver while the test moves 100 receiver ->
    sender, locking the receiver first: a deadlock PostgreSQL resolves by failing the
    service's transaction (it waited first). Returns the service's answer; _Missed when
    PostgreSQL failed the test's transaction instead (the service's transfer went through)."""
    other = await db_connect()
    # PostgreSQL aborts the backend whose deadlock check runs first: the service's, as it
    # waited first, unless a loaded machine delays its check past ours. Ours runs only
    # after 2 s (the service's after the server's 0.2 s), so the victim is the service's
    # transaction whenever the cycle exists by its check; if our update came later than
    # that (its one check found no cycle), ours breaks it and the test plays it again.
    await other.execute("SET deadlock_timeout = '2s'")
    transaction = other.transaction()
    await transaction.start()
    await other.execute(
        "UPDATE tenant_credits SET balance_micros = balance_micros - 100 "
        "WHERE tenant_id = $1::uuid",
        receiver,
    )
    body = {"to_tenant": receiver, "amount_micros": 300, "idempotency_key": uuid.uuid4().hex}
    service = asyncio.create_task(
        client.post("/v1/credits/transfer", json=body, headers=sender.headers)
    )

    async def service_waits() -> bool:
        return await waiting_backends(data_db) == 1

    # Polled closely: the test's update must come within the deadlock timeout.
    await eventually(
        service_waits,
        timeout=10,
        interval=0.002,
        max_interval=0.005,
        message="the service to wait on our lock",
    )
    try:
        await other.execute(
            "UPDATE tenant_credits SET balance_micros = balance_micros + 100 "
            "WHERE tenant_id = $1::uuid",
            sender.tenant_id,
        )
    except asyncpg.DeadlockDetectedError:
        await transaction.rollback()
        await service
        raise _Missed from None
    await transaction.commit()
    return await service


async def _deadlocked_transfer(
    client: httpx.AsyncClient, make_data_user: MakeUser, db_connect: Connect, data_db: Any,
    platform: Platform,
) -> tuple[httpx.Response, str, str]:  # fmt: skip
    """Fund a sender and a receiver, then deadlock the service's transfer between them:
    its answer, the payer's and the receiver's tenants."""
    for _ in range(ATTEMPTS):
        sender, payer, receiver = await _funded(make_data_user, data_db)
        try:
            response = await _opposite_transfer_deadlocks(
                client, sender, receiver, db_connect, data_db
            )
        except _Missed:
            platform.reset()  # the service's plain transfer is undone with everything else
            continue
        return response, payer, receiver
    pytest.fail(f"the deadlock fell on the test's own transaction {ATTEMPTS} times")


async def test_opposite_transfers_both_succeed_after_a_retry(
    data_with: OpenData, make_data_user: MakeUser, db_connect: Connect, data_db: Any,
    admin_token: str, clean_platform: Platform,
) -> None:  # fmt: skip
    client = await data_with(APEX_DB_RETRY_BACKOFF="0.01/0.05")
    retries = "apex_data_retries_total"
    before = sample(await metrics(client, admin_token), retries, reason="deadlock")
    response, payer, receiver = await _deadlocked_transfer(
        client, make_data_user, db_connect, data_db, clean_platform
    )
    assert response.status_code == 201, response.text
    assert await _balances(data_db, payer, receiver) == [
        START - 300 + 100,
        START + 300 - 100,
    ]
    assert await data_db.fetchval("SELECT count(*) FROM credit_transfers") == 1
    assert await outbox_count(data_db) == 1
    after = sample(await metrics(client, admin_token), retries, reason="deadlock")
    assert after - before >= 1


async def test_a_deadlock_on_every_attempt_is_409_and_writes_nothing(
    data_with: OpenData, make_data_user: MakeUser, db_connect: Connect, data_db: Any,
    clean_platform: Platform,
) -> None:  # fmt: skip
    client = await data_with(APEX_DB_RETRIES="1")
    response, payer, receiver = await _deadlocked_transfer(
        client, make_data_user, db_connect, data_db, clean_platform
    )
    assert response.status_code == 409, response.text
    assert error_of(response) == "conflict_retry_exhausted"
    # Only the test's own transfer moved money.
    assert await _balances(data_db, payer, receiver) == [START + 100, START - 100]
    assert await data_db.fetchval("SELECT count(*) FROM credit_transfers") == 0
    assert await outbox_count(data_db) == 0


async def test_a_transfer_moves_credit_once_per_idempotency_key(
    data_client: httpx.AsyncClient, make_data_user: MakeUser, data_db: Any
) -> None:
    sender, payer, receiver = await _funded(make_data_user, data_db)
    body = {"to_tenant": receiver, "amount_micros": 250, "idempotency_key": "t-1"}
    first = await data_client.post("/v1/credits/transfer", json=body, headers=sender.headers)
    assert first.status_code == 201, first.text
    again = await data_client.post("/v1/credits/transfer", json=body, headers=sender.headers)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert await _balances(data_db, payer, receiver) == [START - 250, START + 250]
    assert await outbox_count(data_db) == 1


async def test_a_transfer_beyond_the_balance_is_409_and_writes_nothing(
    data_client: httpx.AsyncClient, make_data_user: MakeUser, data_db: Any
) -> None:
    sender, payer, receiver = await _funded(make_data_user, data_db)
    body = {"to_tenant": receiver, "amount_micros": START + 1, "idempotency_key": "t-2"}
    response = await data_client.post("/v1/credits/transfer", json=body, headers=sender.headers)
    assert response.status_code == 409, response.text
    assert error_of(response) == "insufficient_credit"
    assert await _balances(data_db, payer, receiver) == [START, START]
    assert await data_db.fetchval("SELECT count(*) FROM credit_transfers") == 0
    assert await outbox_count(data_db) == 0
