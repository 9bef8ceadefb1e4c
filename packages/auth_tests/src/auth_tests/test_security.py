"""Security set across the authorization surface: cross-tenant access, forged context tokens
(alg none, HS/RS key confusion, foreign keys), token-type confusion, refresh-token reuse
revoking the whole family, and the admin API without its token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from apex_testkit import rsa_key
from auth_tests.access import AccessAdmin, context_token, introspect, my_permissions
from auth_tests.client import AuthAdmin, KeyUser, Tokens, error_of, login

CROSS_TENANT = pytest.mark.bvj(
    segment="enterprise", goal="Enterprise security: no cross-tenant access",
    mrr=200000, scenario="003:multi-tenant config isolation",
)  # fmt: skip
CONTEXT = pytest.mark.bvj(
    segment="platform", goal="Forged user context never passes a downstream service",
    mrr=9000, scenario="001#8",
)  # fmt: skip
SESSIONS = pytest.mark.bvj(
    segment="platform", goal="Stolen refresh tokens are caught and the session family dies",
    mrr=75000, scenario="002#4",
)  # fmt: skip
ADMIN = pytest.mark.bvj(
    segment="enterprise", goal="Only the admin token changes roles and grants", mrr=10000,
    scenario="001#4",
)  # fmt: skip
EVERY_LEVEL = [pytest.mark.L2, pytest.mark.L3, pytest.mark.L4]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encode(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj).encode())


async def _jwks(client: httpx.AsyncClient) -> dict[str, Any]:
    keys: dict[str, Any] = (await client.get("/.well-known/jwks.json")).json()
    return keys


def _public_pem(jwks: dict[str, Any]) -> bytes:
    key = jwt.PyJWKSet.from_dict(jwks).keys[0].key
    pem: bytes = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


def _downstream_accepts(token: str, jwks: dict[str, Any], audience: str) -> bool:
    """A downstream service's verification (RS256 only, key by kid, audience pinned)."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        keys = [k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id == kid]
        if not keys:
            return False
        jwt.decode(token, keys[0].key, algorithms=["RS256"], audience=audience, issuer="apex-auth")
    except jwt.PyJWTError:
        return False
    return True


def _context_forgeries(token: str, jwks: dict[str, Any]) -> dict[str, str]:
    """Context tokens anyone could make from a genuine one and the public JWKS, each
    claiming more than the genuine one does."""
    header_part, payload_part, _ = token.split(".")
    header = json.loads(_unb64(header_part))
    claims = json.loads(_unb64(payload_part))
    greedy = {**claims, "perms": [*claims.get("perms", []), "billing:write", "teams:manage"]}
    foreign = rsa_key("foreign")
    hs_input = f"{_encode({**header, 'alg': 'HS256'})}.{_encode(greedy)}"
    hs_signature = _b64(hmac.new(_public_pem(jwks), hs_input.encode(), hashlib.sha256).digest())
    return {
        "alg-none": f"{_encode({**header, 'alg': 'none'})}.{_encode(greedy)}.",
        "alg-none-uppercase": f"{_encode({**header, 'alg': 'NONE'})}.{_encode(greedy)}.",
        "hs256-keyed-with-the-public-key": f"{hs_input}.{hs_signature}",
        "foreign-key-same-kid": jwt.encode(
            greedy, foreign, algorithm="RS256", headers={"kid": header["kid"], "typ": header["typ"]}
        ),
        "foreign-key-embedded-jwk": jwt.encode(
            greedy,
            foreign,
            algorithm="RS256",
            headers={
                "typ": header["typ"],
                "jwk": json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(foreign.public_key())),
            },
        ),
    }


FORGERIES = [
    "alg-none", "alg-none-uppercase", "hs256-keyed-with-the-public-key", "foreign-key-same-kid",
    "foreign-key-embedded-jwk",
]  # fmt: skip


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@CONTEXT
@pytest.mark.parametrize("forgery", FORGERIES)
async def test_forged_context_tokens_are_refused_downstream_and_by_introspection(
    auth_client: httpx.AsyncClient,
    key_user: KeyUser,
    forgery: str,
    resource_server: KeyUser,
) -> None:
    tokens = await login(auth_client, key_user.api_key)
    genuine = await context_token(auth_client, tokens, "agents")
    jwks = await _jwks(auth_client)
    forged = _context_forgeries(genuine, jwks)[forgery]

    assert _downstream_accepts(genuine, jwks, "agents"), "control: the genuine token passes"
    assert not _downstream_accepts(forged, jwks, "agents")
    assert (await introspect(auth_client, forged, caller=resource_server))["active"] is False
    me = await auth_client.get("/me", headers={"Authorization": f"Bearer {forged}"})
    assert (me.status_code, error_of(me)) == (401, "invalid_token")


@pytest.mark.L2
@pytest.mark.L3
@CONTEXT
@pytest.mark.parametrize("forgery", FORGERIES)
async def test_the_platform_verifier_refuses_forged_context_tokens(
    auth_client: httpx.AsyncClient, key_user: KeyUser, forgery: str
) -> None:
    from apex.common.identity import (  # noqa: PLC0415 - the SUT's helper
        ContextTokenError,
        verify_context_token,
    )

    tokens = await login(auth_client, key_user.api_key)
    genuine = await context_token(auth_client, tokens, "agents")
    jwks = await _jwks(auth_client)
    assert verify_context_token(genuine, jwks, "agents")["sub"] == key_user.user_id

    with pytest.raises(ContextTokenError):
        verify_context_token(_context_forgeries(genuine, jwks)[forgery], jwks, "agents")


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@CONTEXT
async def test_context_tokens_and_access_tokens_cannot_stand_in_for_each_other(
    auth_client: httpx.AsyncClient,
    key_user: KeyUser,
    resource_server: KeyUser,
) -> None:
    tokens = await login(auth_client, key_user.api_key)
    for_agents = await context_token(auth_client, tokens, "agents")

    # A context token presented as an access token.
    me = await auth_client.get("/me", headers={"Authorization": f"Bearer {for_agents}"})
    assert me.status_code == 401, me.text
    # One minted for the platform's own audience must not work as an access token either.
    # CONTRACT3 notes: an audience equal to APEX_JWT_AUDIENCE is refused (422).
    response = await auth_client.post(
        "/auth/context-token", json={"audience": "apex"}, headers=tokens.bearer
    )
    assert (response.status_code, error_of(response)) == (422, "invalid_request")
    # An access token presented where a context token is expected.
    assert (await introspect(auth_client, tokens.access, caller=resource_server))["active"] is False


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@CROSS_TENANT
async def test_a_user_of_one_tenant_reaches_nothing_of_another(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin
) -> None:
    tenant_a, tenant_b = str(uuid.uuid4()), str(uuid.uuid4())
    alice_key = await auth_admin.key_user(tenant_id=tenant_a)
    bob_key = await auth_admin.key_user(tenant_id=tenant_b)
    alice = await login(auth_client, alice_key.api_key)
    bob = await login(auth_client, bob_key.api_key)
    put = await auth_client.put(
        f"/tenants/{tenant_b}/settings/api.endpoint", json={"value": "https://b"},
        headers=bob.bearer,
    )  # fmt: skip
    assert put.status_code < 300, put.text

    probes = [
        await auth_client.get(f"/tenants/{tenant_b}/settings", headers=alice.bearer),
        await auth_client.get(f"/tenants/{tenant_b}/settings/api.endpoint", headers=alice.bearer),
        await auth_client.put(
            f"/tenants/{tenant_b}/settings/api.endpoint", json={"value": "https://evil"},
            headers=alice.bearer,
        ),
        await auth_client.delete(f"/sessions/{bob.session_id}", headers=alice.bearer),
    ]  # fmt: skip
    for response in probes:
        assert (response.status_code, error_of(response)) == (404, "not_found"), (
            f"{response.request.method} {response.request.url.path}: {response.text}"
        )
    # A context token names the tenant it was minted for, and only that one.
    claims = jwt.decode(
        await context_token(auth_client, alice, "agents"), options={"verify_signature": False}
    )
    assert claims["tid"] == tenant_a
    assert (await auth_client.get("/me", headers=bob.bearer)).status_code == 200
    value = await auth_client.get(f"/tenants/{tenant_b}/settings/api.endpoint", headers=bob.bearer)
    assert value.json()["value"] == "https://b"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@SESSIONS
async def test_refresh_token_reuse_revokes_the_whole_family(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    key_user: KeyUser,
    resource_server: KeyUser,
) -> None:
    first = await login(auth_client, key_user.api_key)
    family = [first]
    for _ in range(3):
        family.append(
            Tokens.of(
                await auth_client.post("/auth/refresh", json={"refresh_token": family[-1].refresh})
            )
        )
    newest = family[-1]
    downstream = await context_token(auth_client, newest, "agents")
    bystander = await login(auth_client, key_user.api_key)

    stolen = await auth_client.post("/auth/refresh", json={"refresh_token": family[1].refresh})
    assert (stolen.status_code, error_of(stolen)) == (401, "refresh_reused")

    for member in family:
        me = await auth_client.get("/me", headers=member.bearer)
        assert (me.status_code, error_of(me)) == (401, "session_revoked")
    dead = await auth_client.post("/auth/refresh", json={"refresh_token": newest.refresh})
    assert dead.status_code == 401, "the newest refresh token of the family still works"
    assert (await introspect(auth_client, downstream, caller=resource_server))["active"] is False
    assert (await auth_client.get("/me", headers=bystander.bearer)).status_code == 200
    revocations = [
        e for e in await auth_admin.audit(key_user.key_id) if e["action"] == "session.revoked"
    ]
    assert any(
        e["detail"].get("session_id") == first.session_id
        and e["detail"].get("reason") == "refresh_reused"
        for e in revocations
    ), revocations


ADMIN_CALLS = [
    ("POST", "/admin/teams", {"name": "x"}),
    ("GET", "/admin/teams/{team}", None),
    ("DELETE", "/admin/teams/{team}", None),
    ("PUT", "/admin/teams/{team}/members/{user}", {"role": "admin"}),
    ("DELETE", "/admin/teams/{team}/members/{user}", None),
    ("PUT", "/admin/teams/{team}/grants/teams:manage", {"effect": "allow"}),
    ("DELETE", "/admin/teams/{team}/grants/agents:read", None),
    ("PUT", "/admin/users/{user}/grants/billing:write", {"effect": "allow"}),
    ("DELETE", "/admin/users/{user}/grants/agents:read", None),
    ("GET", "/admin/users/{user}/permissions", None),
    ("PATCH", "/admin/users/{user}", {"tier": "enterprise"}),
    ("POST", "/admin/users", {"email": "x@tests.apex.invalid", "tier": "free"}),
]


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@ADMIN
@pytest.mark.parametrize("credential", ["none", "user-access-token", "wrong-token"])
async def test_the_admin_api_refuses_anyone_without_the_admin_token(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    access_admin: AccessAdmin,
    credential: str,
) -> None:
    team = await access_admin.create_team()
    user = await auth_admin.key_user(tier="free")
    await access_admin.set_member(team["id"], user.user_id, "viewer")
    tokens = await login(auth_client, user.api_key)
    headers = {
        "none": {},
        "user-access-token": tokens.bearer,
        "wrong-token": {"Authorization": f"Bearer {uuid.uuid4().hex}"},
    }[credential]

    for method, template, body in ADMIN_CALLS:
        path = template.format(team=team["id"], user=user.user_id)
        response = await auth_client.request(method, path, json=body, headers=headers)
        assert (response.status_code, error_of(response)) == (401, "invalid_token"), (
            f"{method} {path} with {credential}: {response.status_code} {response.text}"
        )

    # Nothing of it happened: the user is still a free viewer in an existing team.
    assert await my_permissions(auth_client, tokens) == ["agents:read", "billing:read"]
    assert await access_admin.permissions(user.user_id) == ["agents:read", "billing:read"]
    quota = await auth_client.get("/me/quota", headers=tokens.bearer)
    assert quota.json()["tier"] == "free"
