"""OAuth 2.0 client credentials (RFC 6749 section 4.4) for API keys, and the RFC 8414
metadata that lets a standard client find the token endpoint.

An API key is an OAuth client: client_id = the key's id, client_secret = the key as shown
(`KeyUser.client_credentials`), sent with HTTP Basic (section 2.3.1, the default) or in
the form. `POST /auth/token` takes the form-encoded request (the JSON `{"api_key"}`
exchange stays as it is) and answers as sections 5.1 and 5.2 say. Two independent clients
prove it: authlib's OAuth 2.0 client, and plain httpx requests written from the RFC; the
token they get opens the protected routes.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote_plus, urlsplit

import httpx
import pytest

from apex_testkit import Platform
from auth_tests.client import (
    AuthAdmin,
    JwksVerifier,
    KeyUser,
    challenges,
    error_of,
    login,
    me,
    platform_transport,
)

BVJ = pytest.mark.bvj(
    segment="mid", goal="Automation: service accounts get tokens with any OAuth 2.0 client",
    mrr=8000, scenario="001#10",
)  # fmt: skip
pytestmark = [BVJ]
EVERY_LEVEL = [pytest.mark.L2, pytest.mark.L3, pytest.mark.L4]
METADATA = "/.well-known/oauth-authorization-server"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _basic(client_id: str, client_secret: str) -> dict[str, str]:
    """RFC 6749 section 2.3.1: both form-urlencoded, then HTTP Basic."""
    raw = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    return {"Authorization": f"Basic {base64.b64encode(raw).decode()}"}


async def _token_request(
    client: httpx.AsyncClient, body: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post(
        "/auth/token", content=body.encode(), headers={**FORM, **(headers or {})}
    )


async def _metadata(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get(METADATA)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


def _path(url: str) -> str:
    return urlsplit(url).path


async def _session_count(client: httpx.AsyncClient, owner: KeyUser) -> int:
    """The owner's live sessions, as one more session of theirs lists them (that one too)."""
    probe = await login(client, owner.api_key)
    response = await client.get("/sessions", headers=probe.bearer)
    assert response.status_code == 200, response.text
    return len(response.json()["sessions"]) - 1


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_the_metadata_document_leads_a_client_to_the_token_endpoint(
    auth_client: httpx.AsyncClient,
) -> None:
    """RFC 8414 section 2: issuer, token_endpoint, jwks_uri, the grant and the client
    authentication methods the endpoint supports."""
    document = await _metadata(auth_client)

    issuer = urlsplit(document["issuer"])
    assert issuer.scheme in ("http", "https"), document["issuer"]
    assert issuer.netloc, document["issuer"]
    assert (issuer.query, issuer.fragment) == ("", ""), "RFC 8414: no query or fragment"
    for endpoint in ("token_endpoint", "jwks_uri"):
        assert urlsplit(document[endpoint]).netloc == issuer.netloc, endpoint
    assert _path(document["token_endpoint"]) == "/auth/token"
    assert document["grant_types_supported"] == ["client_credentials"]
    assert {"client_secret_basic", "client_secret_post"} <= set(
        document["token_endpoint_auth_methods_supported"]
    )
    assert isinstance(document["response_types_supported"], list)
    # The keys it names are the keys that sign the tokens.
    jwks = await auth_client.get(_path(document["jwks_uri"]))
    assert jwks.status_code == 200
    assert jwks.json() == (await auth_client.get("/.well-known/jwks.json")).json()


@pytest.fixture
async def https_auth_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """apex.auth published at an https URL, as in any real deployment."""
    async with clean_platform.client("auth", APEX_PUBLIC_URL="https://auth.apex.test") as client:
        yield client


@pytest.mark.L2
@pytest.mark.L3
async def test_authlib_accepts_the_metadata(https_auth_client: httpx.AsyncClient) -> None:
    """The issuer is the URL the document is published under (RFC 8414 section 3.3), and
    authlib's own checks of the members a client-credentials client needs pass."""
    from authlib.oauth2.rfc8414 import AuthorizationServerMetadata, get_well_known_url  # noqa: PLC0415

    document = await _metadata(https_auth_client)

    assert document["issuer"] == "https://auth.apex.test"
    assert get_well_known_url(document["issuer"]) == METADATA
    metadata = AuthorizationServerMetadata(document)
    metadata.validate_issuer()
    metadata.validate_token_endpoint()
    metadata.validate_jwks_uri()
    metadata.validate_grant_types_supported()
    metadata.validate_token_endpoint_auth_methods_supported()
    assert metadata.token_endpoint == "https://auth.apex.test/auth/token"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_authlib_obtains_a_token_that_opens_the_protected_routes(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, method: str
) -> None:
    from authlib.integrations.httpx_client import AsyncOAuth2Client  # noqa: PLC0415

    owner = await auth_admin.key_user(scopes=("agents:run", "billing:read"))
    client_id, client_secret = owner.client_credentials
    token_endpoint = str(
        auth_client.base_url.join(_path((await _metadata(auth_client))["token_endpoint"]))
    )

    async with AsyncOAuth2Client(
        client_id=client_id,
        client_secret=client_secret,
        token_endpoint_auth_method=method,
        transport=platform_transport(auth_client),
        base_url=str(auth_client.base_url),
    ) as oauth:
        token = await oauth.fetch_token(token_endpoint, grant_type="client_credentials")
        profile = await oauth.get("/me")

    assert token["token_type"].lower() == "bearer"
    assert isinstance(token["expires_in"], int)
    assert token["expires_in"] > 0
    assert "refresh_token" not in token, "RFC 6749 4.4.3: no refresh token"
    assert profile.status_code == 200, profile.text
    assert (profile.json()["user_id"], profile.json()["api_key_id"]) == (
        owner.user_id,
        owner.key_id,
    )
    assert profile.json()["auth_method"] == "api_key"
    assert sorted(token["scope"].split()) == ["agents:run", "billing:read"]
    claims = await JwksVerifier(auth_client).verify(token["access_token"])
    assert claims["sub"] == owner.user_id


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_a_request_written_from_the_rfc_gets_a_token(
    auth_client: httpx.AsyncClient, key_user: KeyUser
) -> None:
    """Section 4.4.2 request with section 2.3.1 client authentication; section 5.1 answer."""
    response = await _token_request(
        auth_client, "grant_type=client_credentials", _basic(*key_user.client_credentials)
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert set(body) <= {"access_token", "token_type", "expires_in", "scope"}, body
    assert body["token_type"].lower() == "bearer"
    assert isinstance(body["expires_in"], int)
    assert body["expires_in"] > 0
    profile = await me(auth_client, body["access_token"])
    assert profile.status_code == 200, profile.text
    assert (profile.json()["user_id"], profile.json()["api_key_id"]) == (
        key_user.user_id,
        key_user.key_id,
    )


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_the_session_of_a_client_token_ends_with_the_token(
    auth_client: httpx.AsyncClient, key_user: KeyUser
) -> None:
    """No refresh token, so nothing outlives the access token: its session ends with it."""
    response = await _token_request(
        auth_client, "grant_type=client_credentials", _basic(*key_user.client_credentials)
    )
    body = response.json()
    token = {"Authorization": f"Bearer {body['access_token']}"}

    sessions = (await auth_client.get("/sessions", headers=token)).json()["sessions"]

    current = next(s for s in sessions if s["current"])
    lifetime = dt.datetime.fromisoformat(current["expires_at"]) - dt.datetime.fromisoformat(
        current["created_at"]
    )
    assert abs(lifetime.total_seconds() - body["expires_in"]) < 1, current


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_a_scope_narrows_the_token_and_a_scope_the_key_lacks_is_refused(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin
) -> None:
    owner = await auth_admin.key_user(scopes=("agents:run", "billing:read"))
    basic = _basic(*owner.client_credentials)

    narrow = await _token_request(
        auth_client, "grant_type=client_credentials&scope=billing%3Aread", basic
    )
    wider = await _token_request(
        auth_client, "grant_type=client_credentials&scope=billing%3Awrite+agents%3Arun", basic
    )

    assert narrow.status_code == 200, narrow.text
    assert narrow.json()["scope"] == "billing:read"
    profile = await me(auth_client, narrow.json()["access_token"])
    assert profile.json()["scopes"] == ["billing:read"]
    assert (wider.status_code, error_of(wider)) == (400, "invalid_scope")
    assert await _session_count(auth_client, owner) == 1, "only the narrow request opened one"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_failed_client_authentication_is_an_invalid_client(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, key_user: KeyUser
) -> None:
    """Section 5.2: 401 invalid_client; with HTTP Basic, the Basic challenge."""
    client_id, client_secret = key_user.client_credentials
    other = await auth_admin.key_user()
    wrong_secret = client_secret[:-4] + ("AAAA" if not client_secret.endswith("AAAA") else "BBBB")
    grant = "grant_type=client_credentials"
    attempts = {
        "wrong secret, basic": (grant, _basic(client_id, wrong_secret)),
        "another key's secret": (grant, _basic(client_id, other.api_key)),
        "unknown client": (grant, _basic("z" * 12, client_secret)),
        "malformed basic": (grant, {"Authorization": "Basic !!!"}),
        "wrong secret, form": (f"{grant}&client_id={client_id}&client_secret={wrong_secret}", {}),
        "no credentials": (grant, {}),
    }

    for name, (body, headers) in attempts.items():
        response = await _token_request(auth_client, body, headers)
        assert (response.status_code, error_of(response)) == (401, "invalid_client"), name
        assert "access_token" not in response.json(), name
        if "Authorization" in headers:
            assert "basic" in challenges(response), (name, response.headers)

    assert await _session_count(auth_client, key_user) == 0, "a refused request opened a session"
    rejected = [
        e["detail"]["reason"]
        for e in await auth_admin.audit(key_user.key_id)
        if e["action"] == "api_key.rejected"
    ]
    assert rejected.count("wrong_secret") >= 2, rejected


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_a_revoked_key_is_an_invalid_client(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, key_user: KeyUser
) -> None:
    await auth_admin.revoke_api_key(key_user.key_id)

    response = await _token_request(
        auth_client, "grant_type=client_credentials", _basic(*key_user.client_credentials)
    )

    assert (response.status_code, error_of(response)) == (401, "invalid_client")
    assert "basic" in challenges(response)


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("", "invalid_request"),
        ("scope=agents%3Arun", "invalid_request"),
        ("grant_type=client_credentials&grant_type=client_credentials", "invalid_request"),
        ("grant_type=password&username=a&password=b", "unsupported_grant_type"),
        ("grant_type=authorization_code&code=x", "unsupported_grant_type"),
        ("grant_type=refresh_token&refresh_token=x", "unsupported_grant_type"),
    ],
    ids=["empty", "no-grant-type", "repeated-parameter", "password", "code", "refresh"],
)
async def test_bad_token_requests_get_the_rfc_error(
    auth_client: httpx.AsyncClient, key_user: KeyUser, body: str, error: str
) -> None:
    response = await _token_request(auth_client, body, _basic(*key_user.client_credentials))

    assert (response.status_code, error_of(response)) == (400, error), response.text
    assert response.headers["content-type"].startswith("application/json")
    assert await _session_count(auth_client, key_user) == 0


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_client_credentials_sent_two_ways_at_once_are_refused(
    auth_client: httpx.AsyncClient, key_user: KeyUser
) -> None:
    """Section 2.3: a client MUST NOT use more than one authentication method per request."""
    client_id, client_secret = key_user.client_credentials

    response = await _token_request(
        auth_client,
        f"grant_type=client_credentials&client_id={client_id}&client_secret={client_secret}",
        _basic(client_id, client_secret),
    )

    assert (response.status_code, error_of(response)) == (400, "invalid_request")
    assert await _session_count(auth_client, key_user) == 0


@pytest.mark.L2
@pytest.mark.L3
async def test_client_credentials_draw_on_the_keys_exchange_limit(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin
) -> None:
    """The free tier's 10 exchanges a minute per key (APEX_AUTH_RATE_LIMITS) count OAuth
    requests and JSON exchanges alike."""
    free = await auth_admin.key_user(tier="free")
    basic = _basic(*free.client_credentials)
    for _ in range(5):
        await login(auth_client, free.api_key)
    for _ in range(5):
        response = await _token_request(auth_client, "grant_type=client_credentials", basic)
        assert response.status_code == 200, response.text

    over = await _token_request(auth_client, "grant_type=client_credentials", basic)

    assert (over.status_code, error_of(over)) == (429, "rate_limited")
    assert 1 <= int(over.headers["Retry-After"]) <= 60
