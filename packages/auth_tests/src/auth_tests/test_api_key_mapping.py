"""001#10 API key to user mapping: key validation, user context, rate limiting, audit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import asyncpg
import httpx
import pytest

from auth_tests.client import AuthAdmin, KeyUser, Tokens, error_of, exchange, login

BVJ = pytest.mark.bvj(
    segment="mid", goal="Automation: service accounts authenticate with API keys", mrr=8000,
    scenario="001#10",
)  # fmt: skip
pytestmark = [BVJ]


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_key_maps_to_its_user_and_context(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
) -> None:
    tenant = str(uuid.uuid4())
    owner = await auth_admin.key_user(
        tier="enterprise", scopes=("agents:run", "billing:read"), tenant_id=tenant
    )

    tokens = await login(auth_client, owner.api_key)
    me = await auth_client.get("/me", headers=tokens.bearer)

    assert me.status_code == 200, me.text
    assert me.json() == {
        "user_id": owner.user_id,
        "email": owner.user["email"],
        "tier": "enterprise",
        "tenant_id": tenant,
        "session_id": tokens.session_id,
        "api_key_id": owner.key_id,
        "scopes": ["agents:run", "billing:read"],
        "auth_method": "api_key",
        "mfa": False,
    }


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_each_key_maps_to_its_own_user(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
) -> None:
    alice = await auth_admin.key_user()
    bob = await auth_admin.key_user()
    second_of_alice = await auth_admin.create_api_key(alice.user_id, scopes=["read"])

    seen = {}
    for name, api_key in (
        ("alice", alice.api_key),
        ("bob", bob.api_key),
        ("alice2", second_of_alice["api_key"]),
    ):
        tokens = await login(auth_client, api_key)
        seen[name] = (await auth_client.get("/me", headers=tokens.bearer)).json()

    assert seen["alice"]["user_id"] == alice.user_id
    assert seen["bob"]["user_id"] == bob.user_id
    assert seen["alice2"]["user_id"] == alice.user_id
    assert seen["alice2"]["api_key_id"] == second_of_alice["id"] != alice.key_id
    assert seen["alice2"]["scopes"] == ["read"]


def _wrong_secret(key: KeyUser) -> str:
    prefix, _, secret = key.api_key.rpartition("_")
    flipped = ("A" if secret[0] != "A" else "B") + secret[1:]
    return f"{prefix}_{flipped}"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@pytest.mark.parametrize(
    "make_bad_key",
    [
        pytest.param(lambda key: "", id="empty"),
        pytest.param(lambda key: "not-an-api-key", id="malformed"),
        pytest.param(lambda key: key.api_key[:-4], id="truncated"),
        pytest.param(_wrong_secret, id="wrong-secret"),
        pytest.param(
            lambda key: "apx_" + "z" * 12 + "_" + key.api_key.rpartition("_")[2], id="unknown-id"
        ),
        pytest.param(lambda key: key.api_key + "\u0000", id="nul-byte"),
    ],
)
async def test_bad_keys_are_rejected(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    key_user: KeyUser,
    make_bad_key: Callable[[KeyUser], str],
) -> None:
    response = await exchange(auth_client, make_bad_key(key_user))

    assert response.status_code == 401, response.text
    assert error_of(response) == "invalid_api_key"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "access_token" not in response.json()
    # Nothing was opened with the key, nor recorded as a use of it.
    assert (await auth_admin.api_key(key_user.key_id))["last_used_at"] is None
    actions = [e["action"] for e in await auth_admin.audit(key_user.key_id)]
    assert "api_key.used" not in actions
    tokens = await login(auth_client, key_user.api_key)
    listed = (await auth_client.get("/sessions", headers=tokens.bearer)).json()["sessions"]
    assert [s["session_id"] for s in listed] == [tokens.session_id], "a bad key opened one"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_oversized_and_non_json_bodies_are_client_errors(
    auth_client: httpx.AsyncClient,
) -> None:
    too_long = await exchange(auth_client, "apx_" + "a" * 5000)
    as_form = await auth_client.post(
        "/auth/token",
        content=b"api_key=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    as_text = await auth_client.post(
        "/auth/token", content=b"api_key=x", headers={"Content-Type": "text/plain"}
    )
    broken = await auth_client.post(
        "/auth/token", content=b"{", headers={"Content-Type": "application/json"}
    )
    as_number = await auth_client.post("/auth/token", json={"api_key": 12})

    assert (too_long.status_code, error_of(too_long)) == (422, "invalid_request")
    # A form is an OAuth 2.0 token request (test_client_credentials.py): this one names no
    # grant_type (RFC 6749 section 5.2).
    assert (as_form.status_code, error_of(as_form)) == (400, "invalid_request")
    assert (as_text.status_code, error_of(as_text)) == (415, "unsupported_media_type")
    assert (broken.status_code, error_of(broken)) == (400, "malformed_json")
    assert (as_number.status_code, error_of(as_number)) == (422, "invalid_request")


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_revoked_key_is_rejected_and_its_sessions_end(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    key_user: KeyUser,
) -> None:
    tokens = await login(auth_client, key_user.api_key)
    assert (await auth_client.get("/me", headers=tokens.bearer)).status_code == 200

    await auth_admin.revoke_api_key(key_user.key_id)

    again = await exchange(auth_client, key_user.api_key)
    assert again.status_code == 401
    assert error_of(again) == "invalid_api_key"
    me = await auth_client.get("/me", headers=tokens.bearer)
    assert me.status_code == 401
    assert error_of(me) == "session_revoked"
    refreshed = await auth_client.post("/auth/refresh", json={"refresh_token": tokens.refresh})
    assert refreshed.status_code == 401
    assert (await auth_admin.api_key(key_user.key_id))["revoked_at"] is not None


@pytest.mark.L2
@pytest.mark.L3
async def test_a_session_never_outlives_its_key_when_the_sweep_was_missed(
    auth_client: httpx.AsyncClient,
    auth_db: asyncpg.Connection,
    key_user: KeyUser,
) -> None:
    """The key is revoked in PostgreSQL but its sessions were never ended (the sweep was
    interrupted: Redis down, an event missed): every route that takes the token refuses
    it, /authz/check and the context-token exchange included, and the session ends."""
    tokens = await login(auth_client, key_user.api_key)
    check = {"permission": "agents:read"}
    assert (
        await auth_client.post("/authz/check", json=check, headers=tokens.bearer)
    ).status_code == 200
    await auth_db.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", key_user.key_id)

    refused = {
        "authz": await auth_client.post("/authz/check", json=check, headers=tokens.bearer),
        "context": await auth_client.post(
            "/auth/context-token", json={"audience": "apex-data"}, headers=tokens.bearer
        ),
        "permissions": await auth_client.get("/me/permissions", headers=tokens.bearer),
        "me": await auth_client.get("/me", headers=tokens.bearer),
    }
    assert {name: (r.status_code, error_of(r)) for name, r in refused.items()} == dict.fromkeys(
        refused, (401, "session_revoked")
    )
    refreshed = await auth_client.post("/auth/refresh", json={"refresh_token": tokens.refresh})
    assert refreshed.status_code == 401, "the session itself has ended"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_revoking_one_key_leaves_the_users_other_keys_working(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    key_user: KeyUser,
) -> None:
    other = await auth_admin.create_api_key(key_user.user_id)
    other_tokens = await login(auth_client, other["api_key"])
    doomed = await login(auth_client, key_user.api_key)

    await auth_admin.revoke_api_key(key_user.key_id)

    me = await auth_client.get("/me", headers=other_tokens.bearer)
    assert me.status_code == 200, me.text
    assert (me.json()["user_id"], me.json()["api_key_id"]) == (key_user.user_id, other["id"])
    again = await login(auth_client, other["api_key"])
    listed = (await auth_client.get("/sessions", headers=again.bearer)).json()["sessions"]
    assert doomed.session_id not in {s["session_id"] for s in listed}
    assert {s["api_key_id"] for s in listed} == {other["id"]}
    assert (await auth_admin.api_key(other["id"]))["revoked_at"] is None


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_key_use_and_rejection_are_audited(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    key_user: KeyUser,
) -> None:
    before = await auth_admin.api_key(key_user.key_id)
    assert before["last_used_at"] is None

    tokens = await login(auth_client, key_user.api_key)
    await exchange(auth_client, _wrong_secret(key_user))

    events = await auth_admin.audit(key_user.key_id)
    actions = [event["action"] for event in events]
    assert actions[0] == "api_key.created"
    assert actions.count("api_key.used") == 1
    assert actions.count("api_key.rejected") == 1
    used = next(e for e in events if e["action"] == "api_key.used")
    assert used["detail"]["session_id"] == tokens.session_id
    rejected = next(e for e in events if e["action"] == "api_key.rejected")
    assert rejected["detail"]["reason"] == "wrong_secret"
    assert (await auth_admin.api_key(key_user.key_id))["last_used_at"] is not None
    assert key_user.api_key.rpartition("_")[2] not in str(events), "secret in the audit trail"


@pytest.mark.L2
@pytest.mark.L3
async def test_keys_are_stored_hashed_never_in_clear(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    key_user: KeyUser,
    auth_db: asyncpg.Connection,
) -> None:
    await login(auth_client, key_user.api_key)
    secret = key_user.api_key.rpartition("_")[2]

    row = await auth_db.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_user.key_id)
    assert row is not None
    assert all(secret not in str(value) for value in dict(row).values())
    dump = await auth_db.fetchval("SELECT string_agg(t::text, ' ') FROM audit_events t")
    assert secret not in dump
    admin_view = await auth_admin.api_key(key_user.key_id)
    assert admin_view["id"] == key_user.key_id
    assert secret not in str(admin_view)


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_admin_api_needs_the_admin_token(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin
) -> None:
    """SUT notes: a missing or wrong admin token is a 401 `invalid_token`."""
    body = {"email": auth_admin.new_email(), "tier": "free"}  # at L4 in the run's namespace
    no_token = await auth_client.post("/admin/users", json=body)
    wrong = await auth_client.post(
        "/admin/users", json=body, headers={"Authorization": "Bearer not-the-admin-token"}
    )

    assert (no_token.status_code, error_of(no_token)) == (401, "invalid_token")
    assert (wrong.status_code, error_of(wrong)) == (401, "invalid_token")
    # Nobody was created: the address is still free for the real admin.
    created = await auth_client.post("/admin/users", json=body, headers=auth_admin.headers)
    assert created.status_code == 201, created.text


@pytest.mark.L2
@pytest.mark.L3
async def test_free_tier_exchanges_are_rate_limited_per_key(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
) -> None:
    """The default free tier allows 10 exchanges a minute per key (APEX_AUTH_RATE_LIMITS)."""
    free = await auth_admin.key_user(tier="free")
    other_free = await auth_admin.key_user(tier="free")

    statuses = [(await exchange(auth_client, free.api_key)).status_code for _ in range(10)]
    over = await exchange(auth_client, free.api_key)

    assert statuses == [200] * 10
    assert over.status_code == 429
    assert error_of(over) == "rate_limited"
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert (await exchange(auth_client, other_free.api_key)).status_code == 200, (
        "limits are per key"
    )
    events = await auth_admin.audit(free.key_id)
    assert [e["detail"].get("reason") for e in events if e["action"] == "api_key.rejected"] == [
        "rate_limited"
    ]


@pytest.mark.L2
@pytest.mark.L3
async def test_concurrent_burst_gets_exactly_the_limit(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
) -> None:
    free = await auth_admin.key_user(tier="free")

    responses = await asyncio.gather(*(exchange(auth_client, free.api_key) for _ in range(30)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 20, statuses
    # Exactly the accepted ones opened a session and count as uses.
    opened = {Tokens.of(r).session_id for r in responses if r.status_code == 200}
    some = next(Tokens.of(r) for r in responses if r.status_code == 200)
    listed = (await auth_client.get("/sessions", headers=some.bearer)).json()["sessions"]
    assert {s["session_id"] for s in listed} == opened
    events = await auth_admin.audit(free.key_id)
    assert sum(e["action"] == "api_key.used" for e in events) == 10
    assert sum(e["detail"].get("reason") == "rate_limited" for e in events) == 20


@pytest.mark.L2
@pytest.mark.L3
async def test_tier_upgrade_lifts_the_limit_at_once(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
) -> None:
    user = await auth_admin.key_user(tier="free")
    for _ in range(10):
        await login(auth_client, user.api_key)
    assert (await exchange(auth_client, user.api_key)).status_code == 429

    await auth_admin.set_tier(user.user_id, "pro")

    tokens = await login(auth_client, user.api_key)
    assert (await auth_client.get("/me", headers=tokens.bearer)).json()["tier"] == "pro"
