"""001#5 auth failover, and the Redis part of 004#9: L3, a fault proxy between one auth
process and Redis.

Contract (CONTRACT3 "Failover"): with Redis unreachable, `/me` and `/authz/check` verify the
JWT statelessly plus the in-memory revocation cache and answer 200 with `X-Apex-Degraded:
redis`, as long as the last successful sync is younger than APEX_FAILOVER_MAX_STALENESS
(then 503 `unavailable`: fail closed); token exchange, login, refresh and logout answer 503
`unavailable` + Retry-After; `/healthz` is 503 with `"mode": "degraded"`; once Redis answers
again (probed every APEX_REDIS_PROBE_INTERVAL) everything is normal, without a restart.
The times it takes are measured and printed (run with -s or -rP to see them).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from apex_testkit import Platform, eventually
from auth_tests.client import AuthAdmin, Tokens, error_of, exchange, login
from auth_tests.faults import RedisFault, redis_fault

FAILOVER = pytest.mark.bvj(
    segment="platform", goal="High availability: cache-based auth while Redis is down",
    mrr=12000, scenario="001#5",
)  # fmt: skip
ALL_COMPONENTS = pytest.mark.bvj(
    segment="platform", goal="Auth integration, all components: Redis outage and recovery",
    mrr=14000, scenario="004#9",
)  # fmt: skip
pytestmark = [pytest.mark.L3, pytest.mark.slow]

PROBE = "0.2"  # APEX_REDIS_PROBE_INTERVAL: recovery is noticed within a fraction of a second
DETECT_SECONDS = 15.0  # an upper bound for noticing an outage or a recovery, not a target


async def _me(client: httpx.AsyncClient, tokens: Tokens) -> httpx.Response:
    return await client.get("/me", headers=tokens.bearer)


def _degraded(response: httpx.Response) -> bool:
    return response.status_code == 200 and response.headers.get("X-Apex-Degraded") == "redis"


async def _await_degraded(fault: RedisFault, tokens: Tokens) -> tuple[httpx.Response, float]:
    """Take Redis away; wait for the first degraded answer; return it and how long it took."""
    started = time.monotonic()
    fault.proxy.down()

    async def degraded() -> httpx.Response | None:
        response = await _me(fault.client, tokens)
        assert response.status_code != 500, response.text
        return response if _degraded(response) else None

    response = await eventually(
        degraded, timeout=DETECT_SECONDS, message="/me to answer 200 degraded with Redis down"
    )
    assert response is not None
    return response, time.monotonic() - started


async def _await_recovery(fault: RedisFault) -> float:
    """Give Redis back; wait until /healthz says normal; return how long it took."""
    started = time.monotonic()
    fault.proxy.up()

    async def normal() -> bool:
        response = await fault.client.get("/healthz")
        return response.status_code == 200 and response.json().get("mode", "normal") == "normal"

    await eventually(normal, timeout=DETECT_SECONDS, message="/healthz to be normal again")
    return time.monotonic() - started


@FAILOVER
@ALL_COMPONENTS
async def test_valid_tokens_keep_working_degraded_while_redis_is_down(
    clean_platform: Platform, admin_token: str
) -> None:
    async with redis_fault(clean_platform, instance=5, APEX_REDIS_PROBE_INTERVAL=PROBE) as fault:
        admin = AuthAdmin(fault.client, admin_token)
        user = await admin.key_user(tier="pro", tenant_id=str(uuid.uuid4()))
        tokens = await login(fault.client, user.api_key)
        before = await _me(fault.client, tokens)
        assert before.status_code == 200
        assert "X-Apex-Degraded" not in before.headers
        allowed_before = (
            await fault.client.post(
                "/authz/check", json={"permission": "agents:read"}, headers=tokens.bearer
            )
        ).json()["allowed"]

        response, failover = await _await_degraded(fault, tokens)
        print(f"failover: first degraded 200 {failover:.3f} s after Redis went down")

        assert response.json()["user_id"] == user.user_id
        assert response.json()["session_id"] == tokens.session_id
        check = await fault.client.post(
            "/authz/check", json={"permission": "agents:read"}, headers=tokens.bearer
        )
        assert check.status_code == 200, check.text
        assert check.headers.get("X-Apex-Degraded") == "redis"
        assert check.json()["allowed"] is allowed_before
        # Statelessly verified still means verified.
        forged = tokens.access[:-6] + (
            "AAAAAA" if not tokens.access.endswith("AAAAAA") else "BBBBBB"
        )
        bad = await fault.client.get("/me", headers={"Authorization": f"Bearer {forged}"})
        assert (bad.status_code, error_of(bad)) == (401, "invalid_token")

        recovery = await _await_recovery(fault)
        print(f"recovery: /healthz normal {recovery:.3f} s after Redis came back")
        after = await _me(fault.client, tokens)
        assert after.status_code == 200
        assert "X-Apex-Degraded" not in after.headers


@FAILOVER
@ALL_COMPONENTS
async def test_sessions_revoked_before_the_outage_stay_refused(
    clean_platform: Platform, admin_token: str
) -> None:
    async with (
        redis_fault(clean_platform, instance=5, APEX_REDIS_PROBE_INTERVAL=PROBE) as fault,
        clean_platform.client("auth") as elsewhere,
    ):
        admin = AuthAdmin(fault.client, admin_token)
        user = await admin.key_user()
        keeper = await login(fault.client, user.api_key)
        here = await login(fault.client, user.api_key)
        there = await login(elsewhere, user.api_key)
        other_key = await admin.key_user()
        by_key = await login(fault.client, other_key.api_key)
        for tokens in (keeper, here, there, by_key):
            assert (await _me(fault.client, tokens)).status_code == 200

        assert (await fault.client.post("/auth/logout", headers=here.bearer)).status_code == 204
        # Revoked through ANOTHER instance: this one learns it from pub/sub / revoked_sids.
        assert (await elsewhere.post("/auth/logout", headers=there.bearer)).status_code == 204
        await AuthAdmin(elsewhere, admin_token).revoke_api_key(other_key.key_id)
        # Degraded mode refuses what the instance knew at its last sync (the contract's
        # bounded staleness): its /healthz probes Redis, which syncs the revoked set, so the
        # revocations above are known before the outage, not only if pub/sub or the next
        # background probe (APEX_REDIS_PROBE_INTERVAL) beat the proxy going down.
        synced = await fault.client.get("/healthz")
        assert (synced.status_code, synced.json()["mode"]) == (200, "normal"), synced.text

        await _await_degraded(fault, keeper)

        for name, tokens in (("logout here", here), ("logout there", there), ("key", by_key)):
            response = await _me(fault.client, tokens)
            assert (response.status_code, error_of(response)) == (401, "session_revoked"), (
                f"session revoked before the outage ({name}) accepted while Redis is down"
            )
            check = await fault.client.post(
                "/authz/check", json={"permission": "agents:read"}, headers=tokens.bearer
            )
            assert check.status_code == 401, f"{name}: {check.text}"
        assert _degraded(await _me(fault.client, keeper))

        await _await_recovery(fault)
        for tokens in (here, there, by_key):
            assert (await _me(fault.client, tokens)).status_code == 401


@FAILOVER
@ALL_COMPONENTS
async def test_stateful_routes_answer_503_with_retry_after_while_redis_is_down(
    clean_platform: Platform, admin_token: str
) -> None:
    async with redis_fault(clean_platform, instance=5, APEX_REDIS_PROBE_INTERVAL=PROBE) as fault:
        admin = AuthAdmin(fault.client, admin_token)
        user = await admin.key_user()
        tokens = await login(fault.client, user.api_key)
        email = f"{uuid.uuid4().hex}@tests.apex.invalid"
        password = "correct horse battery staple"
        created = await fault.client.post(
            "/admin/users",
            json={"email": email, "tier": "pro", "password": password},
            headers=admin.headers,
        )
        assert created.status_code == 201, created.text

        await _await_degraded(fault, tokens)

        attempts: dict[str, httpx.Response] = {
            "token exchange": await exchange(fault.client, user.api_key),
            "password login": await fault.client.post(
                "/auth/login", json={"email": email, "password": password}
            ),
            "refresh": await fault.client.post(
                "/auth/refresh", json={"refresh_token": tokens.refresh}
            ),
            "logout": await fault.client.post("/auth/logout", headers=tokens.bearer),
        }
        for what, response in attempts.items():
            assert (response.status_code, error_of(response)) == (503, "unavailable"), (
                f"{what}: {response.status_code} {response.text}"
            )
            assert int(response.headers["Retry-After"]) >= 1, what

        await _await_recovery(fault)
        # Nothing was half done: the refresh token was not used up, the logout did not
        # happen, and exchanges work again.
        assert (await _me(fault.client, tokens)).status_code == 200
        renewed = Tokens.of(
            await fault.client.post("/auth/refresh", json={"refresh_token": tokens.refresh})
        )
        assert (await _me(fault.client, renewed)).status_code == 200
        assert (await exchange(fault.client, user.api_key)).status_code == 200


@FAILOVER
async def test_healthz_reports_degraded_mode_and_recovers_without_a_restart(
    clean_platform: Platform, admin_token: str
) -> None:
    async with redis_fault(clean_platform, instance=5, APEX_REDIS_PROBE_INTERVAL=PROBE) as fault:
        user = await AuthAdmin(fault.client, admin_token).key_user()
        tokens = await login(fault.client, user.api_key)
        healthy = await fault.client.get("/healthz")
        assert healthy.status_code == 200, healthy.text

        await _await_degraded(fault, tokens)
        health = await fault.client.get("/healthz")
        assert health.status_code == 503, health.text
        body: dict[str, Any] = health.json()
        assert body["mode"] == "degraded", body
        assert str(body["checks"]["redis"]).startswith("error"), body
        assert body["checks"]["postgres"] == "ok", "only Redis is down"

        # Recovery, twice: noticed by the probe each time, never by a restart.
        timings = []
        for _ in range(2):
            timings.append(await _await_recovery(fault))
            normal = await fault.client.get("/healthz")
            assert normal.json()["checks"]["redis"] == "ok"
            assert "X-Apex-Degraded" not in (await _me(fault.client, tokens)).headers
            assert (await exchange(fault.client, user.api_key)).status_code == 200
            if len(timings) == 1:
                await _await_degraded(fault, tokens)
        print("recovery (healthz normal after Redis is back): " + ", ".join(
            f"{t:.3f} s" for t in timings
        ))  # fmt: skip


@FAILOVER
async def test_beyond_max_staleness_it_fails_closed(
    clean_platform: Platform, admin_token: str
) -> None:
    staleness = 2.0
    async with redis_fault(
        clean_platform,
        instance=6,
        APEX_REDIS_PROBE_INTERVAL=PROBE,
        APEX_FAILOVER_MAX_STALENESS=str(int(staleness)),
    ) as fault:
        user = await AuthAdmin(fault.client, admin_token).key_user()
        tokens = await login(fault.client, user.api_key)
        assert (await _me(fault.client, tokens)).status_code == 200

        # Served degraded while the revocation cache is fresh enough...
        _, failover = await _await_degraded(fault, tokens)
        went_down = time.monotonic() - failover

        async def closed() -> httpx.Response | None:
            response = await _me(fault.client, tokens)
            assert response.status_code in (200, 503), response.text
            return response if response.status_code == 503 else None

        refused = await eventually(
            closed, timeout=staleness + DETECT_SECONDS, message="/me to fail closed"
        )
        assert refused is not None
        closed_after = time.monotonic() - went_down
        print(f"fail closed {closed_after:.3f} s after Redis went down (max staleness 2 s)")
        assert error_of(refused) == "unavailable"
        # ...and not before: the last sync was at most one probe interval before the outage.
        assert closed_after >= staleness - float(PROBE) - 0.1, closed_after
        check = await fault.client.post(
            "/authz/check", json={"permission": "agents:read"}, headers=tokens.bearer
        )
        assert (check.status_code, error_of(check)) == (503, "unavailable")

        await _await_recovery(fault)
        back = await _me(fault.client, tokens)
        assert back.status_code == 200
        assert "X-Apex-Degraded" not in back.headers


@FAILOVER
async def test_reset_connections_are_survived_without_errors(
    clean_platform: Platform, admin_token: str
) -> None:
    async with redis_fault(clean_platform, instance=5, APEX_REDIS_PROBE_INTERVAL=PROBE) as fault:
        user = await AuthAdmin(fault.client, admin_token).key_user()
        tokens = await login(fault.client, user.api_key)

        statuses = []
        for _ in range(3):
            fault.proxy.reset_peers()
            for _ in range(5):
                statuses.append((await _me(fault.client, tokens)).status_code)
        assert set(statuses) == {200}, f"a Redis connection reset leaked out: {statuses}"

        async def normal_again() -> bool:
            response = await _me(fault.client, tokens)
            return response.status_code == 200 and "X-Apex-Degraded" not in response.headers

        await eventually(normal_again, timeout=DETECT_SECONDS, message="/me not degraded")
        assert (await exchange(fault.client, user.api_key)).status_code == 200
