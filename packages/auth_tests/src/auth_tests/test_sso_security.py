"""Single sign-on holes from the security review (issue 10): an OIDC login is bound to the
browser that started it (a `__Host-` cookie checked at the callback), so a leaked callback URL
or a forced one (login CSRF) opens no session; an IdP login takes over an existing account
only with a verified address from an IdP trusted for its domain; a SAML Response signed as a
whole is read only where the signature covers it; the access log keeps no callback secrets.

Every refusal is checked for what it must not have done: no code redeemed at the IdP (the
fake's request log), no user created or linked, no session opened. L2/L3: the IdPs are fakes.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import httpx
import pytest
from lxml import etree

from apex_testkit import FakeIdp, FakeSamlIdp, Platform, eventually, parse_authn_request
from auth_tests.client import AuthAdmin, Tokens, error_of, idp_email, me
from auth_tests.flows import oidc_authorize, oidc_callback, oidc_login, oidc_start

OIDC = pytest.mark.bvj(
    segment="enterprise", goal="Single sign-on: IdP login ends in a platform JWT, never a breach",
    mrr=15000, scenario="001#1",
)  # fmt: skip
SAML = pytest.mark.bvj(
    segment="enterprise", goal="Enterprise SSO contracts: SAML login that cannot be forged",
    mrr=25000, scenario="001#13",
)  # fmt: skip

SAMLP_NS = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"


def _refused(response: httpx.Response, status: int, error: str) -> None:
    """`response` is the refusal `status` with the error code `error` (and nothing else)."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    assert error_of(response) == error, response.text
    assert "access_token" not in response.text
    assert "mfa_token" not in response.text


def _token_requests(idp: FakeIdp) -> int:
    return sum(1 for r in idp.requests if r.path == "/token")


async def _users_with(db: asyncpg.Connection, email: str) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM users WHERE lower(email) = $1", email)
    return count


async def _identity_owner(db: asyncpg.Connection, provider: str, subject: str) -> str | None:
    owner = await db.fetchval(
        "SELECT user_id::text FROM external_identities WHERE provider = $1 AND subject = $2",
        provider,
        subject,
    )
    return str(owner) if owner is not None else None


# -- OIDC: the state belongs to the browser that started the login -------------------------


@OIDC
@pytest.mark.L2
@pytest.mark.L3
async def test_the_login_binds_its_state_to_the_browser_with_a_host_cookie(
    auth_client: httpx.AsyncClient,
    fake_idp: FakeIdp,
) -> None:
    response = await auth_client.get("/auth/oidc/login")

    assert response.status_code == 302, response.text
    bindings = [c for c in response.headers.get_list("set-cookie") if c.startswith("__Host-")]
    assert len(bindings) == 1, response.headers.get_list("set-cookie")
    value, *attributes = (part.strip() for part in bindings[0].split(";"))
    assert len(value.partition("=")[2]) >= 32, "an unguessable binding"
    names = {a.partition("=")[0].lower(): a.partition("=")[2] for a in attributes}
    # RFC 6265bis __Host-: Secure, Path=/, no Domain; HttpOnly (no script needs it); Lax so
    # the IdP's top-level redirect back to the callback carries it.
    assert {"secure", "httponly"} <= set(names), bindings[0]
    assert names.get("path") == "/", bindings[0]
    assert "domain" not in names, bindings[0]
    assert names.get("samesite", "").lower() == "lax", bindings[0]


@OIDC
@pytest.mark.L2
@pytest.mark.L3
async def test_a_callback_url_redeemed_by_another_client_is_refused(
    auth_client: httpx.AsyncClient,
    clean_platform: Platform,
    fake_idp: FakeIdp,
    auth_db: asyncpg.Connection,
    email_domain: str,
) -> None:
    """Issue 10 #4: `code` + `state` leaked (an access log, a referrer): redeemed from a client
    without the victim's cookie, nothing happens; the victim's own browser still signs in."""
    email = idp_email(email_domain)
    fake_idp.login_as(uuid.uuid4().hex, email)
    back = await oidc_authorize(await oidc_start(auth_client))

    async with clean_platform.client("auth") as thief:
        stolen = await oidc_callback(thief, back["code"], back["state"])

    _refused(stolen, 400, "invalid_state")
    assert _token_requests(fake_idp) == 0, "the code was redeemed for the thief"
    assert await _users_with(auth_db, email) == 0
    own = await oidc_callback(auth_client, back["code"], back["state"])
    assert own.status_code == 200, own.text
    assert (await me(auth_client, Tokens.of(own).access)).json()["email"] == email


@OIDC
@pytest.mark.L2
@pytest.mark.L3
async def test_a_login_started_in_another_browser_is_refused(
    auth_client: httpx.AsyncClient,
    clean_platform: Platform,
    fake_idp: FakeIdp,
    auth_db: asyncpg.Connection,
    email_domain: str,
) -> None:
    """Issue 10 #4, login CSRF: the attacker starts a login to the attacker's IdP account and
    makes the victim's browser (with a binding cookie of its own) open the callback URL."""
    attacker = idp_email(email_domain)
    fake_idp.login_as(uuid.uuid4().hex, attacker)
    async with clean_platform.client("auth") as attackers_browser:
        back = await oidc_authorize(await oidc_start(attackers_browser))
    await oidc_start(auth_client)  # the victim's browser started a login of its own

    forced = await oidc_callback(auth_client, back["code"], back["state"])

    _refused(forced, 400, "invalid_state")
    assert _token_requests(fake_idp) == 0
    assert await _users_with(auth_db, attacker) == 0, "the victim was signed in as the attacker"


@OIDC
@pytest.mark.L3
async def test_the_access_log_keeps_no_callback_code_or_state(
    clean_platform: Platform,
    fake_idp: FakeIdp,
    email_domain: str,
) -> None:
    """Issue 10 #11: uvicorn's access log wrote the callback's query string (code and state)
    to the service's log, for anyone who reads logs to replay."""
    # The access log is written at INFO.
    async with clean_platform.client("auth", APEX_LOG_LEVEL="INFO") as client:
        fake_idp.login_as(uuid.uuid4().hex, idp_email(email_domain))
        back = await oidc_authorize(await oidc_start(client))
        assert (await oidc_callback(client, back["code"], back["state"])).status_code == 200
    log = clean_platform.instance("auth", APEX_LOG_LEVEL="INFO").log

    async def callback_logged() -> list[str]:
        lines = log.read_text(errors="replace").splitlines()
        return [line for line in lines if "/auth/oidc/callback" in line]

    lines = await eventually(callback_logged, timeout=10, message="the callback's access line")
    text = log.read_text(errors="replace")
    assert back["code"] not in text, lines
    assert back["state"] not in text, lines


# -- linking an IdP login to an existing account --------------------------------------------


MISSING = object()


@OIDC
@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.parametrize(
    "verified", [MISSING, None, "false", "true"], ids=["missing", "null", "string-false", "string"]
)
async def test_an_unverified_email_never_links_an_existing_account(
    trusting_auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_idp: FakeIdp,
    auth_db: asyncpg.Connection,
    verified: Any,
) -> None:
    """Issue 10 #2: only `email_verified: true` (the JSON boolean) counts, even from an IdP
    trusted for the address's domain; missing, null or a string took the account over."""
    victim = await auth_admin.create_user(tier="enterprise")
    sub = uuid.uuid4().hex
    if verified is MISSING:
        fake_idp.next_id_token(without=("email_verified",))
    else:
        fake_idp.next_id_token(claims={"email_verified": verified})

    response = await oidc_login(trusting_auth_client, fake_idp, sub=sub, email=victim["email"])

    _refused(response, 401, "invalid_id_token")
    assert await _identity_owner(auth_db, "oidc", sub) is None
    actions = [e["action"] for e in await auth_admin.audit(victim["id"])]
    assert "identity.linked" not in actions, actions
    assert "login.succeeded" not in actions, actions


@OIDC
@pytest.mark.L2
@pytest.mark.L3
async def test_an_idp_not_trusted_for_the_domain_cannot_link_an_existing_account(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_idp: FakeIdp,
    auth_db: asyncpg.Connection,
) -> None:
    """Issue 10 #2: a verified address is the IdP's word; it counts for an existing account
    only when the IdP is trusted for that domain (none is, by default)."""
    victim = await auth_admin.create_user(tier="enterprise")
    sub = uuid.uuid4().hex

    response = await oidc_login(auth_client, fake_idp, sub=sub, email=victim["email"])

    _refused(response, 401, "invalid_id_token")
    assert await _identity_owner(auth_db, "oidc", sub) is None
    actions = [e["action"] for e in await auth_admin.audit(victim["id"])]
    assert "identity.linked" not in actions, actions
    assert "login.succeeded" not in actions, actions


@OIDC
@pytest.mark.L2
@pytest.mark.L3
async def test_a_verified_email_of_a_trusted_domain_links_the_account(
    trusting_auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_idp: FakeIdp,
    auth_db: asyncpg.Connection,
) -> None:
    existing = await auth_admin.create_user(tier="enterprise")
    sub = uuid.uuid4().hex

    response = await oidc_login(trusting_auth_client, fake_idp, sub=sub, email=existing["email"])

    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == existing["id"]
    assert await _identity_owner(auth_db, "oidc", sub) == existing["id"]
    actions = [e["action"] for e in await auth_admin.audit(existing["id"])]
    assert actions.count("identity.linked") == 1, actions


# -- SAML -------------------------------------------------------------------------------


async def _saml_request_id(client: httpx.AsyncClient) -> str:
    """GET /auth/saml/login: the ID of the AuthnRequest now pending."""
    response = await client.get("/auth/saml/login")
    assert response.status_code == 302, response.text
    query = dict(parse_qsl(urlsplit(response.headers["location"]).query))
    return parse_authn_request(query["SAMLRequest"])["id"]


async def _acs(client: httpx.AsyncClient, saml_response: str) -> httpx.Response:
    return await client.post("/auth/saml/acs", data={"SAMLResponse": saml_response})


@SAML
@pytest.mark.L2
@pytest.mark.L3
async def test_a_saml_idp_not_trusted_for_the_domain_cannot_link_an_existing_account(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_saml_idp: FakeSamlIdp,
    auth_db: asyncpg.Connection,
) -> None:
    """Issue 10 #2: SAML linked every address to the account that has it."""
    victim = await auth_admin.create_user(tier="enterprise")
    name_id = f"employee-{uuid.uuid4().hex}"
    saml_response = fake_saml_idp.response_for(
        await _saml_request_id(auth_client), name_id, victim["email"]
    )

    response = await _acs(auth_client, saml_response)

    _refused(response, 401, "invalid_saml")
    assert await _identity_owner(auth_db, "saml", name_id) is None
    actions = [e["action"] for e in await auth_admin.audit(victim["id"])]
    assert "identity.linked" not in actions, actions
    assert "login.succeeded" not in actions, actions


def _hidden_under_a_forged_root(signed_response: bytes, in_response_to: str) -> str:
    """The attack of issue 10 #5: a genuine Response signed as a whole (here IdP-initiated,
    so it answers no request) moved into the Extensions of a forged Response that claims to
    answer `in_response_to`; the signature moves to the forged root, where an SP looking
    for a signed Response finds it, and still verifies (it references the genuine one)."""
    genuine = etree.fromstring(signed_response)
    signature = genuine.find(f"{{{DS_NS}}}Signature")
    genuine.remove(signature)
    forged = etree.Element(
        f"{{{SAMLP_NS}}}Response",
        ID="_" + secrets.token_hex(16),
        Version="2.0",
        IssueInstant=genuine.get("IssueInstant"),
        Destination=genuine.get("Destination"),
        InResponseTo=in_response_to,
        nsmap={"samlp": SAMLP_NS, "saml": SAML_NS},
    )
    issuer = etree.SubElement(forged, f"{{{SAML_NS}}}Issuer")
    issuer.text = genuine.find(f"{{{SAML_NS}}}Issuer").text
    forged.append(signature)
    etree.SubElement(forged, f"{{{SAMLP_NS}}}Extensions").append(genuine)
    status = etree.SubElement(forged, f"{{{SAMLP_NS}}}Status")
    etree.SubElement(status, f"{{{SAMLP_NS}}}StatusCode", Value=SUCCESS)
    return base64.b64encode(etree.tostring(forged)).decode()


@SAML
@pytest.mark.L2
@pytest.mark.L3
async def test_a_signed_response_hidden_under_a_forged_root_is_refused(
    auth_client: httpx.AsyncClient,
    fake_saml_idp: FakeSamlIdp,
    auth_db: asyncpg.Connection,
    email_domain: str,
) -> None:
    """Issue 10 #5: Status and InResponseTo were read from the unsigned root, so an
    unsolicited response became the answer to our pending request."""
    email = idp_email(email_domain, "sso")
    unsolicited = fake_saml_idp.response_for(None, email, email, signed="response")
    pending = await _saml_request_id(auth_client)

    response = await _acs(
        auth_client, _hidden_under_a_forged_root(base64.b64decode(unsolicited), pending)
    )

    _refused(response, 401, "invalid_saml")
    assert await _users_with(auth_db, email) == 0, "the forged response provisioned a user"
    # The pending request was not used up by the forgery: its genuine answer signs in.
    genuine = fake_saml_idp.response_for(pending, email, email, signed="response")
    assert (await _acs(auth_client, genuine)).status_code == 200
