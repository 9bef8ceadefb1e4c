"""The fakes' answers where the RFCs say how a refusal reads and where a token may travel.

- The OIDC fake's token endpoint: a 401 (invalid_client) challenges with the scheme the
  client authenticates with, HTTP Basic (RFC 6749 section 5.2; RFC 7235: every 401 does).
- The Twilio fake: its 401 challenges with Basic too, as Twilio does.
- The OIDC fake's userinfo takes the access token in the Authorization header or, on a
  POST, in the form body (RFC 6750 sections 2.1, 2.2), never both; no token is a challenge
  without an error code, a wrong one `error="invalid_token"` (section 3).
Held to authlib's client where one speaks the protocol, and to plain httpx requests.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

import httpx
import pytest

REDIRECT_URI = "http://app.apex.test/callback"


def _scheme(response: httpx.Response) -> str:
    challenge = response.headers.get("www-authenticate", "")
    return challenge.split(" ", 1)[0].lower()


def _access_token(fake_idp) -> str:
    """A code + PKCE login at the fake, written from RFC 6749 and RFC 7636: its token."""
    fake_idp.login_as("user-9", "ida@example.test")
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    authorize = httpx.get(
        f"{fake_idp.issuer}/authorize",
        params={
            "response_type": "code",
            "client_id": fake_idp.client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": "openid email",
            "state": "s9",
            "code_challenge": challenge.rstrip(b"=").decode(),
            "code_challenge_method": "S256",
        },
    )
    code = httpx.URL(authorize.headers["location"]).params["code"]
    token = httpx.post(
        f"{fake_idp.issuer}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
        auth=(fake_idp.client_id, fake_idp.client_secret),
    )
    assert token.status_code == 200, token.text
    access: str = token.json()["access_token"]
    return access


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_an_invalid_client_is_challenged_with_basic(fake_idp, method):
    form = {"grant_type": "authorization_code", "code": "x", "redirect_uri": REDIRECT_URI}
    token = f"{fake_idp.issuer}/token"
    if method == "client_secret_basic":
        response = httpx.post(token, data=form, auth=(fake_idp.client_id, "no"))
    else:
        form |= {"client_id": fake_idp.client_id, "client_secret": "no"}
        response = httpx.post(token, data=form)

    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
    assert _scheme(response) == "basic", response.headers


def test_authlib_sees_the_invalid_client(fake_idp):
    from authlib.integrations.base_client import OAuthError
    from authlib.integrations.httpx_client import OAuth2Client

    client = OAuth2Client(fake_idp.client_id, "not-the-secret", redirect_uri=REDIRECT_URI)
    with pytest.raises(OAuthError, match="invalid_client"):
        client.fetch_token(f"{fake_idp.issuer}/token", code="x", grant_type="authorization_code")


def test_the_twilio_fake_challenges_wrong_credentials(fake_sms):
    url = f"{fake_sms.base_url}/2010-04-01/Accounts/{fake_sms.account_sid}/Messages.json"
    form = {"To": "+15550000002", "From": fake_sms.from_number, "Body": "hi"}

    wrong = httpx.post(url, data=form, auth=(fake_sms.account_sid, "not-the-token"))
    missing = httpx.post(url, data=form)

    for response in (wrong, missing):
        assert (response.status_code, response.json()["code"]) == (401, 20003)
        assert _scheme(response) == "basic", response.headers
    assert fake_sms.messages == []


def test_userinfo_takes_the_token_in_the_header_or_in_a_form_body(fake_idp):
    token = _access_token(fake_idp)
    userinfo = f"{fake_idp.issuer}/userinfo"

    in_header = httpx.get(userinfo, headers={"Authorization": f"Bearer {token}"})
    in_form = httpx.post(userinfo, data={"access_token": token})

    assert in_header.status_code == in_form.status_code == 200, in_form.text
    assert in_form.json() == in_header.json()
    assert in_form.json()["email"] == "ida@example.test"


def test_authlib_reads_userinfo_with_the_token_in_the_body(fake_idp):
    from authlib.integrations.httpx_client import OAuth2Client

    token = _access_token(fake_idp)
    client = OAuth2Client(
        fake_idp.client_id, token={"access_token": token, "token_type": "Bearer"},
        token_placement="body",
    )  # fmt: skip

    # authlib appends access_token to the body; the form's media type is the caller's to
    # declare (RFC 6750 section 2.2 requires it).
    response = client.post(
        f"{fake_idp.issuer}/userinfo",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["sub"] == "user-9"


def test_userinfo_refusals_read_as_rfc_6750_says(fake_idp):
    token = _access_token(fake_idp)
    userinfo = f"{fake_idp.issuer}/userinfo"

    none = httpx.get(userinfo)
    wrong = httpx.post(userinfo, data={"access_token": "not-a-token"})
    both = httpx.post(
        userinfo, data={"access_token": token}, headers={"Authorization": f"Bearer {token}"}
    )
    in_query_only = httpx.get(userinfo, params={"access_token": token})

    assert none.status_code == 401
    assert none.headers["www-authenticate"].lower().startswith("bearer")
    assert "error=" not in none.headers["www-authenticate"], "no credentials: no error code"
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert both.status_code == 400, "RFC 6750 section 2: one method per request"
    assert 'error="invalid_request"' in both.headers["www-authenticate"]
    assert in_query_only.status_code == 401, "the fake takes no token from the URL"
