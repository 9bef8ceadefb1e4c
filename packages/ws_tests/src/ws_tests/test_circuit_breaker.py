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
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

import pytest

from apex_testkit import FaultProxy, RedisNamespace, eventually
from ws_tests.client import Connect, Frame, WsClient
from ws_tests.gateways import GatewayHandle, Gateways, metric
from ws_tests.users import MakeUser, WsUser

BREAKER = pytest.mark.bvj(
    segment="platform", goal="Failure isolation: a sick dependency cannot hang every socket",
    mrr=10000, scenario="001#24",
)  # fmt: skip
pytestmark = [BREAKER, pytest.mark.slow]  # each waits out an open period (0.3 s at best)

THRESHOLD = 3
# Open periods a scenario tries, shortest first. The steps that assert the open state take
# a few local round trips; when a loaded machine took longer than the open period for
# them, what they saw proves nothing either way, and the scenario runs again with the next.
OPEN_PERIODS = (0.3, 1.0, 3.0, 9.0)
# For a test that never waits an open period out: long, so nothing it does outlives it.
LONG_OPEN = 60.0
FAST = 3.0  # seconds: an open breaker answers at once, a hang would take far longer


def _settings(open_seconds: float) -> dict[str, str]:
    return {"APEX_WS_BREAKER": f"{THRESHOLD}/{open_seconds}", "APEX_WS_RATE": "1000/1"}


class _PeriodMissed(Exception):
    """The steps meant to run while the breaker is open outlasted its open period."""


@contextlib.asynccontextmanager
async def _while_open(opened_after: float, open_seconds: float) -> AsyncIterator[None]:
    """Steps that assert the open state of a breaker that opened after `opened_after`
    (time.monotonic()): a failure once `open_seconds` have passed since is _PeriodMissed
    (the machine was too slow to tell); sooner, it is a failure like any other."""
    try:
        yield
    except AssertionError:
        if time.monotonic() - opened_after < open_seconds:
            raise
        raise _PeriodMissed from None


async def _with_open_periods(scenario: Callable[[float], Awaitable[None]]) -> None:
    """Run `scenario(open_seconds)` with each of OPEN_PERIODS until a run is conclusive."""
    for open_seconds in OPEN_PERIODS:
        with contextlib.suppress(_PeriodMissed):
            await scenario(open_seconds)
            return
    pytest.fail(f"every open period ({OPEN_PERIODS} s) ended before its steps were done")


class BehindProxy(NamedTuple):
    """A gateway whose PostgreSQL is reached through a fault proxy, a new user, and a
    socket of the user's on that gateway."""

    proxy: FaultProxy
    gateway: GatewayHandle
    user: WsUser
    client: WsClient


StartBehindProxy = Callable[[float], Awaitable[BehindProxy]]


@pytest.fixture
def db_behind_proxy(
    gateways: Gateways,
    fault_proxy: Callable[[str], FaultProxy],
    postgres_database: str,
    ws_open: Connect,
    make_ws_user: MakeUser,
) -> StartBehindProxy:
    """The PostgreSQL tests' setup: `proxy, gateway, user, client = await
    db_behind_proxy(open_seconds)` puts the worker's database behind a fault proxy, starts
    a gateway that uses it, its breaker opening after THRESHOLD failures for
    `open_seconds`, then makes a user and opens a socket of theirs on it."""

    async def start(open_seconds: float) -> BehindProxy:
        proxy = fault_proxy(postgres_database)
        gateway = await gateways.start(
            APEX_DATABASE_URL=proxy.url_for(postgres_database), **_settings(open_seconds)
        )
        user = await make_ws_user()
        return BehindProxy(proxy, gateway, user, await ws_open(gateway.url, user.token))

    return start


async def _state(gateway: GatewayHandle, dependency: str) -> float:
    return metric(await gateway.metrics(), "apex_gateway_breaker_state", dependency=dependency)


async def _note(client: WsClient, title: str, timeout: float = 30) -> Frame:
    return await client.request(
        "note.create", data={"title": title, "body": "breaker"}, timeout=timeout
    )


@pytest.mark.L2
@pytest.mark.L3
async def test_postgres_failures_open_the_breaker_then_a_trial_closes_it(
    db_behind_proxy: StartBehindProxy,
) -> None:
    async def scenario(open_seconds: float) -> None:
        proxy, gateway, _, client = await db_behind_proxy(open_seconds)
        assert (await _note(client, "before"))["type"] == "ack"
        assert await _state(gateway, "postgres") == 0

        proxy.down()

        # Failure detection: each call fails as a DB error until the threshold opens it.
        replies = [await _note(client, f"down-{n}") for n in range(THRESHOLD - 1)]
        opened_after = time.monotonic()
        replies.append(await _note(client, f"down-{THRESHOLD - 1}"))
        assert [(r["type"], r["code"]) for r in replies] == [("error", "db_error")] * THRESHOLD
        async with _while_open(opened_after, open_seconds):
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

        trial = await eventually(
            recovered, timeout=open_seconds + 10, max_interval=0.05, message="breaker closes"
        )
        assert trial is not None
        assert trial["type"] == "ack"
        assert await _state(gateway, "postgres") == 0
        assert (await _note(client, "after"))["type"] == "ack"
        listed = await client.request("note.list")
        titles = [n["title"] for n in listed["notes"]]
        assert "before" in titles
        assert "after" in titles
        assert not [t for t in titles if t.startswith(("down-", "while-open"))], titles

    await _with_open_periods(scenario)


@pytest.mark.L2
@pytest.mark.L3
async def test_a_failed_half_open_trial_opens_the_breaker_again_at_once(
    db_behind_proxy: StartBehindProxy,
) -> None:
    async def scenario(open_seconds: float) -> None:
        proxy, gateway, _, client = await db_behind_proxy(open_seconds)
        proxy.down()
        for n in range(THRESHOLD):
            opened_after = time.monotonic()
            await _note(client, f"down-{n}")
        async with _while_open(opened_after, open_seconds):
            assert await _state(gateway, "postgres") == 1

        # Wait out the open period: the first reply that is not `unavailable` is the trial.
        reopened_after = time.monotonic()

        async def trial() -> Frame | None:
            nonlocal reopened_after
            reopened_after = time.monotonic()
            reply = await _note(client, "trial", timeout=FAST + 10)
            return None if reply.get("code") == "unavailable" else reply

        failed = await eventually(
            trial, timeout=open_seconds + 10, max_interval=0.05, message="half-open trial"
        )
        assert failed is not None
        assert (failed["type"], failed["code"]) == ("error", "db_error"), failed

        # One failed trial is enough: open again, no new run of THRESHOLD failures.
        async with _while_open(reopened_after, open_seconds):
            again = await _note(client, "after-trial", timeout=FAST)
            assert (again["type"], again["code"]) == ("error", "unavailable"), again
            assert await _state(gateway, "postgres") == 1

    await _with_open_periods(scenario)


@pytest.mark.L2
@pytest.mark.L3
async def test_half_open_lets_one_trial_through_and_concurrent_calls_fail_fast(
    db_behind_proxy: StartBehindProxy,
    ws_open: Connect,
) -> None:
    async def scenario(open_seconds: float) -> None:
        proxy, gateway, user, first = await db_behind_proxy(open_seconds)
        clients = [first, *[await ws_open(gateway.url, user.token) for _ in range(3)]]
        proxy.down()
        for n in range(THRESHOLD):
            opened_after = time.monotonic()
            await _note(clients[0], f"down-{n}")
        async with _while_open(opened_after, open_seconds):
            assert await _state(gateway, "postgres") == 1
        proxy.up()
        proxy.latency(30)  # the trial takes a while: the other calls arrive during it

        async def half_open() -> bool:
            return await _state(gateway, "postgres") == 2

        await eventually(
            half_open, timeout=open_seconds + 10, max_interval=0.05, message="breaker half-open"
        )
        replies = await asyncio.gather(
            *(_note(client, f"concurrent-{n}") for n, client in enumerate(clients))
        )
        proxy.latency(0)  # the trial is over: what follows needs no slow database

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

    await _with_open_periods(scenario)


@pytest.mark.L2
@pytest.mark.L3
async def test_a_success_resets_the_failure_count(
    db_behind_proxy: StartBehindProxy,
) -> None:
    """Failures open the breaker only when consecutive: THRESHOLD - 1, a success, then
    THRESHOLD - 1 more leave it closed; one more failure opens it."""
    proxy, gateway, _, client = await db_behind_proxy(LONG_OPEN)

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

    async def scenario(open_seconds: float) -> None:
        proxy = fault_proxy(auth_url)
        gateway = await gateways.start(
            APEX_AUTH_URL=proxy.url_for(auth_url), **_settings(open_seconds)
        )
        user = await make_ws_user()
        # Made now so that only the handshake falls inside the open period, not the login.
        newcomer_user = await make_ws_user()
        client = await ws_open(gateway.url, user.token)  # JWKS fetched while auth is up
        _permissions_changed(redis_namespace, user.user_id)
        await client.expect("permissions_changed")  # the auth path works

        proxy.down()
        opened_after = time.monotonic()
        for _ in range(THRESHOLD):  # each event is a call to auth, each one fails
            _permissions_changed(redis_namespace, user.user_id)

        async def opened() -> bool:
            return await _state(gateway, "auth") == 1

        async with _while_open(opened_after, open_seconds):
            await eventually(opened, timeout=15, max_interval=0.02, message="auth breaker opens")
            health = (await gateway.healthz()).json()
            assert health["checks"]["auth"] == "open", health
            # Tokens are verified locally with the cached JWKS: new sockets still get in.
            newcomer = await ws_open(gateway.url, newcomer_user.token)
            assert (await newcomer.request("ping"))["type"] == "pong"

            # Open: the next call fails fast and auth (healed, but unknown to the breaker)
            # is not tried.
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
            try:  # a local round trip once closed; a late one counts for the next round
                await client.expect("permissions_changed", timeout=0.1)
            except AssertionError:
                return False
            return True

        await eventually(closed, timeout=open_seconds + 15, message="auth breaker closes")
        assert await _state(gateway, "auth") == 0
        assert (await gateway.healthz()).json()["checks"]["auth"] == "ok"

    await _with_open_periods(scenario)
