"""RFC 6750 section 3: the challenge of a 401 on a route that takes a Bearer access token, so
that clients other than ours know what to do.

A request without credentials (or with another scheme) gets `WWW-Authenticate: Bearer` with
no error code (section 3.1); a token that is malformed, expired or whose session ended gets
`error="invalid_token"` (a client should fetch a new one), while the platform's JSON body
keeps the specific reason (`invalid_token`, `token_expired`, `session_revoked`).
"""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest

from auth_tests.client import KeyUser, challenges, error_of, login, sign_as_platform

BVJ = pytest.mark.bvj(
    segment="platform", goal="Interoperability: any OAuth 2.0 client understands our 401s",
    mrr=75000, scenario="002#4",
)  # fmt: skip
pytestmark = [BVJ]

# Routes that take a Bearer access token, and a request to each.
PROTECTED = [
    ("GET", "/me", None),
    ("GET", "/sessions", None),
    ("POST", "/authz/check", {"permission": "agents:run"}),
    ("POST", "/auth/context-token", {"audience": "agents"}),
]


async def _call(
    client: httpx.AsyncClient, route: tuple[str, str, Any], headers: dict[str, str]
) -> httpx.Response:
    method, path, body = route
    return await client.request(method, path, json=body, headers=headers)


def _bearer_challenge(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 401, response.text
    found = challenges(response)
    assert "bearer" in found, (
        f"no Bearer challenge: {response.headers.get_list('www-authenticate')}"
    )
    return found["bearer"]


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@pytest.mark.parametrize("route", PROTECTED, ids=[path for _, path, _ in PROTECTED])
@pytest.mark.parametrize(
    "authorization", [None, "Basic dXNlcjpwYXNz", "Token abc"], ids=["none", "basic", "token"]
)
async def test_no_bearer_credentials_get_a_challenge_without_an_error_code(
    auth_client: httpx.AsyncClient, route: tuple[str, str, Any], authorization: str | None
) -> None:
    """Section 3.1: "If the request lacks any authentication information (e.g., the client was
    unaware that authentication is necessary or attempted using an unsupported authentication
    method), the resource server SHOULD NOT include an error code"."""
    headers = {} if authorization is None else {"Authorization": authorization}

    response = await _call(auth_client, route, headers)

    assert "error" not in _bearer_challenge(response), response.headers["www-authenticate"]
    assert error_of(response) == "invalid_token"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@pytest.mark.parametrize("route", PROTECTED, ids=[path for _, path, _ in PROTECTED])
@pytest.mark.parametrize("token", ["not.a.jwt", "x" * 40, "a.b.c"])
async def test_a_malformed_token_is_an_invalid_token(
    auth_client: httpx.AsyncClient, route: tuple[str, str, Any], token: str
) -> None:
    response = await _call(auth_client, route, {"Authorization": f"Bearer {token}"})

    assert _bearer_challenge(response).get("error") == "invalid_token"
    assert error_of(response) == "invalid_token"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@pytest.mark.parametrize("route", PROTECTED, ids=[path for _, path, _ in PROTECTED])
async def test_the_token_of_an_ended_session_is_an_invalid_token(
    auth_client: httpx.AsyncClient, key_user: KeyUser, route: tuple[str, str, Any]
) -> None:
    tokens = await login(auth_client, key_user.api_key)
    assert (await auth_client.post("/auth/logout", headers=tokens.bearer)).status_code == 204

    response = await _call(auth_client, route, tokens.bearer)

    assert _bearer_challenge(response).get("error") == "invalid_token"
    assert error_of(response) == "session_revoked", "the JSON body keeps the reason"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.parametrize("route", PROTECTED, ids=[path for _, path, _ in PROTECTED])
async def test_an_expired_token_is_an_invalid_token(
    auth_client: httpx.AsyncClient,
    key_user: KeyUser,
    jwt_signing_key: str,
    route: tuple[str, str, Any],
) -> None:
    """Signed with the platform's own key, expired an hour ago: nothing else is wrong."""
    tokens = await login(auth_client, key_user.api_key)
    claims = jwt.decode(tokens.access, options={"verify_signature": False})
    header = jwt.get_unverified_header(tokens.access)
    expired = sign_as_platform(
        {**claims, "iat": claims["iat"] - 7200, "nbf": claims["iat"] - 7200,
         "exp": claims["iat"] - 3600},
        jwt_signing_key, header["kid"],
    )  # fmt: skip

    response = await _call(auth_client, route, {"Authorization": f"Bearer {expired}"})

    assert _bearer_challenge(response).get("error") == "invalid_token"
    assert error_of(response) == "token_expired", "the JSON body keeps the reason"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
async def test_the_admin_api_challenges_the_same_way(auth_client: httpx.AsyncClient) -> None:
    body = {"email": "x@tests.apex.invalid", "tier": "free"}
    missing = await auth_client.post("/admin/users", json=body)
    wrong = await auth_client.post(
        "/admin/users", json=body, headers={"Authorization": "Bearer not-the-admin-token"}
    )

    assert "error" not in _bearer_challenge(missing)
    assert _bearer_challenge(wrong).get("error") == "invalid_token"
    assert error_of(missing) == error_of(wrong) == "invalid_token"
