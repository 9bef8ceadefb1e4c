"""001#55 read replica lag handling.

The rules under test (contract-data.md, Routes and settings): reads that may be stale go
to the replica (APEX_DATABASE_REPLICA_URL) while it is at most APEX_REPLICA_MAX_LAG_BYTES
behind (measured with `pg_last_wal_replay_lsn` every APEX_REPLICA_LAG_CHECK seconds);
`X-Apex-Min-LSN` (a write's `X-Apex-LSN`) is served by the replica only once it has
replayed it, else by the primary; a lagging or unreachable replica is bypassed and the
response says `source: primary`. The run's replica is shared (never paused); a test that
stops replication or the replica takes a pair of its own (`postgres_pair`).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from apex_testkit import PostgresPair, PostgresReplica
from db_tests.cli import migrate
from db_tests.client import BILLING_READ, RUN_AGENTS, DataUser, MakeUser, OpenData, usage_body
from db_tests.replicas import replica_state, wait_replica_state
from db_tests.state import metrics, sample

LAG = pytest.mark.bvj(
    segment="enterprise", goal="Reads scale out to a replica without ever showing stale writes",
    mrr=15000, scenario="001#55",
)  # fmt: skip
pytestmark = [LAG, pytest.mark.L3]

FAST = {"APEX_REPLICA_LAG_CHECK": "0.1"}
FAR_FUTURE_LSN = "FFFFFFFF/FFFFFFFF"


@pytest.fixture
async def user(make_data_user: MakeUser) -> DataUser:
    return await make_data_user(permissions=(RUN_AGENTS, BILLING_READ))


async def _write(client: httpx.AsyncClient, user: DataUser, quantity: int = 100) -> str:
    response = await client.post(
        "/v1/usage", json=usage_body(user.user_id, quantity=quantity), headers=user.headers
    )
    assert response.status_code == 201, response.text
    return response.headers["X-Apex-LSN"]


async def _summary(
    client: httpx.AsyncClient, user: DataUser, min_lsn: str | None = None
) -> dict[str, Any]:
    # no-cache: these tests are about who of the primary and the replica answers (the
    # summary cache, test_summary_cache.py, would answer a repeated read itself).
    headers = {**user.headers, "Cache-Control": "no-cache"}
    headers |= {"X-Apex-Min-LSN": min_lsn} if min_lsn else {}
    response = await client.get("/v1/usage/summary", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _quantity(summary: dict[str, Any]) -> int:
    return int(summary["by_kind"].get("tokens", {}).get("quantity", 0))


async def test_a_read_that_may_be_stale_is_served_by_the_replica(
    data_with: OpenData, postgres_replica: PostgresReplica, user: DataUser, admin_token: str
) -> None:
    client = await data_with(APEX_DATABASE_REPLICA_URL=postgres_replica.url, **FAST)
    lsn = await _write(client, user, quantity=7)
    postgres_replica.wait_for_lsn(lsn)
    await wait_replica_state(client, admin_token, "ok")
    summary = await _summary(client, user)
    assert summary["source"] == "replica"
    assert _quantity(summary) == 7
    samples = await metrics(client, admin_token)
    assert sample(samples, "apex_data_reads_total", source="replica") >= 1
    assert sample(samples, "apex_data_replica_lag_bytes") >= 0


async def test_a_min_lsn_the_replica_has_replayed_is_served_by_it(
    data_with: OpenData, postgres_replica: PostgresReplica, user: DataUser, admin_token: str
) -> None:
    client = await data_with(APEX_DATABASE_REPLICA_URL=postgres_replica.url, **FAST)
    lsn = await _write(client, user, quantity=3)
    postgres_replica.wait_for_lsn(lsn)
    await wait_replica_state(client, admin_token, "ok")
    summary = await _summary(client, user, min_lsn=lsn)
    assert (summary["source"], _quantity(summary)) == ("replica", 3)


async def test_a_min_lsn_the_replica_has_not_replayed_is_served_by_the_primary(
    data_with: OpenData, postgres_replica: PostgresReplica, user: DataUser, admin_token: str
) -> None:
    client = await data_with(APEX_DATABASE_REPLICA_URL=postgres_replica.url, **FAST)
    await _write(client, user, quantity=5)
    await wait_replica_state(client, admin_token, "ok")
    summary = await _summary(client, user, min_lsn=FAR_FUTURE_LSN)
    assert (summary["source"], _quantity(summary)) == ("primary", 5)


@pytest.fixture
async def pair_schema(postgres_pair: PostgresPair) -> PostgresPair:
    """A pair of the test's own, migrated (the replica follows), replica caught up."""
    await migrate(postgres_pair.primary_url)
    postgres_pair.replica.wait_caught_up(timeout=30)
    return postgres_pair


async def test_reads_after_a_write_see_it_while_replication_is_paused(
    data_with: OpenData, pair_schema: PostgresPair, user: DataUser, admin_token: str
) -> None:
    pair = pair_schema
    client = await data_with(
        APEX_DATABASE_URL=pair.primary_url, APEX_DATABASE_REPLICA_URL=pair.replica.url, **FAST
    )
    await wait_replica_state(client, admin_token, "ok")
    pair.link.down()
    lsn = await _write(client, user, quantity=11)
    # Read-your-writes: the replica has not replayed the write, so the primary answers.
    mine = await _summary(client, user, min_lsn=lsn)
    assert (mine["source"], _quantity(mine)) == ("primary", 11)
    # Without a min LSN the replica (still within the lag bound) may answer, stale.
    stale = await _summary(client, user)
    assert stale["source"] == "replica"
    assert _quantity(stale) == 0
    pair.link.up()
    pair.replica.wait_for_lsn(lsn, timeout=30)
    caught_up = await _summary(client, user, min_lsn=lsn)
    assert (caught_up["source"], _quantity(caught_up)) == ("replica", 11)


async def test_a_replica_past_the_lag_bound_is_bypassed_until_it_catches_up(
    data_with: OpenData, pair_schema: PostgresPair, user: DataUser, admin_token: str
) -> None:
    pair = pair_schema
    client = await data_with(
        APEX_DATABASE_URL=pair.primary_url,
        APEX_DATABASE_REPLICA_URL=pair.replica.url,
        APEX_REPLICA_MAX_LAG_BYTES="65536",
        # No background relay: its acks of the batch's 2,000 outbox rows (over 64 KiB of
        # WAL) could land after the link is back and make the replica lag again just
        # before the last read (seen at L3 on a loaded machine).
        APEX_OUTBOX_RELAY="off",
        **FAST,
    )
    await wait_replica_state(client, admin_token, "ok")
    pair.link.down()
    records = [usage_body(user.user_id, quantity=1) for _ in range(2000)]
    stored = await client.post("/v1/usage/batch", json={"records": records}, headers=user.headers)
    assert stored.status_code == 201, stored.text
    await wait_replica_state(client, admin_token, "lagging")
    assert (await replica_state(client, admin_token))["lag_bytes"] > 65536
    bypassed = await _summary(client, user)
    assert (bypassed["source"], _quantity(bypassed)) == ("primary", 2000)
    pair.link.up()
    await wait_replica_state(client, admin_token, "ok")
    # "ok" is within the bound, not caught up: the batch's commit may be in its last bytes.
    pair.replica.wait_for_lsn(stored.headers["X-Apex-LSN"], timeout=30)
    served = await _summary(client, user)
    assert (served["source"], _quantity(served)) == ("replica", 2000)


async def test_a_replica_that_is_down_is_bypassed(
    data_with: OpenData, pair_schema: PostgresPair, user: DataUser, admin_token: str
) -> None:
    pair = pair_schema
    client = await data_with(
        APEX_DATABASE_URL=pair.primary_url, APEX_DATABASE_REPLICA_URL=pair.replica.url, **FAST
    )
    await _write(client, user, quantity=4)
    await wait_replica_state(client, admin_token, "ok")
    pair.kill_replica()
    summary = await _summary(client, user)
    assert (summary["source"], _quantity(summary)) == ("primary", 4)
    await wait_replica_state(client, admin_token, "down")
    health = await client.get("/healthz")
    assert health.status_code == 200, health.text
    assert health.json()["checks"]["replica"] == "down"


async def test_a_summary_the_replica_computed_is_never_cached(
    data_with: OpenData, postgres_replica: PostgresReplica, user: DataUser, admin_token: str
) -> None:
    # Cached, a replica's summary would outlive its lag (it may miss a write not replayed
    # yet): the cache keeps the primary's only. No relay: nothing else bumps the tenant.
    client = await data_with(
        APEX_DATABASE_REPLICA_URL=postgres_replica.url, APEX_OUTBOX_RELAY="off", **FAST
    )
    lsn = await _write(client, user, quantity=2)
    postgres_replica.wait_for_lsn(lsn)
    await wait_replica_state(client, admin_token, "ok")
    sources = []
    for _ in range(3):
        response = await client.get("/v1/usage/summary", headers=user.headers)
        assert response.status_code == 200, response.text
        assert _quantity(response.json()) == 2
        sources.append(response.json()["source"])
    assert sources == ["replica"] * 3
    # The primary's answer (read-your-writes past the replica) is kept.
    far = {**user.headers, "X-Apex-Min-LSN": FAR_FUTURE_LSN}
    assert (await client.get("/v1/usage/summary", headers=far)).json()["source"] == "primary"
    assert (await client.get("/v1/usage/summary", headers=user.headers)).json()["source"] == (
        "cache"
    )
