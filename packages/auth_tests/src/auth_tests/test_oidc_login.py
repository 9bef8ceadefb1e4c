"""001#1 OAuth to JWT: the OIDC authorization-code login (PKCE S256, state, nonce) against the
`fake_idp` provider, the platform JWT it ends in (verified by a downstream service that knows
only the published JWKS), every way the flow must fail, IdP key rotation, and JIT provisioning
with IdP groups mapped to teams (and synced again on every login).

The WebSocket leg of 001#1 (the JWT opening a WebSocket) belongs to the gateway issue
(ws_tests, 001#26 / 004#3) and is not tested here.

The flows run at L4 too, against the target's IdP sandbox (`[sandboxes.oidc]`), except
those that read the database, reconfigure auth or start instances (L2/L3 only).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import jwt
import pytest

from apex_testkit import FakeIdp, Platform
from auth_tests.access import AccessAdmin
from auth_tests.client import (
    AuthAdmin,
    JwksVerifier,
    KeyUser,
    Tokens,
    error_of,
    idp_email,
    login,
    me,
)
from auth_tests.flows import (
    create_password_user,
    enroll_totp,
    oidc_authorize,
    oidc_callback,
    oidc_login,
    oidc_start,
    query_of,
)

BVJ = pytest.mark.bvj(
    segment="enterprise", goal="Single sign-on: IdP login ends in a platform JWT, never a breach",
    mrr=15000, scenario="001#1",
)  # fmt: skip
pytestmark = [BVJ]
FAKES = [pytest.mark.L2, pytest.mark.L3]


def _calls(idp: FakeIdp, path: str) -> int:
    return sum(1 for r in idp.requests if r.path == path)


async def _user_count(db: asyncpg.Connection, email: str) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM users WHERE email = $1", email)
    return count


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_login_redirects_with_pkce_state_and_nonce(
    auth_client: httpx.AsyncClient,
    fake_idp: FakeIdp,
) -> None:
    first, second = query_of(await oidc_start(auth_client)), query_of(await oidc_start(auth_client))
    location = await oidc_start(auth_client)

    assert location.startswith(f"{fake_idp.issuer}/authorize?")
    assert first["response_type"] == "code"
    assert first["client_id"] == fake_idp.client_id
    assert urlsplit(first["redirect_uri"]).path == "/auth/oidc/callback"
    assert set(first["scope"].split()) == {"openid", "email", "profile", "groups"}
    assert first["code_challenge_method"] == "S256"
    assert len(first["code_challenge"]) == 43, "base64url of a SHA-256, no padding"
    for name in ("state", "nonce", "code_challenge"):
        assert first[name] != second[name], f"{name} must be fresh per login"
        assert len(first[name]) >= 16, f"{name} too short to be unguessable"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_oidc_login_ends_in_a_jwt_a_downstream_service_verifies_through_jwks(
    auth_client: httpx.AsyncClient,
    fake_idp: FakeIdp,
    email_domain: str,
) -> None:
    email = idp_email(email_domain)
    response = await oidc_login(auth_client, fake_idp, email=email)
    tokens = Tokens.of(response)

    claims = await JwksVerifier(auth_client).verify(tokens.access)

    assert claims["sub"] == response.json()["user_id"]
    assert claims["sid"] == tokens.session_id
    assert claims["amr"] == ["oidc"]
    profile = (await me(auth_client, tokens.access)).json()
    assert (profile["email"], profile["auth_method"], profile["mfa"]) == (email, "oidc", False)
    assert profile["api_key_id"] is None
    # The code exchange used PKCE: the verifier the platform sent hashes to the challenge
    # it put in the authorization request, and the client authenticated itself.
    authorize = next(r for r in fake_idp.requests if r.path == "/authorize")
    token = next(r for r in fake_idp.requests if r.path == "/token")
    verifier = token.form["code_verifier"]
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert digest.decode() == authorize.params["code_challenge"]
    assert token.form["grant_type"] == "authorization_code"
    assert token.form["redirect_uri"] == authorize.params["redirect_uri"]
    assert token.status == 200


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_the_oidc_session_refreshes_and_logs_out_like_any_other(
    auth_client: httpx.AsyncClient,
    fake_idp: FakeIdp,
    email_domain: str,
) -> None:
    tokens = Tokens.of(await oidc_login(auth_client, fake_idp, email=idp_email(email_domain)))

    renewed = Tokens.of(
        await auth_client.post("/auth/refresh", json={"refresh_token": tokens.refresh})
    )
    sessions = (await auth_client.get("/sessions", headers=renewed.bearer)).json()["sessions"]
    assert [(s["session_id"], s["method"]) for s in sessions] == [(tokens.session_id, "oidc")]
    assert (await auth_client.post("/auth/logout", headers=renewed.bearer)).status_code == 204
    assert (await me(auth_client, renewed.access)).status_code == 401


# -- failures of the flow ----------------------------------------------------------------


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.parametrize(
    "state", ["", "unknown-state", "x" * 2000], ids=["empty", "unknown", "huge"]
)
@pytest.mark.L4
async def test_an_unknown_state_is_refused(
    auth_client: httpx.AsyncClient,
    fake_idp: FakeIdp,
    state: str,
    email_domain: str,
) -> None:
    fake_idp.login_as(uuid.uuid4().hex, idp_email(email_domain))
    back = await oidc_authorize(await oidc_start(auth_client))

    response = await oidc_callback(auth_client, back["code"], state)

    if len(state) > 256:  # SUT notes: longer than any state, refused as input
        assert (response.status_code, error_of(response)) == (422, "invalid_request")
    else:
        assert (response.status_code, error_of(response)) == (400, "invalid_state")
    assert _calls(fake_idp, "/token") == 0, "the code was redeemed without a valid state"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.parametrize("params", [{}, {"state": "s"}, {"code": "c"}])
@pytest.mark.L4
async def test_a_callback_without_code_or_state_is_not_a_500(
    auth_client: httpx.AsyncClient,
    params: dict[str, str],
) -> None:
    """SUT notes: the state is checked first; a missing or unknown one is `invalid_state`."""
    response = await auth_client.get("/auth/oidc/callback", params=params)
    assert (response.status_code, error_of(response)) == (400, "invalid_state")


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_an_idp_error_on_the_callback_is_refused(
    auth_client: httpx.AsyncClient,
    fake_idp: FakeIdp,
) -> None:
    """The user denied consent: the IdP sends error=access_denied instead of a code, to the
    browser that started the login (its state is valid)."""
    state = query_of(await oidc_start(auth_client))["state"]

    response = await oidc_callback(auth_client, None, state, error="access_denied")

    assert (response.status_code, error_of(response)) == (401, "idp_error")
    assert "access_token" not in response.text
    assert _calls(fake_idp, "/token") == 0, "nothing to redeem"
    replay = await oidc_callback(auth_client, "some-code", state)
    assert (replay.status_code, error_of(replay)) == (400, "invalid_state"), "state spent"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_state_is_single_use(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_idp: FakeIdp,
    email_domain: str,
) -> None:
    fake_idp.login_as(uuid.uuid4().hex, idp_email(email_domain))
    back = await oidc_authorize(await oidc_start(auth_client))
    first = await oidc_callback(auth_client, back["code"], back["state"])
    user_id = first.json()["user_id"]
    assert await auth_admin.logins(user_id) == [Tokens.of(first).session_id]

    replay = await oidc_callback(auth_client, back["code"], back["state"])

    assert (replay.status_code, error_of(replay)) == (400, "invalid_state")
    assert _calls(fake_idp, "/token") == 1
    assert await auth_admin.logins(user_id) == [Tokens.of(first).session_id], "a second session"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_a_reused_code_is_refused_by_the_idp_and_by_us(
    auth_client: httpx.AsyncClient,
    fake_idp: FakeIdp,
    email_domain: str,
) -> None:
    fake_idp.login_as(uuid.uuid4().hex, idp_email(email_domain))
    back = await oidc_authorize(await oidc_start(auth_client))
    assert (await oidc_callback(auth_client, back["code"], back["state"])).status_code == 200
    fresh_state = query_of(await oidc_start(auth_client))["state"]

    replay = await oidc_callback(auth_client, back["code"], fresh_state)

    assert (replay.status_code, error_of(replay)) == (401, "idp_error")
    assert [r.status for r in fake_idp.requests if r.path == "/token"] == [200, 400]


@pytest.mark.L2
@pytest.mark.L3
async def test_a_code_injected_into_another_login_fails_pkce(
    auth_client: httpx.AsyncClient,
    fake_idp: FakeIdp,
    auth_db: asyncpg.Connection,
    email_domain: str,
) -> None:
    """An attacker's code pasted into a victim's login: the victim's verifier does not match
    the attacker's challenge, so the IdP refuses the exchange."""
    email = idp_email(email_domain)
    fake_idp.login_as(uuid.uuid4().hex, email)
    attackers = await oidc_authorize(await oidc_start(auth_client))
    victims_state = query_of(await oidc_start(auth_client))["state"]

    response = await oidc_callback(auth_client, attackers["code"], victims_state)

    assert (response.status_code, error_of(response)) == (401, "idp_error")
    assert [r.status for r in fake_idp.requests if r.path == "/token"] == [400]
    assert await _user_count(auth_db, email) == 0, "nobody is provisioned from a failed login"


@pytest.mark.L2
@pytest.mark.L3
async def test_a_token_endpoint_error_is_an_idp_error(
    auth_client: httpx.AsyncClient,
    fake_idp: FakeIdp,
    auth_db: asyncpg.Connection,
    email_domain: str,
) -> None:
    email = idp_email(email_domain)
    fake_idp.fail_next_token("invalid_grant")
    response = await oidc_login(auth_client, fake_idp, email=email)
    assert (response.status_code, error_of(response)) == (401, "idp_error")
    assert await _user_count(auth_db, email) == 0, "nobody is provisioned from a failed login"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.parametrize(
    ("fault", "check"),
    [
        ({"expired": True}, ("exp",)),
        ({"issuer": "https://evil.example"}, ("iss",)),
        ({"audience": "some-other-client"}, ("aud",)),
        ({"bad_signature": True}, ("signature",)),
        ({"alg_none": True}, ("alg", "signature")),
        ({"nonce": "not-the-nonce-we-sent"}, ("nonce",)),
        ({"kid": "no-such-key"}, ("kid", "key", "signature")),
        ({"claims": {"iat": 4_000_000_000}}, ("iat", "issued")),
    ],
    ids=[
        "expired",
        "wrong-iss",
        "wrong-aud",
        "bad-signature",
        "alg-none",
        "nonce-mismatch",
        "unknown-kid",
        "issued-in-the-future",
    ],
)
async def test_a_bad_id_token_is_refused(
    auth_client: httpx.AsyncClient,
    fake_idp: FakeIdp,
    auth_db: asyncpg.Connection,
    fault: dict[str, Any],
    check: tuple[str, ...],
    email_domain: str,
) -> None:
    email = idp_email(email_domain)
    fake_idp.next_id_token(**fault)

    response = await oidc_login(auth_client, fake_idp, email=email)

    assert (response.status_code, error_of(response)) == (401, "invalid_id_token")
    detail = response.json()["detail"].lower()
    assert any(word in detail for word in check), f"detail names the failed check: {detail}"
    assert await _user_count(auth_db, email) == 0, "a user was provisioned from a bad id_token"
    # The fault was for one token only: the next login works.
    assert (
        await oidc_login(auth_client, fake_idp, email=idp_email(email_domain))
    ).status_code == 200


@pytest.mark.L2
@pytest.mark.L3
async def test_a_null_nonce_in_the_id_token_is_refused(
    auth_client: httpx.AsyncClient,
    fake_idp: FakeIdp,
    auth_db: asyncpg.Connection,
    email_domain: str,
) -> None:
    email = idp_email(email_domain)
    fake_idp.next_id_token(claims={"nonce": None})
    response = await oidc_login(auth_client, fake_idp, email=email)
    assert (response.status_code, error_of(response)) == (401, "invalid_id_token")
    assert await _user_count(auth_db, email) == 0, "a user was provisioned from a bad id_token"


@pytest.mark.L2
@pytest.mark.L3
async def test_an_audience_list_needs_us_as_authorized_party(
    auth_client: httpx.AsyncClient,
    fake_idp: FakeIdp,
    auth_db: asyncpg.Connection,
    email_domain: str,
) -> None:
    """aud may be a list containing our client_id; then (OIDC Core 3.1.3.7) azp must name us."""
    both = ["another-client", fake_idp.client_id]
    fake_idp.next_id_token(claims={"aud": both, "azp": fake_idp.client_id})
    assert (
        await oidc_login(auth_client, fake_idp, email=idp_email(email_domain))
    ).status_code == 200

    email = idp_email(email_domain)
    fake_idp.next_id_token(claims={"aud": both, "azp": "another-client"})
    refused = await oidc_login(auth_client, fake_idp, email=email)
    assert (refused.status_code, error_of(refused)) == (401, "invalid_id_token")
    assert await _user_count(auth_db, email) == 0


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_idp_key_rotation_mid_test_is_picked_up_with_one_jwks_fetch(
    auth_client: httpx.AsyncClient,
    fake_idp: FakeIdp,
    email_domain: str,
) -> None:
    assert (
        await oidc_login(auth_client, fake_idp, email=idp_email(email_domain))
    ).status_code == 200
    # The platform may have cached the JWKS before this test (one process serves many).
    fetched = _calls(fake_idp, "/jwks")

    fake_idp.rotate_keys(keep_old=False)
    rotated = await oidc_login(auth_client, fake_idp, email=idp_email(email_domain))

    assert rotated.status_code == 200, rotated.text
    assert _calls(fake_idp, "/jwks") == fetched + 1, "an unknown kid refetches the JWKS once"
    # The new key is now known: no more fetches.
    assert (
        await oidc_login(auth_client, fake_idp, email=idp_email(email_domain))
    ).status_code == 200
    assert _calls(fake_idp, "/jwks") == fetched + 1


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_an_unknown_kid_does_not_make_the_jwks_fetched_in_a_loop(
    auth_client: httpx.AsyncClient,
    fake_idp: FakeIdp,
    email_domain: str,
) -> None:
    assert (
        await oidc_login(auth_client, fake_idp, email=idp_email(email_domain))
    ).status_code == 200
    before = _calls(fake_idp, "/jwks")

    fake_idp.next_id_token(kid="never-published")
    refused = await oidc_login(auth_client, fake_idp, email=idp_email(email_domain))

    assert (refused.status_code, error_of(refused)) == (401, "invalid_id_token")
    assert _calls(fake_idp, "/jwks") - before <= 1


@pytest.mark.L2
@pytest.mark.L3
async def test_an_unreachable_idp_is_a_502(clean_platform: Platform) -> None:
    async with clean_platform.client("auth", APEX_IDP_ISSUER="http://127.0.0.1:9") as client:
        response = await client.get("/auth/oidc/login")
    assert (response.status_code, error_of(response)) == (502, "idp_unavailable")


# -- JIT provisioning and group sync -------------------------------------------------------


async def _admin_user(admin: AuthAdmin, user_id: str) -> dict[str, Any]:
    response = await admin.client.get(f"/admin/users/{user_id}", headers=admin.headers)
    assert response.status_code == 200, response.text
    user: dict[str, Any] = response.json()
    return user


async def _team(admin: AuthAdmin, *, idp_group: str | None = None) -> str:
    """A team (in the run's namespace) that IdP group `idp_group` maps to."""
    team = await AccessAdmin(admin).create_team(idp_group=idp_group)
    return str(team["id"])


async def _grant(admin: AuthAdmin, team_id: str, permission: str) -> None:
    response = await admin.client.put(
        f"/admin/teams/{team_id}/grants/{permission}",
        json={"effect": "allow"},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.text


async def _permissions(admin: AuthAdmin, user_id: str) -> set[str]:
    response = await admin.client.get(f"/admin/users/{user_id}/permissions", headers=admin.headers)
    assert response.status_code == 200, response.text
    return set(response.json()["permissions"])


async def _memberships(db: asyncpg.Connection, user_id: str) -> dict[str, str]:
    rows = await db.fetch(
        "SELECT team_id::text AS team, role FROM team_members WHERE user_id = $1",
        uuid.UUID(user_id),
    )
    return {r["team"]: r["role"] for r in rows}


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_first_login_provisions_a_user_and_later_logins_find_it(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_idp: FakeIdp,
    email_domain: str,
) -> None:
    sub, email = uuid.uuid4().hex, idp_email(email_domain)
    tenant = str(uuid.uuid4())

    first = await oidc_login(auth_client, fake_idp, sub=sub, email=email, tenant=tenant)
    second = await oidc_login(auth_client, fake_idp, sub=sub, email=email, tenant=tenant)

    user_id = first.json()["user_id"]
    assert second.json()["user_id"] == user_id
    assert Tokens.of(first).session_id != Tokens.of(second).session_id
    assert await _admin_user(auth_admin, user_id) == {
        "id": user_id,
        "email": email,
        "tier": "free",
        "tenant_id": tenant,
    }
    created = [e for e in await auth_admin.audit(user_id) if e["action"] == "user.created"]
    assert len(created) == 1


@pytest.mark.L2
@pytest.mark.L3
async def test_the_subject_not_the_email_identifies_the_idp_user(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_idp: FakeIdp,
    auth_db: asyncpg.Connection,
    email_domain: str,
) -> None:
    """Same sub with a changed email: same account, whose address the IdP does not change
    (CONTRACT3 notes). A new sub: a new account."""
    sub = uuid.uuid4().hex
    original, changed = (idp_email(email_domain) for _ in range(2))
    first = await oidc_login(auth_client, fake_idp, sub=sub, email=original)
    renamed = await oidc_login(auth_client, fake_idp, sub=sub, email=changed)
    stranger = await oidc_login(auth_client, fake_idp, email=idp_email(email_domain))

    assert renamed.json()["user_id"] == first.json()["user_id"]
    assert stranger.json()["user_id"] != first.json()["user_id"]
    assert (await _admin_user(auth_admin, first.json()["user_id"]))["email"] == original
    assert await _user_count(auth_db, changed) == 0, "the new address made an account"


@pytest.mark.L2
@pytest.mark.L3
async def test_an_existing_user_is_linked_by_email(
    trusting_auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_idp: FakeIdp,
) -> None:
    """The IdP is trusted for the user's domain and vouches for the address (issue 10)."""
    tenant = str(uuid.uuid4())
    existing = await auth_admin.create_user(tier="enterprise", tenant_id=tenant)

    response = await oidc_login(trusting_auth_client, fake_idp, email=existing["email"].upper())

    assert response.json()["user_id"] == existing["id"]
    assert await _admin_user(auth_admin, existing["id"]) == existing, "linking changed the user"
    profile = (await me(trusting_auth_client, Tokens.of(response).access)).json()
    assert (profile["tier"], profile["tenant_id"]) == ("enterprise", tenant)


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_an_unverified_idp_email_cannot_take_over_an_existing_account(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_idp: FakeIdp,
) -> None:
    """Anyone can put any address in an IdP profile; only a verified one may be linked
    (SUT_NOTES: email_verified false for an existing user's address -> invalid_id_token)."""
    victim = await auth_admin.create_user(tier="enterprise")
    fake_idp.next_id_token(claims={"email_verified": False})

    response = await oidc_login(auth_client, fake_idp, email=victim["email"])

    assert (response.status_code, error_of(response)) == (401, "invalid_id_token")
    linked = [e for e in await auth_admin.audit(victim["id"]) if e["action"] == "identity.linked"]
    assert linked == []


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_a_tenant_claim_that_is_not_a_uuid_is_ignored(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_idp: FakeIdp,
    email_domain: str,
) -> None:
    response = await oidc_login(
        auth_client, fake_idp, tenant="acme; DROP TABLE users", email=idp_email(email_domain)
    )
    assert response.status_code == 200, response.text
    assert (await _admin_user(auth_admin, response.json()["user_id"]))["tenant_id"] is None


@pytest.mark.L2
@pytest.mark.L3
async def test_idp_groups_become_team_memberships_and_relogin_syncs_them(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_idp: FakeIdp,
    auth_db: asyncpg.Connection,
    email_domain: str,
) -> None:
    eng_group, ops_group = f"eng-{uuid.uuid4().hex[:6]}", f"ops-{uuid.uuid4().hex[:6]}"
    eng = await _team(auth_admin, idp_group=eng_group)
    ops = await _team(auth_admin, idp_group=ops_group)
    manual = await _team(auth_admin)
    await _grant(auth_admin, eng, "billing:write")
    await _grant(auth_admin, ops, "teams:manage")
    sub, email = uuid.uuid4().hex, idp_email(email_domain)

    first = await oidc_login(
        auth_client, fake_idp, sub=sub, email=email, groups=[eng_group, ops_group, "unmapped"]
    )
    user_id = first.json()["user_id"]
    assert await _memberships(auth_db, user_id) == {eng: "member", ops: "member"}
    perms = await _permissions(auth_admin, user_id)
    assert {"agents:run", "teams:read", "billing:write", "teams:manage"} <= perms
    # An admin adds the user to a team the IdP knows nothing about.
    added = await auth_admin.client.put(
        f"/admin/teams/{manual}/members/{user_id}",
        json={"role": "viewer"},
        headers=auth_admin.headers,
    )
    assert added.status_code == 200, added.text

    # The user left "ops" at the IdP: the next login removes that membership, only that one.
    await oidc_login(auth_client, fake_idp, sub=sub, email=email, groups=[eng_group])

    assert await _memberships(auth_db, user_id) == {eng: "member", manual: "viewer"}
    perms = await _permissions(auth_admin, user_id)
    assert "teams:manage" not in perms, "a permission of the left team survived the relogin"
    assert "billing:write" in perms

    await oidc_login(auth_client, fake_idp, sub=sub, email=email, groups=[])
    assert await _memberships(auth_db, user_id) == {manual: "viewer"}
    assert "billing:write" not in await _permissions(auth_admin, user_id)


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_an_idp_group_never_makes_a_user_a_member_of_another_tenants_team(
    auth_client: httpx.AsyncClient,
    access_admin: AccessAdmin,
    fake_idp: FakeIdp,
    email_domain: str,
) -> None:
    """Issue 10 #11: a group name is the IdP's word, and any tenant's IdP may say any name.
    It maps only to the teams of the user's own tenant (a user of none: teams of none)."""
    ours, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    group = f"finance-{uuid.uuid4().hex[:6]}"
    their_team = await access_admin.create_team(idp_group=group, tenant_id=theirs)
    await access_admin.grant_team(their_team["id"], "billing:write")
    tenantless_group = f"ops-{uuid.uuid4().hex[:6]}"
    tenantless_team = await access_admin.create_team(idp_group=tenantless_group)

    outsider = await oidc_login(
        auth_client, fake_idp, email=idp_email(email_domain), tenant=ours, groups=[group]
    )
    insider = await oidc_login(
        auth_client, fake_idp, email=idp_email(email_domain), tenant=theirs, groups=[group]
    )
    tenantless = await oidc_login(
        auth_client,
        fake_idp,
        email=idp_email(email_domain),
        groups=[group, tenantless_group],
    )

    members = {m["user_id"] for m in (await access_admin.team(their_team["id"]))["members"]}
    assert members == {insider.json()["user_id"]}, "only the team's own tenant joins it"
    check = {"permission": "billing:write"}
    for response, allowed in ((outsider, False), (insider, True), (tenantless, False)):
        answer = await auth_client.post(
            "/authz/check", json=check, headers=Tokens.of(response).bearer
        )
        assert answer.json() == {"allowed": allowed}, answer.text
    tenantless_members = (await access_admin.team(tenantless_team["id"]))["members"]
    assert [m["user_id"] for m in tenantless_members] == [tenantless.json()["user_id"]]


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_group_sync_takes_effect_on_live_permission_checks(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_idp: FakeIdp,
    email_domain: str,
) -> None:
    """Permissions a session already looked at are not served stale from a cache after the
    IdP removed the group (a relogin syncs memberships; the cache must follow)."""
    group = f"billing-{uuid.uuid4().hex[:6]}"
    team = await _team(auth_admin, idp_group=group)
    await _grant(auth_admin, team, "billing:write")
    sub = uuid.uuid4().hex
    tokens = Tokens.of(
        await oidc_login(
            auth_client, fake_idp, sub=sub, groups=[group], email=idp_email(email_domain)
        )
    )
    check = {"permission": "billing:write"}
    allowed = await auth_client.post("/authz/check", json=check, headers=tokens.bearer)
    assert allowed.json() == {"allowed": True}

    await oidc_login(auth_client, fake_idp, sub=sub, groups=[], email=idp_email(email_domain))

    after = await auth_client.post("/authz/check", json=check, headers=tokens.bearer)
    assert after.json() == {"allowed": False}


@pytest.mark.L2
@pytest.mark.L3
async def test_an_oidc_user_with_2fa_gets_a_second_factor_challenge(
    auth_client: httpx.AsyncClient,
    trusting_auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_idp: FakeIdp,
) -> None:
    person = await create_password_user(auth_admin)
    enrolled = await enroll_totp(auth_client, person)

    response = await oidc_login(trusting_auth_client, fake_idp, email=person.email)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body.get("mfa_required") is True
    assert "access_token" not in body, "the IdP login skipped the user's second factor"
    verified = await auth_client.post(
        "/auth/mfa/verify",
        json={"mfa_token": body["mfa_token"], "code": enrolled.backup_codes[0]},
    )
    profile = (await me(auth_client, Tokens.of(verified).access)).json()
    assert (profile["user_id"], profile["mfa"]) == (person.user_id, True)


# -- L4: the JWT leg against a deployment ------------------------------------------------


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_a_downstream_verifier_accepts_platform_tokens_and_refuses_foreign_ones(
    auth_client: httpx.AsyncClient,
    key_user: KeyUser,
) -> None:
    """What every downstream service does with a platform JWT, against the real JWKS."""
    verifier = JwksVerifier(auth_client)
    tokens = await login(auth_client, key_user.api_key)

    claims = await verifier.verify(tokens.access)

    assert (claims["sub"], claims["sid"]) == (key_user.user_id, tokens.session_id)
    assert claims["amr"] == ["api_key"]
    foreign = jwt.encode(
        {**claims, "sub": str(uuid.uuid4())},
        _throwaway_key(),
        algorithm="RS256",
        headers={"kid": jwt.get_unverified_header(tokens.access)["kid"]},
    )
    with pytest.raises(jwt.InvalidSignatureError):
        await verifier.verify(foreign)
    assert verifier.fetches == 1, "a known kid needs no second JWKS fetch"


def _throwaway_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.L4
async def test_the_deployment_starts_oidc_with_pkce(auth_client: httpx.AsyncClient) -> None:
    # One outcome: a deployment under test has its IdP (sandbox) configured, so a 503
    # `not_configured` is a broken deployment, not a pass.
    response = await auth_client.get("/auth/oidc/login")
    assert response.status_code == 302, response.text
    params = query_of(response.headers["location"])
    assert params["code_challenge_method"] == "S256"
    assert params["response_type"] == "code"
    for name in ("state", "nonce", "code_challenge"):
        assert params[name], name
