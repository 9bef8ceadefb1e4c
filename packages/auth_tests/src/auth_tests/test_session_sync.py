"""Sessions shared by every auth instance: 001#3 session Redis sync, 004#5 cross-service state.

Two instances (L2: two app instances in one process, each with its own memory; L3: two
processes) on the same Redis and PostgreSQL. A session created, refreshed, ended or expired
through one must look the same through the other, at once; a revocation is also recorded
for failover (`revoked_sids`, a zset scored by when its access tokens could expire) and
announced on `<prefix>auth:events` (CONTRACT3 "Failover").
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from apex_testkit import Platform, RedisNamespace, eventually
from auth_tests.access import context_token, introspect
from auth_tests.client import AuthAdmin, KeyUser, Tokens, error_of, login
from auth_tests.events import AuthEvents

SYNC = pytest.mark.bvj(
    segment="platform", goal="Session consistency across instances prevents frustration churn",
    mrr=8000, scenario="001#3",
)  # fmt: skip
CROSS_SERVICE = pytest.mark.bvj(
    segment="platform", goal="Cross-service session state: consistency, propagation, expiry",
    mrr=15000, scenario="004#5",
)  # fmt: skip


async def _sessions(client: httpx.AsyncClient, tokens: Tokens) -> list[dict[str, Any]]:
    response = await client.get("/sessions", headers=tokens.bearer)
    assert response.status_code == 200, response.text
    sessions: list[dict[str, Any]] = response.json()["sessions"]
    return sessions


async def _me(client: httpx.AsyncClient, tokens: Tokens) -> tuple[int, str | None]:
    response = await client.get("/me", headers=tokens.bearer)
    return response.status_code, (None if response.status_code == 200 else error_of(response))


def _is_revocation_of(session_id: str) -> Any:
    def match(event: dict[str, Any]) -> bool:
        kind = event.get("type")
        return kind == "session.revoked" and event.get("session_id") == session_id

    return match


@pytest.mark.L2
@pytest.mark.L3
@SYNC
async def test_a_session_created_through_one_instance_is_known_to_the_other(
    auth_client: httpx.AsyncClient,
    other_instance: httpx.AsyncClient,
    key_user: KeyUser,
    redis_namespace: RedisNamespace,
) -> None:
    tokens = await login(auth_client, key_user.api_key)

    me = await other_instance.get("/me", headers=tokens.bearer)
    assert me.status_code == 200, me.text
    assert (me.json()["session_id"], me.json()["user_id"]) == (tokens.session_id, key_user.user_id)
    assert me.json()["auth_method"] == "api_key"

    here, there = await _sessions(auth_client, tokens), await _sessions(other_instance, tokens)
    assert here == there, "two instances describe the same session differently"
    (listed,) = there
    assert listed["session_id"] == tokens.session_id
    assert listed["current"] is True
    assert listed["method"] == "api_key"
    assert listed["api_key_id"] == key_user.key_id
    redis = redis_namespace.client()
    assert redis.exists(f"{redis_namespace.prefix}sess:{tokens.session_id}") == 1


@pytest.mark.L2
@pytest.mark.L3
@SYNC
async def test_a_refresh_through_one_instance_rotates_the_token_for_all(
    auth_client: httpx.AsyncClient, other_instance: httpx.AsyncClient, key_user: KeyUser
) -> None:
    first = await login(auth_client, key_user.api_key)
    before = (await _sessions(other_instance, first))[0]

    second = Tokens.of(
        await auth_client.post("/auth/refresh", json={"refresh_token": first.refresh})
    )

    after = (await _sessions(other_instance, second))[0]
    assert after["session_id"] == before["session_id"] == first.session_id
    assert after["refreshed_at"] is not None
    assert after["refreshed_at"] != before["refreshed_at"]
    assert after["expires_at"] == before["expires_at"], "a refresh does not extend the session"
    third = Tokens.of(
        await other_instance.post("/auth/refresh", json={"refresh_token": second.refresh})
    )
    assert await _me(auth_client, third) == (200, None)


@pytest.mark.L2
@pytest.mark.L3
@SYNC
async def test_a_rotated_refresh_token_replayed_at_the_other_instance_kills_the_session(
    auth_client: httpx.AsyncClient, other_instance: httpx.AsyncClient, key_user: KeyUser
) -> None:
    first = await login(auth_client, key_user.api_key)
    second = Tokens.of(
        await auth_client.post("/auth/refresh", json={"refresh_token": first.refresh})
    )

    replay = await other_instance.post("/auth/refresh", json={"refresh_token": first.refresh})

    assert (replay.status_code, error_of(replay)) == (401, "refresh_reused")
    assert await _me(auth_client, second) == (401, "session_revoked")
    assert await _me(other_instance, second) == (401, "session_revoked")


@pytest.mark.L2
@pytest.mark.L3
@SYNC
@CROSS_SERVICE
async def test_ending_a_session_on_one_instance_ends_it_everywhere_at_once(
    auth_client: httpx.AsyncClient,
    other_instance: httpx.AsyncClient,
    key_user: KeyUser,
    redis_namespace: RedisNamespace,
    resource_server: KeyUser,
) -> None:
    doomed = await login(auth_client, key_user.api_key)
    keeper = await login(other_instance, key_user.api_key)
    downstream = await context_token(auth_client, doomed, "agents")
    assert await _me(auth_client, doomed) == (200, None)  # warm whatever the instance caches

    ended = await other_instance.delete(f"/sessions/{doomed.session_id}", headers=keeper.bearer)
    assert ended.status_code == 204

    refused = [
        await auth_client.get("/me", headers=doomed.bearer),
        await auth_client.get("/sessions", headers=doomed.bearer),
        await auth_client.post(
            "/authz/check", json={"permission": "agents:read"}, headers=doomed.bearer
        ),
        await auth_client.post(
            "/auth/context-token", json={"audience": "agents"}, headers=doomed.bearer
        ),
    ]
    for response in refused:
        assert (response.status_code, error_of(response)) == (401, "session_revoked"), (
            response.request.url.path
        )
    refresh = await auth_client.post("/auth/refresh", json={"refresh_token": doomed.refresh})
    assert refresh.status_code == 401
    assert (await introspect(auth_client, downstream, caller=resource_server))["active"] is False
    assert [s["session_id"] for s in await _sessions(auth_client, keeper)] == [keeper.session_id]
    redis = redis_namespace.client()
    assert redis.exists(f"{redis_namespace.prefix}sess:{doomed.session_id}") == 0


@pytest.mark.L2
@pytest.mark.L3
@CROSS_SERVICE
async def test_a_revocation_is_recorded_for_failover_and_announced(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    key_user: KeyUser,
    redis_namespace: RedisNamespace,
    auth_events: AuthEvents,
) -> None:
    redis = redis_namespace.client()
    revoked = f"{redis_namespace.prefix}revoked_sids"
    by_logout = await login(auth_client, key_user.api_key)
    by_key = [await login(auth_client, key_user.api_key) for _ in range(2)]
    assert redis.zscore(revoked, by_logout.session_id) is None

    assert (await auth_client.post("/auth/logout", headers=by_logout.bearer)).status_code == 204
    score = redis.zscore(revoked, by_logout.session_id)
    assert score is not None, "a logout did not reach revoked_sids"
    now = time.time()
    # Kept until the session's access tokens could have expired, and no longer.
    assert now < score <= now + by_logout.expires_in + 5, (score, now, by_logout.expires_in)
    await auth_events.wait_for(_is_revocation_of(by_logout.session_id))

    await auth_admin.revoke_api_key(key_user.key_id)  # ends every session of the key
    for tokens in by_key:
        assert redis.zscore(revoked, tokens.session_id) is not None
        await auth_events.wait_for(_is_revocation_of(tokens.session_id))


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.slow
@CROSS_SERVICE
async def test_an_expired_session_is_gone_for_every_instance(
    clean_platform: Platform,
    admin_token: str,
    redis_namespace: RedisNamespace,
    auth_client: httpx.AsyncClient,
) -> None:
    short = {"APEX_JWT_ACCESS_TTL": "0.5", "APEX_JWT_REFRESH_TTL": "0.5"}  # to the ms
    async with (
        clean_platform.client("auth", instance=0, **short) as first,
        clean_platform.client("auth", instance=1, **short) as second,
    ):
        user = await AuthAdmin(first, admin_token).key_user()
        redis = redis_namespace.client()

        async def stored() -> tuple[Tokens, float] | None:
            tokens = await login(first, user.api_key)
            ttl = redis.pttl(f"{redis_namespace.prefix}sess:{tokens.session_id}")
            if ttl == -2:  # gone already: a loaded machine took its 0.5 s; a new one
                return None
            assert 0 < ttl <= 500, "the session lives APEX_JWT_REFRESH_TTL in Redis"
            return tokens, time.monotonic()

        found = await eventually(stored, timeout=10, interval=0.001, message="a 0.5 s session")
        assert found is not None  # eventually returns only a truthy value
        tokens, started = found
        key = f"{redis_namespace.prefix}sess:{tokens.session_id}"

        async def gone() -> bool:
            return redis.exists(key) == 0

        await eventually(gone, timeout=10, message="the session to expire in Redis")
        print(f"session expired {time.monotonic() - started:.2f} s after creation (TTL 0.5 s)")
        for client in (first, second):
            refresh = await client.post("/auth/refresh", json={"refresh_token": tokens.refresh})
            assert refresh.status_code == 401, refresh.text
            assert error_of(refresh) in ("invalid_refresh_token", "session_revoked")
            assert (await client.get("/me", headers=tokens.bearer)).status_code == 401

        # A long-lived session (an instance with the default TTLs made it) to list with:
        # the short-lived instances verify its token like any other.
        fresh = await login(auth_client, user.api_key)
        for client in (first, second):
            listed = [s["session_id"] for s in await _sessions(client, fresh)]
            assert listed == [fresh.session_id], "an expired session is still listed"


@pytest.mark.L2
@pytest.mark.L3
@CROSS_SERVICE
async def test_instances_agree_after_concurrent_logins_refreshes_and_logouts(
    auth_client: httpx.AsyncClient, other_instance: httpx.AsyncClient, auth_admin: AuthAdmin
) -> None:
    key_user = await auth_admin.key_user(tier="enterprise")  # 6 devices: under its limit
    clients = (auth_client, other_instance)
    sessions = [await login(clients[i % 2], key_user.api_key) for i in range(6)]

    async def churn(i: int, tokens: Tokens) -> Tokens | None:
        client = clients[(i + 1) % 2]  # always the instance that did NOT create it
        if i % 3 == 0:
            assert (await client.post("/auth/logout", headers=tokens.bearer)).status_code == 204
            return None
        if i % 3 == 1:
            return Tokens.of(
                await client.post("/auth/refresh", json={"refresh_token": tokens.refresh})
            )
        assert await _me(client, tokens) == (200, None)
        return tokens

    outcome = await asyncio.gather(*(churn(i, t) for i, t in enumerate(sessions)))
    alive = [t for t in outcome if t is not None]

    expected = sorted(t.session_id for t in alive)
    for client in clients:
        for tokens in alive:
            assert await _me(client, tokens) == (200, None)
            listed = sorted(s["session_id"] for s in await _sessions(client, tokens))
            assert listed == expected
        for i, tokens in enumerate(sessions):
            if outcome[i] is None:
                assert await _me(client, tokens) == (401, "session_revoked")
