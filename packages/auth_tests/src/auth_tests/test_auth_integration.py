"""004#9 auth with all its components together, 004#12 the cache invalidation chain.

004#9: API key -> tokens -> permissions -> context token for a downstream -> revocation ->
every door closed. 004#12: a grant change through one instance travels auth -> Redis
(the cached `perm:<uid>` is dropped) -> pub/sub (`permissions.changed`) -> the second
instance's memory (its next answers change), each hop checked on its own.
"""

from __future__ import annotations

import uuid

import httpx
import jwt
import pytest

from apex_testkit import Platform, RedisNamespace, eventually
from auth_tests.access import (
    ROLE_PERMISSIONS,
    AccessAdmin,
    context_token,
    introspect,
    is_allowed,
    my_permissions,
)
from auth_tests.client import AuthAdmin, KeyUser, Tokens, error_of, exchange, login
from auth_tests.events import AuthEvents

ALL_COMPONENTS = pytest.mark.bvj(
    segment="platform", goal="Auth integration: every component works together", mrr=14000,
    scenario="004#9",
)  # fmt: skip
CHAIN = pytest.mark.bvj(
    segment="platform", goal="Cache invalidation chain: no stale grants anywhere", mrr=5000,
    scenario="004#12",
)  # fmt: skip


def _verify(token: str, jwks: dict[str, object], audience: str) -> dict[str, object]:
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id == kid)
    claims: dict[str, object] = jwt.decode(
        token, key.key, algorithms=["RS256"], audience=audience, issuer="apex-auth"
    )
    return claims


async def _every_door(
    client: httpx.AsyncClient, tokens: Tokens
) -> dict[str, tuple[int, str | None]]:
    """What each authenticated route answers for these tokens."""
    calls = {
        "me": client.get("/me", headers=tokens.bearer),
        "permissions": client.get("/me/permissions", headers=tokens.bearer),
        "quota": client.get("/me/quota", headers=tokens.bearer),
        "sessions": client.get("/sessions", headers=tokens.bearer),
        "authz": client.post(
            "/authz/check", json={"permission": "agents:run"}, headers=tokens.bearer
        ),
        "context": client.post(
            "/auth/context-token", json={"audience": "agents"}, headers=tokens.bearer
        ),
        "refresh": client.post("/auth/refresh", json={"refresh_token": tokens.refresh}),
    }
    answers = {}
    for name, call in calls.items():
        response = await call
        code = None if response.status_code < 400 else error_of(response)
        answers[name] = (response.status_code, code)
    return answers


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@ALL_COMPONENTS
async def test_key_to_token_to_permissions_to_context_then_revocation_closes_every_door(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    access_admin: AccessAdmin,
    resource_server: KeyUser,
) -> None:
    tenant = str(uuid.uuid4())
    owner = await auth_admin.key_user(tier="enterprise", tenant_id=tenant)
    team = await access_admin.create_team(tenant_id=tenant)
    await access_admin.set_member(team["id"], owner.user_id, "admin")
    jwks = (await auth_client.get("/.well-known/jwks.json")).json()

    tokens = await login(auth_client, owner.api_key)
    me = await auth_client.get("/me", headers=tokens.bearer)
    assert me.status_code == 200, me.text
    assert (me.json()["user_id"], me.json()["tenant_id"]) == (owner.user_id, tenant)
    assert "X-RateLimit-Limit" in me.headers
    assert "X-RateLimit-Remaining" in me.headers
    assert await my_permissions(auth_client, tokens) == sorted(ROLE_PERMISSIONS["admin"])
    assert await is_allowed(auth_client, tokens, "billing:write")
    downstream = await context_token(auth_client, tokens, "agents")
    claims = _verify(downstream, jwks, "agents")
    assert (claims["sub"], claims["tid"], claims["sid"]) == (
        owner.user_id,
        tenant,
        tokens.session_id,
    )
    assert claims["perms"] == sorted(ROLE_PERMISSIONS["admin"])
    assert (await introspect(auth_client, downstream, caller=resource_server))["active"] is True
    assert all(status < 400 for status, _ in (await _every_door(auth_client, tokens)).values())

    # The refresh above rotated the pair; take a fresh session to revoke.
    tokens = await login(auth_client, owner.api_key)
    downstream = await context_token(auth_client, tokens, "agents")
    await auth_admin.revoke_api_key(owner.key_id)

    doors = await _every_door(auth_client, tokens)
    for door, (status, code) in doors.items():
        assert status == 401, f"{door} still open after the key was revoked: {status} {code}"
    assert doors["me"] == (401, "session_revoked")
    assert (await introspect(auth_client, downstream, caller=resource_server))["active"] is False
    again = await exchange(auth_client, owner.api_key)
    assert (again.status_code, error_of(again)) == (401, "invalid_api_key")
    actions = [e["action"] for e in await auth_admin.audit(owner.key_id)]
    assert "api_key.revoked" in actions, actions
    assert "session.revoked" in actions, actions


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@ALL_COMPONENTS
async def test_a_logout_closes_every_door_of_that_session_only(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    access_admin: AccessAdmin,
    resource_server: KeyUser,
) -> None:
    owner = await auth_admin.key_user()
    team = await access_admin.create_team()
    await access_admin.set_member(team["id"], owner.user_id, "member")
    gone = await login(auth_client, owner.api_key)
    kept = await login(auth_client, owner.api_key)
    downstream = await context_token(auth_client, gone, "agents")

    assert (await auth_client.post("/auth/logout", headers=gone.bearer)).status_code == 204

    for door, (status, _) in (await _every_door(auth_client, gone)).items():
        assert status == 401, f"{door} open after logout"
    assert (await introspect(auth_client, downstream, caller=resource_server))["active"] is False
    assert await is_allowed(auth_client, kept, "agents:run"), "the other session was touched"


@pytest.mark.L2
@pytest.mark.L3
@CHAIN
async def test_a_grant_change_travels_redis_pub_sub_and_the_other_instances_memory(
    clean_platform: Platform,
    admin_token: str,
    redis_namespace: RedisNamespace,
    auth_events: AuthEvents,
) -> None:
    redis = redis_namespace.client()
    async with (
        clean_platform.client("auth", instance=0) as first,
        clean_platform.client("auth", instance=1) as second,
    ):
        access = AccessAdmin(AuthAdmin(first, admin_token))
        org = await access.create_team()
        squad = await access.create_team(parent_id=org["id"])
        admin = AuthAdmin(first, admin_token)
        affected = await admin.key_user()
        bystander = await admin.key_user()
        await access.set_member(squad["id"], affected.user_id, "viewer")
        await access.set_member(squad["id"], bystander.user_id, "viewer")
        tokens = await login(second, affected.api_key)
        others = await login(second, bystander.api_key)
        outsider = await admin.key_user()
        await access.grant_user(outsider.user_id, "agents:read")
        outsider_tokens = await login(second, outsider.api_key)
        # Warm every cache: instance B's memory and Redis.
        assert not await is_allowed(second, tokens, "models:deploy")
        assert not await is_allowed(second, others, "models:deploy")
        assert await is_allowed(second, outsider_tokens, "agents:read")
        key = f"{redis_namespace.prefix}perm:{affected.user_id}"
        outsider_key = f"{redis_namespace.prefix}perm:{outsider.user_id}"
        assert redis.exists(key) == 1
        assert redis.exists(outsider_key) == 1
        await auth_events.forget()

        await access.grant_team(org["id"], "models:deploy")  # through instance A, two levels up

        # Hop 1: Redis no longer holds the old answer (done before the admin call returned).
        assert redis.exists(key) == 0, "perm:<uid> survived the change"
        assert redis.exists(outsider_key) == 1, "an unaffected user's cache entry was dropped"
        # Hop 2: the change was announced to every instance.
        event = await auth_events.wait_for(
            lambda e: (
                e.get("type") == "permissions.changed"
                and {affected.user_id, bystander.user_id} <= set(e.get("user_ids") or [])
            )
        )
        assert outsider.user_id not in event["user_ids"]

        # Hop 3: instance B dropped its memory and answers anew.
        async def seen_by_b() -> bool:
            return await is_allowed(second, tokens, "models:deploy")

        # A deadline, not a bound (how fast: test_permission_bench); far below the 300 s TTL.
        await eventually(seen_by_b, timeout=30, message="instance B to drop its cached answer")
        assert await is_allowed(second, others, "models:deploy")
        assert "models:deploy" in await my_permissions(second, tokens)
        assert redis.exists(key) == 1, "the fresh answer is cached again"
