"""001#24 WebSocket circuit breaker: failure detection, circuit states, automatic recovery.

The rules under test (CONTRACT4, Circuit breaker): per dependency (auth over HTTP,
PostgreSQL), after APEX_WS_BREAKER failures the breaker opens for the given seconds: calls
fail fast with `{"type":"error","code":"unavailable","detail":"circuit open: <dep>"}`
without touching the dependency; then one trial call (half-open; calls meanwhile fail
fast) closes it on success. Only consecutive failures count: a success resets the count.
The state is in /metrics (`apex_gateway_breaker_state{dependency}`: 0 closed, 1 open,
2 half-open) and /healthz (`checks.auth`: "ok" | "open").

The dependency is cut with the kit's fault proxy: `down()` refuses and resets connections
(failures come at once), `up()` heals it, and the proxy's connection count shows whether
the gateway tried to reach the dependency at all while its breaker was open.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from apex_testkit import FaultProxy, RedisNamespace, eventually
from ws_tests.client import Connect, Frame, WsClient
from ws_tests.gateways import GatewayHandle, Gateways, metric
from ws_tests.users import MakeUser

BREAKER = pytest.mark.bvj(
    segment="platform", goal="Failure isolation: a sick dependency cannot hang every socket",
    mrr=10000, scenario="001#24",
)  # fmt: skip
pytestmark = [BREAKER, pytest.mark.slow]  # each waits out an open period

# Open long enough for the few local round trips that assert the open state even on a
# loaded machine, short enough that waiting it out stays cheap.
THRESHOLD, OPEN_SECONDS = 3, 1.5
SETTINGS = {"APEX_WS_BREAKER": f"{THRESHOLD}/{OPEN_SECONDS}", "APEX_WS_RATE": "1000/1"}
FAST = 3.0  # seconds: an open breaker answers at once, a hang would take far longer


@dataclass(frozen=True)
class BehindProxy:
    """A gateway (SETTINGS) whose PostgreSQL is reached through a fault proxy."""

    proxy: FaultProxy
    gateway: GatewayHandle


@pytest.fixture
async def db_behind_proxy(
    gateways: Gateways, fault_proxy: Callable[[str], FaultProxy], postgres_database: str
) -> BehindProxy:
    """The PostgreSQL tests' setup: the worker's database behind a fault proxy, and a
    gateway with the module's breaker settings that uses it."""
    proxy = fault_proxy(postgres_database)
    gateway = await gateways.start(APEX_DATABASE_URL=proxy.url_for(postgres_database), **SETTINGS)
    return BehindProxy(proxy, gateway)


async def _state(gateway: GatewayHandle, dependency: str) -> float:
    return metric(await gateway.metrics(), "apex_gateway_breaker_state", dependency=dependency)


async def _open_the_breaker(setup: BehindProxy, client: WsClient) -> None:
    """Cut the database and fail THRESHOLD notes: the PostgreSQL breaker is open."""
    setup.proxy.down()
    for n in range(THRESHOLD):
        await _note(client, f"down-{n}")
    assert await _state(setup.gateway, "postgres") == 1


async def _note(client: WsClient, title: str, timeout: float = 30) -> Frame:
    return await client.request(
        "note.create", data={"title": title, "body": "breaker"}, timeout=timeout
    )


@pytest.mark.L2
@pytest.mark.L3
async def test_postgres_failures_open_the_breaker_then_a_trial_closes_it(
    db_behind_proxy: BehindProxy,
    ws_open: Connect,
    make_ws_user: MakeUser,
) -> None:
    proxy, gateway = db_behind_proxy.proxy, db_behind_proxy.gateway
    user = await make_ws_user()
    client = await ws_open(gateway.url, user.token)
    assert (await _note(client, "before"))["type"] == "ack"
    assert await _state(gateway, "postgres") == 0

    proxy.down()

    # Failure detection: each call fails as a DB error until the threshold opens it.
    replies = [await _note(client, f"down-{n}") for n in range(THRESHOLD)]
    assert [(r["type"], r["code"]) for r in replies] == [("error", "db_error")] * THRESHOLD
    assert await _state(gateway, "postgres") == 1

    # Open: fast failures, and the database is not even tried (it is back, unused).
    proxy.up()
    tried = proxy.stats.connections
    fast = await _note(client, "while-open", timeout=FAST)
    assert (fast["type"], fast["code"]) == ("error", "unavailable"), fast
    assert fast["detail"] == "circuit open: postgres"
    assert proxy.stats.connections == tried, "an open breaker still called the database"

    # Recovery: after the open period one trial call goes through and closes it.
    async def recovered() -> Frame | None:
        reply = await _note(client, "trial", timeout=FAST + 10)
        if reply["type"] == "error":
            assert reply["code"] == "unavailable", reply
            return None
        return reply

    trial = await eventually(recovered, timeout=OPEN_SECONDS + 10, message="breaker closes")
    assert trial is not None
    assert trial["type"] == "ack"
    assert await _state(gateway, "postgres") == 0
    assert (await _note(client, "after"))["type"] == "ack"
    listed = await client.request("note.list")
    titles = [n["title"] for n in listed["notes"]]
    assert "before" in titles
    assert "after" in titles
    assert not [t for t in titles if t.startswith(("down-", "while-open"))], titles


@pytest.mark.L2
@pytest.mark.L3
async def test_a_failed_half_open_trial_opens_the_breaker_again_at_once(
    db_behind_proxy: BehindProxy,
    ws_open: Connect,
    make_ws_user: MakeUser,
) -> None:
    gateway = db_behind_proxy.gateway
    client = await ws_open(gateway.url, (await make_ws_user()).token)
    await _open_the_breaker(db_behind_proxy, client)

    # Wait out the open period: the first reply that is not `unavailable` is the trial.
    async def trial() -> Frame | None:
        reply = await _note(client, "trial", timeout=FAST + 10)
        return None if reply.get("code") == "unavailable" else reply

    failed = await eventually(trial, timeout=OPEN_SECONDS + 10, message="half-open trial")
    assert failed is not None
    assert (failed["type"], failed["code"]) == ("error", "db_error"), failed

    # One failed trial is enough: open again, no new run of THRESHOLD failures.
    again = await _note(client, "after-trial", timeout=FAST)
    assert (again["type"], again["code"]) == ("error", "unavailable"), again
    assert await _state(gateway, "postgres") == 1


@pytest.mark.L2
@pytest.mark.L3
async def test_half_open_lets_one_trial_through_and_concurrent_calls_fail_fast(
    db_behind_proxy: BehindProxy,
    ws_open: Connect,
    make_ws_user: MakeUser,
) -> None:
    proxy, gateway = db_behind_proxy.proxy, db_behind_proxy.gateway
    user = await make_ws_user()
    clients = [await ws_open(gateway.url, user.token) for _ in range(4)]
    await _open_the_breaker(db_behind_proxy, clients[0])
    proxy.up()
    proxy.latency(100)  # the trial takes a while: the other calls arrive during it

    async def half_open() -> bool:
        return await _state(gateway, "postgres") == 2

    await eventually(half_open, timeout=OPEN_SECONDS + 10, message="breaker half-open")
    replies = await asyncio.gather(
        *(_note(client, f"concurrent-{n}") for n, client in enumerate(clients))
    )

    acks = [r for r in replies if r["type"] == "ack"]
    fast = [r for r in replies if r["type"] == "error"]
    assert len(acks) == 1, replies
    assert [(r["code"], r["detail"]) for r in fast] == [
        ("unavailable", "circuit open: postgres")
    ] * 3
    assert await _state(gateway, "postgres") == 0
    listed = await clients[0].request("note.list")
    titles = [n["title"] for n in listed["notes"] if n["title"].startswith("concurrent-")]
    assert len(titles) == 1, f"calls refused by the breaker were written: {titles}"


@pytest.mark.L2
@pytest.mark.L3
async def test_a_success_resets_the_failure_count(
    db_behind_proxy: BehindProxy,
    ws_open: Connect,
    make_ws_user: MakeUser,
) -> None:
    """Failures open the breaker only when consecutive: THRESHOLD - 1, a success, then
    THRESHOLD - 1 more leave it closed; one more failure opens it."""
    proxy, gateway = db_behind_proxy.proxy, db_behind_proxy.gateway
    client = await ws_open(gateway.url, (await make_ws_user()).token)

    proxy.down()
    before = [await _note(client, f"a-{n}") for n in range(THRESHOLD - 1)]
    proxy.up()
    success = await _note(client, "between")
    proxy.down()
    after = [await _note(client, f"b-{n}") for n in range(THRESHOLD - 1)]

    assert [(r["type"], r["code"]) for r in before + after] == [("error", "db_error")] * (
        2 * (THRESHOLD - 1)
    )
    assert success["type"] == "ack", success
    assert await _state(gateway, "postgres") == 0
    last = await _note(client, "b-last")
    assert (last["type"], last["code"]) == ("error", "db_error"), last
    assert await _state(gateway, "postgres") == 1


def _permissions_changed(redis_namespace: RedisNamespace, user_id: str) -> None:
    redis = redis_namespace.client()
    try:
        event = {"type": "permissions.changed", "user_ids": [user_id]}
        redis.publish(f"{redis_namespace.prefix}auth:events", json.dumps(event))
    finally:
        redis.close()


@pytest.mark.L2
@pytest.mark.L3
async def test_auth_outage_opens_the_auth_breaker_and_recovery_closes_it(
    gateways: Gateways,
    ws_open: Connect,
    make_ws_user: MakeUser,
    fault_proxy: Callable[[str], FaultProxy],
    redis_namespace: RedisNamespace,
) -> None:
    auth_url = await gateways.auth_url()
    proxy = fault_proxy(auth_url)
    gateway = await gateways.start(APEX_AUTH_URL=proxy.url_for(auth_url), **SETTINGS)
    user = await make_ws_user()
    # Made now so that only the handshake falls inside the open period, not the login.
    newcomer_user = await make_ws_user()
    client = await ws_open(gateway.url, user.token)  # JWKS fetched while auth is up
    _permissions_changed(redis_namespace, user.user_id)
    await client.expect("permissions_changed")  # the auth path works

    proxy.down()
    for _ in range(THRESHOLD):  # each event is a call to auth, each one fails
        _permissions_changed(redis_namespace, user.user_id)

    async def opened() -> bool:
        return await _state(gateway, "auth") == 1

    await eventually(opened, timeout=15, message="auth breaker opens")
    health = (await gateway.healthz()).json()
    assert health["checks"]["auth"] == "open", health
    # Tokens are verified locally with the cached JWKS: new sockets still get in.
    newcomer = await ws_open(gateway.url, newcomer_user.token)
    assert (await newcomer.request("ping"))["type"] == "pong"

    # Open: the next call fails fast and auth (healed, but unknown to the breaker) is not tried.
    proxy.up()
    tried = proxy.stats.connections
    _permissions_changed(redis_namespace, user.user_id)
    fast = await client.expect(
        "error", code="unavailable", detail="circuit open: auth", timeout=FAST
    )
    assert "id" not in fast or fast["id"] is None  # not a reply: the gateway's own call
    assert proxy.stats.connections == tried, "an open breaker still called auth"

    # Recovery: after the open period a trial call succeeds and the breaker closes.
    async def closed() -> bool:
        _permissions_changed(redis_namespace, user.user_id)
        try:
            await client.expect("permissions_changed", timeout=1)
        except AssertionError:
            return False
        return True

    await eventually(closed, timeout=OPEN_SECONDS + 15, message="auth breaker closes")
    assert await _state(gateway, "auth") == 0
    assert (await gateway.healthz()).json()["checks"]["auth"] == "ok"
