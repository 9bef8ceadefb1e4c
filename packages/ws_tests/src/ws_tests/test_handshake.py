"""001#26 WebSocket authentication handshake and 004#3 the complete OAuth -> JWT -> WebSocket flow.

The rules under test (CONTRACT4, Handshake): the token comes in `Authorization: Bearer` or,
from browsers (whose WebSocket API sets no headers), in the subprotocol
`apex.bearer.<token>` beside `apex.v1`; never in the URL (`?access_token=` is refused, RFC
6750 §2.3: URLs end up in logs). It is verified locally against auth's JWKS (RS256, iss,
aud, exp) and its session must be live. Refusals are HTTP answers to the upgrade with
`{"error","detail"}`: 400 invalid_request, 401 missing_token / invalid_token /
token_expired / session_revoked, 429 too_many_connections. On a live connection `refresh`
swaps the token (same user and session only); a token that expires without a refresh ends
the connection with 4001.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import jwt
import pytest
from auth_tests.client import AuthAdmin, Tokens, challenges, error_of, idp_email, login
from auth_tests.flows import oidc_login
from websockets.exceptions import ConnectionClosed

from apex_testkit import FakeIdp, RedisNamespace, eventually, rsa_key, tls_context
from ws_tests.client import Connect, HandshakeRefused, WsClient, stays_open
from ws_tests.gateways import Gateways, http_url
from ws_tests.users import MakeUser, WsUser, forge

HANDSHAKE = pytest.mark.bvj(
    segment="platform", goal="Secure connections: only live sessions reach real-time features",
    mrr=9000, scenario="001#26",
)  # fmt: skip
COMPLETE_FLOW = pytest.mark.bvj(
    segment="enterprise", goal="SSO users get a real-time session bound to their login",
    mrr=18000, scenario="004#3",
)  # fmt: skip


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def _refused(connect: Connect, token: str | None, **options: Any) -> HandshakeRefused:
    """The refusal of a handshake that must be refused."""
    with pytest.raises(HandshakeRefused) as refused:
        await connect(token, **options)
    assert isinstance(refused.value.body.get("detail"), str), refused.value.body
    return refused.value


# Token lifetimes (whole seconds, as JWT `exp` is) a scenario of a short-lived token tries,
# shortest first: a machine too slow to finish the steps meant to happen before `exp`
# gets the next, longer lifetime instead of a failure.
TTLS = (1, 2, 4, 8)
# How long past a token's `exp` a connection must stay open to prove a refresh moved its
# deadline: the gateway's expiry timer fires at `exp`.
PAST_EXP = 0.25
# The gateway's clock may run a little ahead of the test's (L4): an expiry this close
# before `exp` by the test's clock still counts as the token's end, not as an early close.
CLOCK_SKEW = 0.5


class _TokenOutlived(Exception):
    """A scenario's token expired before the steps meant to run before `exp` were done."""


@contextlib.asynccontextmanager
async def _before(exp: int) -> AsyncIterator[None]:
    """Steps meant to happen while the token (expiring at `exp`) lives: a refusal as
    token_expired or a close 4001 at `exp` or later (less CLOCK_SKEW) means the machine
    was too slow (_TokenOutlived); earlier it is a failure like any other."""
    try:
        yield
    except HandshakeRefused as refused:
        if refused.body.get("error") != "token_expired" or time.time() < exp - CLOCK_SKEW:
            raise
        raise _TokenOutlived from None
    except ConnectionClosed as closed:
        if closed.rcvd is None or closed.rcvd.code != 4001 or time.time() < exp - CLOCK_SKEW:
            raise
        raise _TokenOutlived from None


async def _with_short_token(scenario: Callable[[int], Awaitable[None]]) -> None:
    """Run `scenario(ttl)` with each of TTLS until one run finishes its steps in time."""
    for ttl in TTLS:
        with contextlib.suppress(_TokenOutlived):
            await scenario(ttl)
            return
    pytest.fail(f"every token expired before its scenario's steps were done (ttl {TTLS} s)")


def _expired(token: str, signing_key: str) -> str:
    """`token`, well signed, expired a minute ago (L2/L3: the platform's key)."""
    now = int(time.time())
    return forge(token, signing_key, iat=now - 120, nbf=now - 120, exp=now - 60)


def _tampered_signature(token: str) -> str:
    head, body, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0xFF
    return f"{head}.{body}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


# --- accepted handshakes ------------------------------------------------------------------


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@HANDSHAKE
async def test_bearer_header_token_is_welcomed_with_the_session_it_belongs_to(
    ws_connect: Connect, ws_user: WsUser
) -> None:
    client = await ws_connect(ws_user.token)

    welcome = client.welcome
    assert welcome["type"] == "welcome"
    assert welcome["user_id"] == ws_user.user_id
    assert welcome["session_id"] == ws_user.tokens.session_id
    assert isinstance(welcome["connection_id"], str)
    assert welcome["connection_id"]
    assert isinstance(welcome["instance"], str)
    assert welcome["instance"]
    assert welcome["last_seq"] == 0  # a new user has no stream yet
    assert welcome["leader"] is True  # the user's only connection
    assert welcome["heartbeat"]["interval"] > 0
    assert welcome["heartbeat"]["timeout"] > 0
    assert client.ws.subprotocol == "apex.v1"
    assert (await client.request("ping"))["type"] == "pong"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@HANDSHAKE
async def test_subprotocol_token_is_accepted_for_browsers_and_never_echoed(
    ws_connect: Connect, ws_user: WsUser
) -> None:
    client = await ws_connect(ws_user.token, token_in="protocol")

    assert client.welcome["user_id"] == ws_user.user_id
    assert client.welcome["session_id"] == ws_user.tokens.session_id
    assert client.ws.subprotocol == "apex.v1"  # the token is not sent back


@pytest.mark.L2
@pytest.mark.L3
@HANDSHAKE
async def test_query_string_token_is_refused_and_opens_no_connection(
    gateways: Gateways, ws_open: Connect, ws_user: WsUser, redis_namespace: RedisNamespace
) -> None:
    """RFC 6750 §2.3: a token in the URL ends up in access logs and browser history."""
    gateway = await gateways.start()

    with pytest.raises(HandshakeRefused) as refused:
        await ws_open(gateway.url, ws_user.token, token_in="query")

    assert (refused.value.status, refused.value.body["error"]) == (400, "invalid_request")
    assert (await gateway.healthz()).json()["connections"] == 0
    redis = redis_namespace.client()
    try:
        assert not redis.exists(f"{redis_namespace.prefix}ws:tabs:{ws_user.user_id}")
    finally:
        redis.close()


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@HANDSHAKE
async def test_missing_token_is_refused_with_401_missing_token(ws_connect: Connect) -> None:
    refused = await _refused(ws_connect, None)

    assert (refused.status, refused.body["error"]) == (401, "missing_token")


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@HANDSHAKE
@pytest.mark.parametrize("token_in", ["header", "protocol"])
@pytest.mark.parametrize(
    "token",
    ["not-a-jwt", "a.b.c", "eyJhbGciOiJub25lIn0.e30."],
    ids=["garbage", "parts", "alg-none"],
)
async def test_malformed_token_is_refused_with_401_invalid_token(
    ws_connect: Connect, token: str, token_in: str
) -> None:
    refused = await _refused(ws_connect, token, token_in=token_in)

    assert (refused.status, refused.body["error"]) == (401, "invalid_token")


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@HANDSHAKE
async def test_bad_signature_is_refused_with_401_invalid_token(
    ws_connect: Connect, ws_user: WsUser
) -> None:
    refused = await _refused(ws_connect, _tampered_signature(ws_user.token))

    assert (refused.status, refused.body["error"]) == (401, "invalid_token")


@pytest.mark.L2
@pytest.mark.L3
@HANDSHAKE
async def test_token_signed_by_another_key_is_refused(ws_connect: Connect, ws_user: WsUser) -> None:
    # Same kid, another key: the kit's cached foreign key (not the platform's).
    refused = await _refused(ws_connect, forge(ws_user.token, rsa_key("foreign")))

    assert (refused.status, refused.body["error"]) == (401, "invalid_token")


@pytest.mark.L2
@pytest.mark.L3
@HANDSHAKE
@pytest.mark.parametrize(
    "claims",
    [{"aud": "someone-else"}, {"iss": "evil-auth"}, {"aud": None}, {"sub": None}, {"sid": None}],
    ids=["wrong-aud", "wrong-iss", "no-aud", "no-sub", "no-sid"],
)
async def test_well_signed_token_with_bad_claims_is_refused_with_invalid_token(
    ws_connect: Connect, ws_user: WsUser, jwt_signing_key: str, claims: dict[str, Any]
) -> None:
    # The control: the same forging with no change is accepted (so the key and kid are right).
    accepted = await ws_connect(forge(ws_user.token, jwt_signing_key))
    assert accepted.welcome["user_id"] == ws_user.user_id

    refused = await _refused(ws_connect, forge(ws_user.token, jwt_signing_key, **claims))

    assert (refused.status, refused.body["error"]) == (401, "invalid_token")


@pytest.mark.L2
@pytest.mark.L3
@HANDSHAKE
async def test_expired_token_is_refused_with_401_token_expired(
    ws_connect: Connect, ws_user: WsUser, jwt_signing_key: str
) -> None:
    expired = _expired(ws_user.token, jwt_signing_key)

    refused = await _refused(ws_connect, expired)

    assert (refused.status, refused.body["error"]) == (401, "token_expired")


# --- RFC 6750 section 3: the challenge of every refused credential ------------------------

NO_ERROR = {"realm": "apex"}


def _challenge(error: str) -> dict[str, str]:
    return {**NO_ERROR, "error": error}


async def _upgrade(gateway_url: str, headers: dict[str, str], query: str = "") -> httpx.Response:
    """A handshake request as plain HTTP: a refusal is an HTTP answer before any upgrade."""
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
        "Sec-WebSocket-Protocol": "apex.v1",
    }
    async with httpx.AsyncClient(
        base_url=http_url(gateway_url), timeout=30, verify=tls_context()
    ) as client:
        return await client.get(f"/ws{query}", headers={**upgrade, **headers})


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@HANDSHAKE
@pytest.mark.parametrize(
    "case", ["none", "basic", "malformed", "tampered", "revoked", "in_url", "two_ways"]
)
async def test_every_refused_credential_carries_an_rfc_6750_challenge(
    gateway_url: str, ws_auth_client: httpx.AsyncClient, make_ws_user: MakeUser, case: str
) -> None:
    """RFC 6750 section 3: `Bearer realm="apex"`, no error code without credentials
    (another scheme is none of ours), `error="invalid_token"` for a malformed, forged or
    revoked token (the body keeps the reason), `error="invalid_request"` with the 400 of a
    token sent in the URL or two ways."""
    user = await make_ws_user()
    if case == "revoked":
        logout = await ws_auth_client.post("/auth/logout", headers=user.tokens.bearer)
        assert logout.status_code == 204, logout.text
    bearer = {"Authorization": f"Bearer {user.token}"}
    headers, query = {
        "none": ({}, ""),
        "basic": ({"Authorization": "Basic dXNlcjpwYXNz"}, ""),
        "malformed": ({"Authorization": "Bearer not-a-jwt"}, ""),
        "tampered": ({"Authorization": f"Bearer {_tampered_signature(user.token)}"}, ""),
        "revoked": (bearer, ""),
        "in_url": ({}, f"?access_token={user.token}"),
        "two_ways": (
            {**bearer, "Sec-WebSocket-Protocol": f"apex.v1, apex.bearer.{user.token}"},
            "",
        ),
    }[case]

    response = await _upgrade(gateway_url, headers, query)

    status, code, challenge = {
        "none": (401, "missing_token", NO_ERROR),
        "basic": (401, "missing_token", NO_ERROR),
        "malformed": (401, "invalid_token", _challenge("invalid_token")),
        "tampered": (401, "invalid_token", _challenge("invalid_token")),
        "revoked": (401, "session_revoked", _challenge("invalid_token")),
        "in_url": (400, "invalid_request", _challenge("invalid_request")),
        "two_ways": (400, "invalid_request", _challenge("invalid_request")),
    }[case]
    assert (response.status_code, error_of(response)) == (status, code), response.text
    assert challenges(response) == {"bearer": challenge}, response.headers.get("www-authenticate")


@pytest.mark.L2
@pytest.mark.L3
@HANDSHAKE
async def test_an_expired_tokens_challenge_says_invalid_token_and_its_body_token_expired(
    gateway_url: str, ws_user: WsUser, jwt_signing_key: str
) -> None:
    expired = _expired(ws_user.token, jwt_signing_key)

    response = await _upgrade(gateway_url, {"Authorization": f"Bearer {expired}"})

    assert (response.status_code, error_of(response)) == (401, "token_expired"), response.text
    assert challenges(response) == {"bearer": _challenge("invalid_token")}


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@HANDSHAKE
@pytest.mark.slow
async def test_token_refused_once_it_has_expired(
    ws_connect: Connect, make_ws_user: MakeUser
) -> None:
    user = await make_ws_user(ttl=1)
    exp = _claims(user.token)["exp"]

    async def expired_refusal() -> HandshakeRefused | None:
        try:
            client = await ws_connect(user.token)
        except HandshakeRefused as refused:
            return refused
        except ConnectionClosed:  # it expired between the upgrade and the welcome: 4001
            return None
        await client.close()
        return None

    refused = await eventually(
        expired_refusal, timeout=10, max_interval=0.05, message="refusal of an expired token"
    )

    assert refused is not None
    assert time.time() >= exp  # never refused before it expired
    assert (refused.status, refused.body["error"]) == (401, "token_expired")


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@HANDSHAKE
async def test_token_of_a_logged_out_session_is_refused_with_session_revoked(
    ws_connect: Connect, ws_auth_client: httpx.AsyncClient, ws_user: WsUser
) -> None:
    logout = await ws_auth_client.post("/auth/logout", headers=ws_user.tokens.bearer)
    assert logout.status_code == 204, logout.text

    refused = await _refused(ws_connect, ws_user.token)

    assert (refused.status, refused.body["error"]) == (401, "session_revoked")


@pytest.mark.L2
@pytest.mark.L3
@HANDSHAKE
async def test_connections_over_the_per_user_limit_are_refused_with_429(
    gateways: Gateways, ws_open: Callable[..., Awaitable[WsClient]], make_ws_user: MakeUser
) -> None:
    gateway = await gateways.start(APEX_WS_MAX_CONNECTIONS_PER_USER="3")
    user, other = await make_ws_user(), await make_ws_user()
    tabs = [await ws_open(gateway.url, user.token) for _ in range(3)]

    with pytest.raises(HandshakeRefused) as refused:
        await ws_open(gateway.url, user.token)
    assert (refused.value.status, refused.value.body["error"]) == (429, "too_many_connections")
    # The limit is per user: someone else still gets in.
    assert (await ws_open(gateway.url, other.token)).welcome["user_id"] == other.user_id

    await tabs[0].close()

    refusals: list[str] = []

    async def admitted() -> WsClient | None:
        try:
            return await ws_open(gateway.url, user.token)
        except HandshakeRefused as again:
            refusals.append(again.body["error"])
            return None

    newcomer = await eventually(admitted, timeout=5)
    assert newcomer is not None
    assert newcomer.welcome["user_id"] == user.user_id
    assert set(refusals) <= {"too_many_connections"}, refusals


# --- refresh and expiry on a live connection ------------------------------------------


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@HANDSHAKE
async def test_refresh_on_a_live_connection_swaps_the_token(
    ws_connect: Connect, ws_auth_client: httpx.AsyncClient, ws_user: WsUser
) -> None:
    client = await ws_connect(ws_user.token)
    response = await ws_auth_client.post(
        "/auth/refresh", json={"refresh_token": ws_user.tokens.refresh}
    )
    fresh = Tokens.of(response)

    reply = await client.request("refresh", access_token=fresh.access)

    assert reply["type"] == "refreshed", reply
    assert reply["exp"] == _claims(fresh.access)["exp"]
    assert (await client.request("ping"))["type"] == "pong"


@pytest.mark.L2
@pytest.mark.L3
@HANDSHAKE
@pytest.mark.slow
async def test_refreshed_connection_outlives_its_first_token(
    ws_connect: Connect, ws_user: WsUser, jwt_signing_key: str
) -> None:
    async def scenario(ttl: int) -> None:
        now = int(time.time())
        short_exp = now + ttl
        short = forge(ws_user.token, jwt_signing_key, exp=short_exp)
        long = forge(ws_user.token, jwt_signing_key, exp=now + 3600)
        async with _before(short_exp):
            client = await ws_connect(short)
            reply = await client.request("refresh", access_token=long)
        assert reply == {"type": "refreshed", "id": reply["id"], "exp": now + 3600}

        # Past the first exp, by more than the gateway's expiry timer needs to fire.
        await stays_open(client, max(0.0, short_exp - time.time()) + PAST_EXP)

    await _with_short_token(scenario)


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@HANDSHAKE
@pytest.mark.slow
async def test_refresh_with_another_users_token_is_refused_and_the_old_token_stays(
    ws_connect: Connect, make_ws_user: MakeUser
) -> None:
    intruder = await make_ws_user()

    async def scenario(ttl: int) -> None:
        user = await make_ws_user(ttl=ttl)  # made last: its short life starts now
        async with _before(_claims(user.token)["exp"]):
            client = await ws_connect(user.token)
            reply = await client.request("refresh", access_token=intruder.token)
            assert (reply["type"], reply["code"]) == ("error", "invalid_token"), reply
            assert (await client.request("ping"))["type"] == "pong"
        # Still on the old (short) token: it expires as it would have.
        code, reason = await client.closed(timeout=15)
        assert code == 4001, (code, reason)

    await _with_short_token(scenario)


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@HANDSHAKE
async def test_refresh_with_a_token_of_the_same_users_other_session_is_refused(
    ws_connect: Connect, ws_auth_client: httpx.AsyncClient, ws_auth_admin: AuthAdmin
) -> None:
    """A socket stays bound to the session it opened with: the same user's other session
    (another device) cannot take it over, and ending that session does not end it."""
    key_user = await ws_auth_admin.key_user()

    async def scenario(ttl: int) -> None:
        laptop = await login(ws_auth_client, key_user.api_key, ttl=ttl)
        phone = await login(ws_auth_client, key_user.api_key)
        async with _before(_claims(laptop.access)["exp"]):
            client = await ws_connect(laptop.access)
            reply = await client.request("refresh", access_token=phone.access)
            assert (reply["type"], reply["code"]) == ("error", "invalid_token"), reply
            logout = await ws_auth_client.post("/auth/logout", headers=phone.bearer)
            assert logout.status_code == 204, logout.text
            assert (await client.request("ping"))["type"] == "pong"
        # Still the laptop's session and (short) token: it expires as it would have, and
        # is not closed as a revoked session.
        code, reason = await client.closed(timeout=15)
        assert (code, reason) == (4001, "token expired")

    await _with_short_token(scenario)


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@HANDSHAKE
@pytest.mark.parametrize("bad", ["garbage", "tampered"])
async def test_refresh_with_an_invalid_token_is_refused_and_the_connection_stays(
    ws_connect: Connect, ws_user: WsUser, bad: str
) -> None:
    client = await ws_connect(ws_user.token)
    token = "garbage" if bad == "garbage" else _tampered_signature(ws_user.token)

    reply = await client.request("refresh", access_token=token)

    assert (reply["type"], reply["code"]) == ("error", "invalid_token"), reply
    assert (await client.request("ping"))["type"] == "pong"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@HANDSHAKE
@pytest.mark.slow
async def test_token_expiring_without_refresh_closes_with_4001(
    ws_connect: Connect, make_ws_user: MakeUser
) -> None:
    async def scenario(ttl: int) -> None:
        user = await make_ws_user(ttl=ttl)
        exp = _claims(user.token)["exp"]
        async with _before(exp):
            client = await ws_connect(user.token)

        code, reason = await client.closed(timeout=15)

        assert time.time() >= exp - 0.5, "closed before the token expired"
        assert code == 4001, (code, reason)
        assert reason == "token expired"

    await _with_short_token(scenario)


# --- 004#3: the complete flow ---------------------------------------------------------------


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@COMPLETE_FLOW
async def test_concurrent_handshakes_of_one_session_are_each_bound_to_it(
    ws_connect: Connect, ws_user: WsUser
) -> None:
    clients = await asyncio.gather(*(ws_connect(ws_user.token) for _ in range(8)))

    welcomes = [c.welcome for c in clients]
    assert {w["session_id"] for w in welcomes} == {ws_user.tokens.session_id}
    assert {w["user_id"] for w in welcomes} == {ws_user.user_id}
    assert len({w["connection_id"] for w in welcomes}) == 8
    assert sum(1 for w in welcomes if w["leader"]) == 1


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@COMPLETE_FLOW
async def test_oidc_login_then_websocket_session_bound_to_it(
    ws_connect: Connect,
    ws_auth_client: httpx.AsyncClient,
    ws_auth_admin: AuthAdmin,
    fake_idp: FakeIdp,
) -> None:
    # The browser round trip (auth -> IdP /authorize -> auth's callback, with the login
    # cookie that binds it to this browser), from the identity team's client.
    # At L4 the IdP's user is in the run's namespace, deleted at its end.
    email = idp_email(ws_auth_admin.email_domain)
    callback = await oidc_login(ws_auth_client, fake_idp, sub=f"idp-{time.time_ns()}", email=email)
    tokens = Tokens.of(callback)
    user_id = callback.json()["user_id"]
    assert _claims(tokens.access)["amr"] == ["oidc"]

    client = await ws_connect(tokens.access)

    assert client.welcome["user_id"] == user_id
    assert client.welcome["session_id"] == tokens.session_id
    # The session behind the socket is the SSO one: logging out ends new handshakes.
    logout = await ws_auth_client.post("/auth/logout", headers=tokens.bearer)
    assert logout.status_code == 204, logout.text
    assert (await client.closed(timeout=5))[0] == 4003
    refused = await _refused(ws_connect, tokens.access)
    assert refused.body["error"] == "session_revoked"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@COMPLETE_FLOW
async def test_api_key_login_then_websocket_then_refresh_then_logout(
    ws_connect: Connect, ws_auth_client: httpx.AsyncClient, ws_auth_admin: AuthAdmin
) -> None:
    key_user = await ws_auth_admin.key_user()
    tokens = await login(ws_auth_client, key_user.api_key)
    client = await ws_connect(tokens.access, token_in="protocol")
    assert client.welcome["session_id"] == tokens.session_id

    fresh = Tokens.of(
        await ws_auth_client.post("/auth/refresh", json={"refresh_token": tokens.refresh})
    )
    assert fresh.session_id == tokens.session_id
    assert (await client.request("refresh", access_token=fresh.access))["type"] == "refreshed"

    logout = await ws_auth_client.post("/auth/logout", headers=fresh.bearer)
    assert logout.status_code == 204, logout.text
    code, reason = await client.closed(timeout=5)
    assert (code, reason) == (4003, "session revoked")
    refused = await _refused(ws_connect, fresh.access)
    assert (refused.status, refused.body["error"]) == (401, "session_revoked")
