"""The fakes of third parties, held to the official clients of the real ones."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import smtplib
import zlib
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from conftest import finish, inner_env
from lxml import etree

from apex_testkit._fakes.saml import WRAPPING_EMAIL
from apex_testkit._sut.wiring import service_env
from apex_testkit._waiting import DeadlineExceeded, wait_for

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"


# -- OIDC ---------------------------------------------------------------------------------


def _authlib_login(fake_idp, *, verifier: str, nonce: str):
    """authlib's OAuth2 client: authorization URL, the redirect back, the code exchange."""
    from authlib.integrations.httpx_client import OAuth2Client

    meta = httpx.get(fake_idp.discovery_url).json()
    client = OAuth2Client(
        fake_idp.client_id,
        fake_idp.client_secret,
        scope="openid email profile groups",
        redirect_uri="http://app.apex.test/callback",
        code_challenge_method="S256",
    )
    url, state = client.create_authorization_url(
        meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )
    answer = httpx.get(url)
    assert answer.status_code == 302, answer.text
    token = client.fetch_token(
        meta["token_endpoint"],
        authorization_response=answer.headers["location"],
        state=state,
        code_verifier=verifier,
    )
    return meta, client, token, answer.headers["location"]


def test_authlib_completes_code_pkce_and_validates_the_id_token(fake_idp):
    from authlib.common.security import generate_token
    from joserfc import jwt
    from joserfc.jwk import KeySet

    fake_idp.login_as("user-1", "ada@example.test", groups=["eng", "ops"], tenant="t-1")
    verifier, nonce = generate_token(48), generate_token(16)
    meta, client, token, _ = _authlib_login(fake_idp, verifier=verifier, nonce=nonce)
    assert meta["issuer"] == fake_idp.issuer
    keys = KeySet.import_key_set(httpx.get(meta["jwks_uri"]).json())
    claims = jwt.decode(token["id_token"], keys, algorithms=["RS256"]).claims
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": fake_idp.issuer},
        aud={"essential": True, "value": fake_idp.client_id},
        nonce={"essential": True, "value": nonce},
        sub={"essential": True},
    ).validate(claims)
    assert (claims["sub"], claims["email"], claims["groups"]) == (
        "user-1",
        "ada@example.test",
        ["eng", "ops"],
    )
    assert claims["tenant"] == "t-1"
    info = client.get(meta["userinfo_endpoint"]).json()
    assert info["email"] == "ada@example.test"
    token_request = next(r for r in fake_idp.requests if r.path == "/token")
    assert token_request.form["code_verifier"] == verifier


def test_the_token_endpoint_refuses_what_a_real_one_refuses(fake_idp):
    from authlib.common.security import generate_token
    from authlib.integrations.base_client import OAuthError

    fake_idp.login_as("user-2", "bob@example.test")
    _, _, _, location = _authlib_login(
        fake_idp, verifier=generate_token(48), nonce=generate_token(16)
    )
    code = httpx.URL(location).params["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "http://app.apex.test/callback",
        "code_verifier": "x" * 43,
    }
    auth = (fake_idp.client_id, fake_idp.client_secret)
    reused = httpx.post(f"{fake_idp.issuer}/token", data=form, auth=auth)
    assert (reused.status_code, reused.json()["error"]) == (400, "invalid_grant")
    wrong_secret = httpx.post(f"{fake_idp.issuer}/token", data=form, auth=(auth[0], "nope"))
    assert (wrong_secret.status_code, wrong_secret.json()["error"]) == (401, "invalid_client")
    # A fresh code with the wrong PKCE verifier.
    authorize = httpx.get(
        f"{fake_idp.issuer}/authorize",
        params={
            "response_type": "code",
            "client_id": fake_idp.client_id,
            "redirect_uri": form["redirect_uri"],
            "scope": "openid",
            "state": "s1",
            "code_challenge": "A" * 43,
            "code_challenge_method": "S256",
        },
    )
    fresh = httpx.URL(authorize.headers["location"]).params
    assert fresh["state"] == "s1"
    bad_pkce = httpx.post(
        f"{fake_idp.issuer}/token", data={**form, "code": fresh["code"]}, auth=auth
    )
    assert (bad_pkce.status_code, bad_pkce.json()["error"]) == (400, "invalid_grant")
    # A scripted error reaches authlib as an OAuthError.
    fake_idp.fail_next_token("invalid_grant")
    with pytest.raises(OAuthError, match="invalid_grant"):
        _authlib_login(fake_idp, verifier=generate_token(48), nonce=generate_token(16))


def test_scripted_id_tokens_and_key_rotation(fake_idp):
    import jwt

    fake_idp.login_as("user-3", "cy@example.test")

    def id_token() -> str:
        location = httpx.get(
            f"{fake_idp.issuer}/authorize",
            params={
                "response_type": "code",
                "client_id": fake_idp.client_id,
                "redirect_uri": "http://app.apex.test/cb",
                "scope": "openid",
                "nonce": "n-1",
            },
        ).headers["location"]
        answer = httpx.post(
            f"{fake_idp.issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": httpx.URL(location).params["code"],
                "redirect_uri": "http://app.apex.test/cb",
                "client_id": fake_idp.client_id,
                "client_secret": fake_idp.client_secret,
            },
        )
        return str(answer.json()["id_token"])

    def verify(token: str) -> dict:
        keys = jwt.PyJWKClient(fake_idp.jwks_url, cache_keys=False)
        key = keys.get_signing_key_from_jwt(token)
        return jwt.decode(
            token, key, algorithms=["RS256"], audience=fake_idp.client_id, issuer=fake_idp.issuer
        )

    assert verify(id_token())["nonce"] == "n-1"
    fake_idp.next_id_token(expired=True)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(id_token())
    fake_idp.next_id_token(bad_signature=True)
    with pytest.raises(jwt.InvalidSignatureError):
        verify(id_token())
    fake_idp.next_id_token(audience="someone-else")
    with pytest.raises(jwt.InvalidAudienceError):
        verify(id_token())
    fake_idp.next_id_token(alg_none=True)
    assert jwt.get_unverified_header(id_token())["alg"] == "none"
    fake_idp.next_id_token(nonce="other")
    assert verify(id_token())["nonce"] == "other"
    old_kid = jwt.get_unverified_header(id_token())["kid"]
    new_kid = fake_idp.rotate_keys()
    token = id_token()
    assert jwt.get_unverified_header(token)["kid"] == new_kid != old_kid
    assert verify(token)["sub"] == "user-3"
    kids = {k["kid"] for k in httpx.get(fake_idp.jwks_url).json()["keys"]}
    assert kids == {old_kid, new_kid}


def test_an_id_token_can_leave_out_optional_claims(fake_idp):
    """`without` drops claims (OIDC Core 5.1 makes email_verified optional); what stays
    is still a valid RS256 id_token."""
    import jwt

    fake_idp.login_as("user-4", "di@example.test")
    redirect = "http://app.apex.test/cb"

    def claims() -> dict:
        location = httpx.get(
            f"{fake_idp.issuer}/authorize",
            params={
                "response_type": "code",
                "client_id": fake_idp.client_id,
                "redirect_uri": redirect,
                "scope": "openid email",
            },
        ).headers["location"]
        answer = httpx.post(
            f"{fake_idp.issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": httpx.URL(location).params["code"],
                "redirect_uri": redirect,
            },
            auth=(fake_idp.client_id, fake_idp.client_secret),
        )
        token = answer.json()["id_token"]
        key = jwt.PyJWKClient(fake_idp.jwks_url).get_signing_key_from_jwt(token)
        return jwt.decode(token, key, algorithms=["RS256"], audience=fake_idp.client_id)

    fake_idp.next_id_token(without=("email_verified",))
    first = claims()
    assert "email_verified" not in first
    assert first["email"] == "di@example.test"
    assert claims()["email_verified"] is True, "the next id_token is whole again"


# -- SAML ---------------------------------------------------------------------------------


def _authn_request(request_id: str) -> str:
    xml = (
        f'<samlp:AuthnRequest xmlns:samlp="{SAMLP}" xmlns:saml="{SAML}" ID="{request_id}" '
        f'Version="2.0" IssueInstant="2026-01-01T00:00:00Z" '
        f'AssertionConsumerServiceURL="http://sp.apex.test/acs">'
        f"<saml:Issuer>sp-selftest</saml:Issuer></samlp:AuthnRequest>"
    )
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = deflate.compress(xml.encode()) + deflate.flush()
    return base64.b64encode(raw).decode()


def _metadata_cert(fake_saml_idp) -> tuple[str, str]:
    root = etree.fromstring(httpx.get(fake_saml_idp.metadata_url).content)
    cert = root.find(f".//{{{DS}}}X509Certificate").text
    sso = root.find(".//{urn:oasis:names:tc:SAML:2.0:metadata}SingleSignOnService").get("Location")
    return f"-----BEGIN CERTIFICATE-----\n{cert}\n-----END CERTIFICATE-----\n", sso


def test_signxml_verifies_responses_with_the_metadata_cert(fake_saml_idp):
    from signxml import XMLVerifier
    from signxml.exceptions import InvalidInput, InvalidSignature

    cert, sso = _metadata_cert(fake_saml_idp)
    fake_saml_idp.login_as("ada@example.test", "ada@example.test", groups=["eng"])
    page = httpx.get(sso, params={"SAMLRequest": _authn_request("_req1"), "RelayState": "rs-1"})
    assert page.status_code == 200, page.text
    assert fake_saml_idp.authn_requests[0].acs_url == "http://sp.apex.test/acs"
    form = etree.fromstring(page.content, etree.HTMLParser())
    fields = {i.get("name"): i.get("value") for i in form.iter("input")}
    assert fields["RelayState"] == "rs-1"
    assertion = XMLVerifier().verify(base64.b64decode(fields["SAMLResponse"]), x509_cert=cert)
    signed = assertion.signed_xml
    assert signed.tag == f"{{{SAML}}}Assertion"
    assert signed.find(f".//{{{SAML}}}Audience").text == "sp-selftest"
    confirmation = signed.find(f".//{{{SAML}}}SubjectConfirmationData")
    assert confirmation.get("InResponseTo") == "_req1"
    assert confirmation.get("Recipient") == "http://sp.apex.test/acs"
    values = [v.text for v in signed.iter(f"{{{SAML}}}AttributeValue")]
    assert values == ["ada@example.test", "eng"]

    whole = fake_saml_idp.response_for(
        "_req1", "ada@example.test", "ada@example.test", ["eng"], signed="response"
    )
    signed = XMLVerifier().verify(base64.b64decode(whole), x509_cert=cert).signed_xml
    assert signed.tag == f"{{{SAMLP}}}Response"

    tampered = fake_saml_idp.response_for("_req1", "a", "ada@example.test", tamper="modify_email")
    with pytest.raises(InvalidSignature):
        XMLVerifier().verify(base64.b64decode(tampered), x509_cert=cert)
    unsigned = fake_saml_idp.response_for("_req1", "a", "ada@example.test", signed=None)
    with pytest.raises(InvalidInput, match="Signature"):
        XMLVerifier().verify(base64.b64decode(unsigned), x509_cert=cert)

    # Wrapping: the first assertion is the attacker's; what signxml vouches for is not.
    wrapped = base64.b64decode(
        fake_saml_idp.response_for(
            "_req1", "ada@example.test", "ada@example.test", tamper="wrapping"
        )
    )
    first = etree.fromstring(wrapped).find(f"{{{SAML}}}Assertion")
    assert WRAPPING_EMAIL in etree.tostring(first).decode()
    signed = XMLVerifier().verify(wrapped, x509_cert=cert).signed_xml
    assert WRAPPING_EMAIL not in etree.tostring(signed).decode()


def test_saml_validity_audience_and_unknown_request_ids(fake_saml_idp):
    expired = etree.fromstring(
        base64.b64decode(fake_saml_idp.response_for("_any", "a", "a@x.test", expired=True))
    )
    conditions = expired.find(f".//{{{SAML}}}Conditions")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert conditions.get("NotOnOrAfter") < now
    future = etree.fromstring(
        base64.b64decode(fake_saml_idp.response_for("_any", "a", "a@x.test", not_yet_valid=True))
    )
    assert future.find(f".//{{{SAML}}}Conditions").get("NotBefore") > now
    # An ID the IdP never saw: the default SP of the platform.
    plain = etree.fromstring(
        base64.b64decode(fake_saml_idp.response_for("_unseen", "a", "a@x.test", audience="x"))
    )
    assert plain.get("InResponseTo") == "_unseen"
    assert plain.find(f".//{{{SAML}}}Audience").text == "x"
    assert plain.find(f".//{{{SAML}}}Issuer").text == fake_saml_idp.entity_id


def test_idp_initiated_responses_answer_no_request(fake_saml_idp):
    """SAML profiles 4.1.5: an unsolicited response has no InResponseTo, on the Response or
    on the SubjectConfirmationData, and is signed like any other."""
    from signxml import XMLVerifier

    cert, _ = _metadata_cert(fake_saml_idp)
    raw = base64.b64decode(
        fake_saml_idp.response_for(None, "ada@example.test", "ada@example.test", signed="response")
    )
    signed = XMLVerifier().verify(raw, x509_cert=cert).signed_xml
    assert signed.tag == f"{{{SAMLP}}}Response"
    assert signed.get("InResponseTo") is None
    data = signed.find(f".//{{{SAML}}}SubjectConfirmationData")
    assert data.get("InResponseTo") is None
    assert data.get("Recipient") == "http://auth.apex.test/auth/saml/acs"
    assert signed.find(f".//{{{SAML}}}Audience").text == "apex-auth"


# -- SMTP ---------------------------------------------------------------------------------


def _send(mailbox, to: str, subject: str) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "no-reply@apex.test", to, subject
    message.set_content(f"Hello\nToken: {subject}\n")
    with smtplib.SMTP(mailbox.host, mailbox.port, timeout=5) as smtp:
        smtp.send_message(message)


async def test_smtplib_delivers_to_the_mailbox_and_scripted_failures_answer(mailbox):
    await asyncio.to_thread(_send, mailbox, "ada@example.test", "first")
    mail = await mailbox.wait_for(to="ada@example.test", timeout=5)
    assert (mail.subject, mail.rcpt_tos, mail.mail_from) == (
        "first",
        ["ada@example.test"],
        "no-reply@apex.test",
    )
    assert "Token: first" in mail.text
    assert mail.raw.startswith(b"From: no-reply@apex.test") or b"Subject: first" in mail.raw

    mailbox.fail_next(451)
    with pytest.raises(smtplib.SMTPDataError) as data_error:
        await asyncio.to_thread(_send, mailbox, "bob@example.test", "second")
    assert data_error.value.smtp_code == 451
    mailbox.fail_next(550, at="rcpt")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await asyncio.to_thread(_send, mailbox, "bob@example.test", "third")
    assert refused.value.recipients["bob@example.test"][0] == 550
    await asyncio.to_thread(_send, mailbox, "bob@example.test", "fourth")
    assert [m.subject for m in mailbox.messages] == ["first", "fourth"]
    with pytest.raises(DeadlineExceeded, match=r"nobody@example\.test"):
        await mailbox.wait_for(to="nobody@example.test", timeout=0.2)


# -- SMS ----------------------------------------------------------------------------------


def test_the_twilio_client_sends_through_the_fake(fake_sms):
    from twilio.base.exceptions import TwilioRestException
    from twilio.rest import Client

    client = Client(fake_sms.account_sid, fake_sms.auth_token)
    client.api.base_url = fake_sms.base_url
    sent = client.messages.create(to="+15551234567", from_=fake_sms.from_number, body="123456")
    assert sent.sid.startswith("SM")
    assert sent.status == "queued"
    assert client.messages(sent.sid).fetch().body == "123456"
    assert [(m.to, m.body) for m in fake_sms.messages] == [("+15551234567", "123456")]

    fake_sms.fail_next(429)
    with pytest.raises(TwilioRestException) as limited:
        client.messages.create(to="+15551234567", from_=fake_sms.from_number, body="again")
    assert limited.value.status == 429
    with pytest.raises(TwilioRestException) as invalid:
        client.messages.create(to="12345", from_=fake_sms.from_number, body="x")
    assert (invalid.value.status, invalid.value.code) == (400, 21211)

    wrong = Client(fake_sms.account_sid, "not-the-token")
    wrong.api.base_url = fake_sms.base_url
    with pytest.raises(TwilioRestException) as caught:
        wrong.messages.create(to="+15551234567", from_=fake_sms.from_number, body="x")
    assert (caught.value.status, caught.value.code) == (401, 20003)
    assert len(fake_sms.messages) == 1


async def test_sms_wait_for(fake_sms):
    async def send() -> None:
        async with httpx.AsyncClient() as client:
            await client.post(
                f"{fake_sms.base_url}/2010-04-01/Accounts/{fake_sms.account_sid}/Messages.json",
                data={"To": "+15550000001", "From": fake_sms.from_number, "Body": "hi"},
                auth=(fake_sms.account_sid, fake_sms.auth_token),
            )

    waiting = asyncio.create_task(fake_sms.wait_for(to="+15550000001", timeout=5))
    await send()
    assert (await waiting).body == "hi"


# -- wiring and lifetime ------------------------------------------------------------------


def test_the_auth_service_is_wired_to_the_workers_fakes(
    apex_worker, fake_idp, fake_saml_idp, mailbox, fake_sms
):
    env = service_env(apex_worker, "auth")
    assert env["APEX_IDP_ISSUER"] == fake_idp.issuer
    assert env["APEX_IDP_CLIENT_ID"] == fake_idp.client_id
    assert env["APEX_IDP_CLIENT_SECRET"] == fake_idp.client_secret
    assert env["APEX_SAML_IDP_METADATA_URL"] == fake_saml_idp.metadata_url
    assert env["APEX_SMTP_URL"] == mailbox.smtp_url
    assert env["APEX_SMS_BASE_URL"] == fake_sms.base_url
    assert env["APEX_SMS_ACCOUNT_SID"] == fake_sms.account_sid
    assert env["APEX_SMS_AUTH_TOKEN"] == fake_sms.auth_token
    assert env["APEX_SMS_FROM"] == fake_sms.from_number


def test_a_reset_forgets_messages_and_requests(apex_worker, mailbox, fake_idp):
    _send(mailbox, "ada@example.test", "before")
    httpx.get(fake_idp.discovery_url)
    assert mailbox.messages
    assert fake_idp.requests
    apex_worker.reset()  # what clean_platform does before each test
    assert mailbox.messages == []
    assert fake_idp.requests == []


HOLD_FAKES = """
import json, os, pytest
from pathlib import Path
from apex_testkit import wait_for

bvj = pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")

@pytest.mark.L2
@pytest.mark.L3
@bvj
def test_fakes(fake_idp, mailbox, apex_run):
    out = Path(os.environ["OUT_DIR"])
    fakes = [fake_idp, mailbox]
    (out / "fakes.json").write_text(json.dumps({
        "run": str(apex_run.path),
        "urls": [f.url for f in fakes],
        "pids": [f.running.pid for f in fakes],
        "smtp": f"127.0.0.1:{mailbox.port}",
    }))
    if os.environ.get("HOLD"):
        wait_for(lambda: (out / "release").exists(), timeout=120)
"""


def _gone(url: str) -> bool:
    try:
        httpx.get(f"{url}/_fake/health", timeout=1)
    except httpx.TransportError:
        return True
    return False


def _start_l3(test_package, inner_pytest, tmp_path: Path, **env: str):
    project = test_package("test_fakes_l3.py", HOLD_FAKES)
    out = tmp_path / "out"
    out.mkdir()
    run = inner_pytest(str(project), "--level", "L3", env=inner_env(OUT_DIR=str(out), **env))
    return run, out


def test_at_l3_fakes_are_processes_stopped_with_the_run(test_package, inner_pytest, tmp_path):
    run, out = _start_l3(test_package, inner_pytest, tmp_path)
    code, text = finish(run)
    assert code == 0, text
    info = json.loads((out / "fakes.json").read_text())
    assert all(pid and pid != os.getpid() for pid in info["pids"]), "one process per fake"
    assert all(_gone(url) for url in info["urls"])
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP(*info["smtp"].split(":"), timeout=2)
    assert not Path(info["run"]).exists()


def test_kill_9_of_an_l3_run_leaves_no_fake_behind(test_package, inner_pytest, tmp_path):
    run, out = _start_l3(test_package, inner_pytest, tmp_path, HOLD="1")
    wait_for(lambda: (out / "fakes.json").exists(), timeout=60, message="fakes up")
    info = json.loads((out / "fakes.json").read_text())
    assert not any(_gone(url) for url in info["urls"])
    run.kill()  # SIGKILL: no teardown runs; the watchdog stops what the run recorded
    run.communicate()
    wait_for(lambda: all(_gone(url) for url in info["urls"]), timeout=30, message="fakes gone")
    wait_for(lambda: not Path(info["run"]).exists(), timeout=30, message="run dir removed")
