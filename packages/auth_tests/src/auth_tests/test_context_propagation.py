"""User context across services: 001#2 multi-service token propagation, 001#8 user context.

A service that acts for a user asks auth for a context token (`POST /auth/context-token
{audience}`): a short-lived JWT for ONE downstream service, signed with auth's key (JWKS),
typ "apex-context+jwt", carrying who the user is (sub, tid, tier, sid, azp) and what they
may do (perms). The downstream verifies it offline against the JWKS with its own name as the
audience; whether the session still lives it asks `POST /auth/context-token/introspect`.
The downstream here is this test: pyjwt and the JWKS, as any other team's service would.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest

from apex_testkit import Platform, eventually
from auth_tests.access import (
    ROLE_PERMISSIONS,
    AccessAdmin,
    context_token,
    introspect,
    my_permissions,
)
from auth_tests.client import AuthAdmin, KeyUser, Tokens, error_of, login

PROPAGATION = pytest.mark.bvj(
    segment="enterprise", goal="SOC2: every service sees the same verified identity",
    mrr=20000, scenario="001#2",
)  # fmt: skip
CONTEXT = pytest.mark.bvj(
    segment="platform", goal="Consistent identity: context forwarding, enrichment, validation",
    mrr=9000, scenario="001#8",
)  # fmt: skip
ISSUER = "apex-auth"  # APEX_JWT_ISSUER's default, as the existing JWKS test assumes


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return json.loads(_unb64(header)), json.loads(_unb64(payload))


async def jwks_of(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200, response.text
    keys: dict[str, Any] = response.json()
    return keys


def verify_downstream(token: str, jwks: dict[str, Any], audience: str) -> dict[str, Any]:
    """What a downstream service does: RS256 only, key by kid from the JWKS, its own
    name as the audience, every identity claim required."""
    header = jwt.get_unverified_header(token)
    keys = [k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id == header.get("kid")]
    if not keys:
        raise jwt.InvalidTokenError(f"unknown kid {header.get('kid')!r}")
    claims: dict[str, Any] = jwt.decode(
        token,
        keys[0].key,
        algorithms=["RS256"],
        audience=audience,
        issuer=ISSUER,
        options={"require": ["exp", "iss", "aud", "sub", "sid", "jti"]},
    )
    return claims


async def _tenant_member(
    client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> tuple[KeyUser, Tokens, str]:
    tenant = str(uuid.uuid4())
    user = await auth_admin.key_user(tier="enterprise", tenant_id=tenant)
    team = await access_admin.create_team()
    await access_admin.set_member(team["id"], user.user_id, "member")
    await access_admin.grant_team(team["id"], "reports:export")
    return user, await login(client, user.api_key), tenant


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@CONTEXT
async def test_a_context_token_carries_the_users_identity_and_permissions(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    user, tokens, tenant = await _tenant_member(auth_client, auth_admin, access_admin)

    response = await auth_client.post(
        "/auth/context-token", json={"audience": "agents"}, headers=tokens.bearer
    )
    assert response.status_code == 200, response.text
    body = response.json()
    header, _ = unverified(body["context_token"])
    claims = verify_downstream(body["context_token"], await jwks_of(auth_client), "agents")

    assert header["alg"] == "RS256"
    assert header["typ"] == "apex-context+jwt", "must not pass for an access token"
    assert claims["aud"] in ("agents", ["agents"])
    assert claims["sub"] == user.user_id
    assert claims["tid"] == tenant
    assert claims["tier"] == "enterprise"
    assert claims["sid"] == tokens.session_id
    assert claims["azp"] == tokens.session_id
    assert claims["perms"] == sorted([*ROLE_PERMISSIONS["member"], "reports:export"])
    assert claims["perms"] == await my_permissions(auth_client, tokens)
    assert isinstance(body["expires_in"], int)
    assert 0 < body["expires_in"] <= 3600
    assert 0 < claims["exp"] - time.time() <= body["expires_in"] + 5
    assert "scopes" not in claims or claims["scopes"] == ["agents:run"]


@pytest.mark.L2
@pytest.mark.L3
@CONTEXT
async def test_the_platform_verifier_accepts_exactly_what_a_downstream_should(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    """`apex.common.identity.verify_context_token`, the helper every service uses."""
    from apex.common.identity import (  # noqa: PLC0415 - the SUT's helper
        ContextTokenError,
        verify_context_token,
    )

    user, tokens, _ = await _tenant_member(auth_client, auth_admin, access_admin)
    jwks = await jwks_of(auth_client)
    token = await context_token(auth_client, tokens, "agents")

    claims = verify_context_token(token, jwks, "agents")
    assert claims == verify_downstream(token, jwks, "agents")
    assert claims["sub"] == user.user_id

    for wrong, audience in (
        (token, "billing"),  # another service's audience
        (tokens.access, "apex"),  # an access token is not a context token
        (tokens.access, "agents"),
        (token[:-8] + ("A" * 8 if not token.endswith("A" * 8) else "B" * 8), "agents"),
    ):
        with pytest.raises(ContextTokenError):
            verify_context_token(wrong, jwks, audience)


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@PROPAGATION
async def test_each_service_gets_a_token_only_it_accepts_with_the_same_identity(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    """backend -> agents -> billing: every hop carries the same verified user, and a token
    meant for one service cannot be replayed to another."""
    user, tokens, tenant = await _tenant_member(auth_client, auth_admin, access_admin)
    jwks = await jwks_of(auth_client)
    services = ("agents", "billing", "gateway")
    minted = {service: await context_token(auth_client, tokens, service) for service in services}

    identities = set()
    for service, token in minted.items():
        claims = verify_downstream(token, jwks, service)
        identities.add((claims["sub"], claims["sid"], claims["tid"], claims["tier"]))
        for other in services:
            if other != service:
                with pytest.raises(jwt.InvalidAudienceError):
                    verify_downstream(token, jwks, other)
    assert identities == {(user.user_id, tokens.session_id, tenant, "enterprise")}
    jtis = {unverified(token)[1]["jti"] for token in minted.values()}
    assert len(jtis) == len(services), "every context token has its own jti"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@CONTEXT
async def test_enrichment_is_a_snapshot_of_the_current_permissions(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    user, tokens, _ = await _tenant_member(auth_client, auth_admin, access_admin)
    jwks = await jwks_of(auth_client)
    before = await context_token(auth_client, tokens, "agents")

    await access_admin.grant_user(user.user_id, "billing:write")
    await access_admin.grant_user(user.user_id, "reports:export", "deny")
    after = await context_token(auth_client, tokens, "agents")

    old = verify_downstream(before, jwks, "agents")["perms"]
    new = verify_downstream(after, jwks, "agents")["perms"]
    assert "billing:write" not in old
    assert "reports:export" in old
    assert "billing:write" in new, "a new context token did not pick up the grant"
    assert "reports:export" not in new, "a new context token did not pick up the deny"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@CONTEXT
@pytest.mark.parametrize(
    "change",
    [{"perms": ["teams:manage", "billing:write"]}, {"sub": "someone-else"},
     {"tid": "00000000-0000-0000-0000-000000000001"}, {"aud": "billing"}, {"exp": 4_000_000_000}],
    ids=["escalated-perms", "other-user", "other-tenant", "other-audience", "longer-life"],
)  # fmt: skip
async def test_a_tampered_context_token_is_refused_downstream_and_by_introspection(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    access_admin: AccessAdmin,
    change: dict[str, Any],
    resource_server: KeyUser,
) -> None:
    _, tokens, _ = await _tenant_member(auth_client, auth_admin, access_admin)
    token = await context_token(auth_client, tokens, "agents")
    header_part, _, signature = token.split(".")
    claims = {**unverified(token)[1], **change}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    forged = f"{header_part}.{payload}.{signature}"

    with pytest.raises(jwt.InvalidSignatureError):
        verify_downstream(forged, await jwks_of(auth_client), str(claims["aud"]))
    assert (await introspect(auth_client, forged, caller=resource_server))["active"] is False
    assert (await introspect(auth_client, token, caller=resource_server))["active"] is True, (
        "the genuine one is fine"
    )


@pytest.mark.L2
@pytest.mark.L3
@CONTEXT
async def test_context_tokens_expire_after_their_ttl(
    clean_platform: Platform, admin_token: str
) -> None:
    async with clean_platform.client("auth", APEX_CONTEXT_TOKEN_TTL="1") as client:
        admin = AuthAdmin(client, admin_token)
        user, downstream = await admin.key_user(), await admin.key_user()
        tokens = await login(client, user.api_key)
        response = await client.post(
            "/auth/context-token", json={"audience": "agents"}, headers=tokens.bearer
        )
        assert response.status_code == 200, response.text
        assert response.json()["expires_in"] == 1
        token = response.json()["context_token"]
        jwks = await jwks_of(client)
        claims = unverified(token)[1]
        assert claims["exp"] - time.time() <= 1.5

        async def expired() -> bool:
            try:
                verify_downstream(token, jwks, "agents")
            except jwt.ExpiredSignatureError:
                return True
            return False

        await eventually(expired, timeout=5, message="a 1 s context token to expire")
        assert (await introspect(client, token, caller=downstream))["active"] is False
        # The session itself lives on: a fresh context token is valid.
        fresh = await context_token(client, tokens, "agents")
        assert (await introspect(client, fresh, caller=downstream))["active"] is True


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@PROPAGATION
async def test_a_revoked_session_makes_its_context_tokens_inactive(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    access_admin: AccessAdmin,
    resource_server: KeyUser,
) -> None:
    user, tokens, _ = await _tenant_member(auth_client, auth_admin, access_admin)
    other_session = await login(auth_client, user.api_key)
    token = await context_token(auth_client, tokens, "agents")
    survivor = await context_token(auth_client, other_session, "agents")

    active = await introspect(auth_client, token, caller=resource_server)
    assert active["active"] is True
    assert active["sub"] == user.user_id
    assert active["sid"] == tokens.session_id
    assert active["aud"] in ("agents", ["agents"])

    assert (await auth_client.post("/auth/logout", headers=tokens.bearer)).status_code == 204

    inactive = await introspect(auth_client, token, caller=resource_server)
    assert inactive["active"] is False
    assert not {"sub", "sid", "tid", "perms"} & set(inactive), (
        f"an inactive token's claims leak (RFC 7662 2.2): {inactive}"
    )
    assert (await introspect(auth_client, survivor, caller=resource_server))["active"] is True, (
        "other session unharmed"
    )
    again = await auth_client.post(
        "/auth/context-token", json={"audience": "agents"}, headers=tokens.bearer
    )
    assert (again.status_code, error_of(again)) == (401, "session_revoked")


@pytest.mark.L2
@pytest.mark.L3
@PROPAGATION
async def test_a_revocation_through_one_instance_is_seen_by_anothers_introspection(
    auth_client: httpx.AsyncClient,
    other_instance: httpx.AsyncClient,
    key_user: KeyUser,
    resource_server: KeyUser,
) -> None:
    tokens = await login(auth_client, key_user.api_key)
    token = await context_token(auth_client, tokens, "agents")
    assert (await introspect(other_instance, token, caller=resource_server))["active"] is True

    deleted = await other_instance.delete(f"/sessions/{tokens.session_id}", headers=tokens.bearer)
    assert deleted.status_code == 204

    assert (await introspect(auth_client, token, caller=resource_server))["active"] is False
    assert (await introspect(other_instance, token, caller=resource_server))["active"] is False


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@CONTEXT
@pytest.mark.parametrize(
    "body", [{}, {"audience": ""}, {"audience": 7}, {"audience": None}, {"audience": "a" * 5000},
             {"audience": ["agents", "billing"]}],
    ids=["missing", "empty", "number", "null", "huge", "list"],
)  # fmt: skip
async def test_bad_context_token_requests_are_4xx_not_500(
    auth_client: httpx.AsyncClient, key_user: KeyUser, body: dict[str, Any]
) -> None:
    tokens = await login(auth_client, key_user.api_key)
    response = await auth_client.post("/auth/context-token", json=body, headers=tokens.bearer)
    assert (response.status_code, error_of(response)) == (422, "invalid_request")


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@CONTEXT
@pytest.mark.parametrize(
    "authorization", [None, "Bearer", "Bearer not.a.jwt", "Basic dXNlcjpwYXNz"]
)
async def test_a_context_token_needs_a_valid_access_token(
    auth_client: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await auth_client.post(
        "/auth/context-token", json={"audience": "agents"}, headers=headers
    )
    assert response.status_code == 401, response.text
    assert error_of(response) == "invalid_token"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@CONTEXT
@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * 5000])
async def test_introspecting_garbage_says_inactive_not_500(
    auth_client: httpx.AsyncClient, resource_server: KeyUser, token: str
) -> None:
    """RFC 7662 section 2.2: a token that is not active is only `{"active": false}`."""
    assert await introspect(auth_client, token, caller=resource_server) == {"active": False}
