"""RFC 7662 token introspection of context tokens, as a client other than ours asks it.

`POST /auth/context-token/introspect` takes the form-encoded `token=` parameter (section
2.1; the JSON body `{"token"}` still works), answers only callers that authenticate (the
client credentials of an API key, HTTP Basic or in the form, or a Bearer access token),
and names the token's type as an OAuth token type (section 2.2, RFC 6749 section 7.1).
authlib's OAuth 2.0 client is the independent client: it introspects as RFC 7662 says.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from auth_tests.client import (
    KeyUser,
    Tokens,
    challenges,
    error_of,
    login,
    platform_transport,
)

BVJ = pytest.mark.bvj(
    segment="enterprise", goal="Interoperability: downstream services check tokens by RFC 7662",
    mrr=20000, scenario="001#2",
)  # fmt: skip
pytestmark = [BVJ, pytest.mark.L2, pytest.mark.L3, pytest.mark.L4]
INTROSPECT = "/auth/context-token/introspect"


def _basic(client_id: str, client_secret: str) -> dict[str, str]:
    raw = f"{client_id}:{client_secret}".encode()
    return {"Authorization": f"Basic {base64.b64encode(raw).decode()}"}


async def _minted(client: httpx.AsyncClient, user: KeyUser) -> tuple[Tokens, dict[str, Any]]:
    """A session of `user` and the context-token response it got for "agents"."""
    tokens = await login(client, user.api_key)
    response = await client.post(
        "/auth/context-token", json={"audience": "agents"}, headers=tokens.bearer
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return tokens, body


async def test_the_form_encoded_token_of_an_authenticated_caller_is_introspected(
    auth_client: httpx.AsyncClient, key_user: KeyUser, resource_server: KeyUser
) -> None:
    tokens, minted = await _minted(auth_client, key_user)

    response = await auth_client.post(
        INTROSPECT,
        content=f"token={minted['context_token']}&token_type_hint=access_token".encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            **_basic(*resource_server.client_credentials),
        },
    )

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["active"] is True
    assert (body["sub"], body["sid"]) == (key_user.user_id, tokens.session_id)
    assert body["aud"] in ("agents", ["agents"])
    assert isinstance(body["exp"], int)
    # An OAuth token type (RFC 6749 section 7.1), the one the token was issued as.
    assert body["token_type"] == minted["token_type"]
    assert body["token_type"].lower() == "bearer"


async def test_the_json_body_still_works(
    auth_client: httpx.AsyncClient, key_user: KeyUser, resource_server: KeyUser
) -> None:
    _, minted = await _minted(auth_client, key_user)

    response = await auth_client.post(
        INTROSPECT, json={"token": minted["context_token"]}, auth=resource_server.client_credentials
    )

    assert response.status_code == 200, response.text
    assert response.json()["active"] is True


async def test_client_credentials_in_the_form_and_bearer_tokens_authenticate_too(
    auth_client: httpx.AsyncClient, key_user: KeyUser, resource_server: KeyUser
) -> None:
    """RFC 7662 section 2.1: client authentication (RFC 6749 section 2.3.1, either way) or
    a separate Bearer access token, e.g. one the service got by client credentials."""
    _, minted = await _minted(auth_client, key_user)
    client_id, client_secret = resource_server.client_credentials
    service = await login(auth_client, resource_server.api_key)

    in_form = await auth_client.post(
        INTROSPECT,
        data={
            "token": minted["context_token"],
            "client_id": client_id,
            "client_secret": client_secret,
        },
    )
    as_bearer = await auth_client.post(
        INTROSPECT, data={"token": minted["context_token"]}, headers=service.bearer
    )

    for response in (in_form, as_bearer):
        assert response.status_code == 200, response.text
        assert response.json()["active"] is True


async def test_an_unauthenticated_caller_learns_nothing(
    auth_client: httpx.AsyncClient, key_user: KeyUser
) -> None:
    """Section 2.1: the endpoint MUST require authorization (no token scanning)."""
    _, minted = await _minted(auth_client, key_user)

    response = await auth_client.post(INTROSPECT, data={"token": minted["context_token"]})

    assert response.status_code == 401, response.text
    assert "active" not in response.json()
    found = challenges(response)
    assert {"basic", "bearer"} <= set(found), found
    assert "error" not in found["bearer"], "no credentials were sent (RFC 6750 section 3.1)"


async def test_wrong_client_credentials_are_an_invalid_client(
    auth_client: httpx.AsyncClient, key_user: KeyUser, resource_server: KeyUser
) -> None:
    """Section 2.3: invalid client credentials get a 401 as in RFC 6749 section 5.2, with
    the challenge of the scheme the client used."""
    _, minted = await _minted(auth_client, key_user)
    client_id, client_secret = resource_server.client_credentials
    wrong_secret = client_secret[:-4] + ("AAAA" if not client_secret.endswith("AAAA") else "BBBB")

    for client in ((client_id, wrong_secret), ("z" * 12, client_secret), (key_user.key_id, "")):
        response = await auth_client.post(
            INTROSPECT, data={"token": minted["context_token"]}, headers=_basic(*client)
        )
        assert (response.status_code, error_of(response)) == (401, "invalid_client"), client
        assert "basic" in challenges(response), response.headers
        assert "active" not in response.json()


async def test_an_invalid_bearer_token_is_an_invalid_token(
    auth_client: httpx.AsyncClient, key_user: KeyUser
) -> None:
    tokens, minted = await _minted(auth_client, key_user)
    assert (await auth_client.post("/auth/logout", headers=tokens.bearer)).status_code == 204

    response = await auth_client.post(
        INTROSPECT, data={"token": minted["context_token"]}, headers=tokens.bearer
    )

    assert response.status_code == 401, response.text
    assert challenges(response)["bearer"].get("error") == "invalid_token"


async def test_a_request_without_the_token_is_an_invalid_request(
    auth_client: httpx.AsyncClient, resource_server: KeyUser
) -> None:
    response = await auth_client.post(
        INTROSPECT,
        data={"token_type_hint": "access_token"},
        auth=resource_server.client_credentials,
    )
    assert (response.status_code, error_of(response)) == (400, "invalid_request")


async def test_authlib_introspects_as_rfc_7662_says(
    auth_client: httpx.AsyncClient, key_user: KeyUser, resource_server: KeyUser
) -> None:
    """authlib's OAuth 2.0 client, authenticated with the service's client credentials."""
    from authlib.integrations.httpx_client import AsyncOAuth2Client  # noqa: PLC0415

    tokens, minted = await _minted(auth_client, key_user)
    client_id, client_secret = resource_server.client_credentials
    async with AsyncOAuth2Client(
        client_id=client_id,
        client_secret=client_secret,
        token_endpoint_auth_method="client_secret_basic",
        transport=platform_transport(auth_client),
        base_url=str(auth_client.base_url),
    ) as oauth:
        url = str(auth_client.base_url.join(INTROSPECT))
        active = await oauth.introspect_token(url, token=minted["context_token"])
        assert (await auth_client.post("/auth/logout", headers=tokens.bearer)).status_code == 204
        inactive = await oauth.introspect_token(url, token=minted["context_token"])

    assert active.status_code == 200, active.text
    assert (active.json()["active"], active.json()["sub"]) == (True, key_user.user_id)
    assert inactive.json() == {"active": False}
