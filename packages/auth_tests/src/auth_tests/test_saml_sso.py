"""001#13 SAML SSO: SP-initiated login against the `fake_saml_idp` (HTTP-Redirect AuthnRequest,
POSTed SAMLResponse), JIT provisioning, IdP groups -> teams, and the security set every SAML SP
must pass: unsigned, tampered after signing, signature wrapping, expired, not yet valid, wrong
audience, wrong recipient, wrong issuer, unsolicited, replayed, and hostile XML.

L2/L3 only: the IdP is the test kit's fake.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import re
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner

from apex_testkit import WRAPPING_EMAIL, FakeSamlIdp, Platform, parse_authn_request, tls_context
from auth_tests.access import AccessAdmin
from auth_tests.client import AuthAdmin, JwksVerifier, Tokens, error_of, idp_email, me
from auth_tests.flows import create_password_user, enroll_totp

BVJ = pytest.mark.bvj(
    segment="enterprise", goal="Enterprise SSO contracts: SAML login that cannot be forged",
    mrr=25000, scenario="001#13",
)  # fmt: skip
pytestmark = [BVJ, pytest.mark.L2, pytest.mark.L3]
SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"


async def _start(client: httpx.AsyncClient) -> str:
    """GET /auth/saml/login: the IdP SSO URL (with SAMLRequest and RelayState) it redirects to."""
    response = await client.get("/auth/saml/login")
    assert response.status_code == 302, response.text
    return response.headers["location"]


async def _acs(
    client: httpx.AsyncClient, saml_response: str, relay_state: str = ""
) -> httpx.Response:
    return await client.post(
        "/auth/saml/acs", data={"SAMLResponse": saml_response, "RelayState": relay_state}
    )


async def _browser_login(
    client: httpx.AsyncClient, idp: FakeSamlIdp, name_id: str, email: str, groups: list[str]
) -> httpx.Response:
    """The whole SP-initiated round trip, as a browser does it: redirect to /sso, then the
    auto-submitted form back to our ACS."""
    idp.login_as(name_id, email, groups)
    async with httpx.AsyncClient(timeout=10, verify=tls_context()) as browser:
        page = await browser.get(await _start(client))
    assert page.status_code == 200, page.text
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page.text))
    return await _acs(client, html.unescape(fields["SAMLResponse"]), fields["RelayState"])


async def _user_ids(db: asyncpg.Connection, *emails: str) -> list[str]:
    rows = await db.fetch("SELECT id::text FROM users WHERE email = ANY($1::text[])", emails)
    return [r["id"] for r in rows]


@pytest.mark.L4
async def test_login_redirects_with_a_deflated_authn_request(
    auth_client: httpx.AsyncClient,
    fake_saml_idp: FakeSamlIdp,
) -> None:
    first, second = await _start(auth_client), await _start(auth_client)

    assert first.startswith(f"{fake_saml_idp.sso_url}?")
    params = dict(parse_qsl(urlsplit(first).query))
    assert "RelayState" in params
    request = parse_authn_request(params["SAMLRequest"])
    again = parse_authn_request(dict(parse_qsl(urlsplit(second).query))["SAMLRequest"])
    assert urlsplit(request["acs_url"]).path == "/auth/saml/acs"
    assert request["issuer"], "the AuthnRequest names our SP entity id"
    assert request["id"]
    assert request["id"] != again["id"], "a fresh request ID per login"
    assert not request["id"][0].isdigit(), "an xs:ID may not start with a digit"


@pytest.mark.L4
async def test_a_signed_assertion_logs_the_user_in(
    auth_client: httpx.AsyncClient,
    fake_saml_idp: FakeSamlIdp,
    email_domain: str,
) -> None:
    email = idp_email(email_domain, "sso")

    response = await _browser_login(auth_client, fake_saml_idp, email, email, [])

    tokens = Tokens.of(response)
    claims = await JwksVerifier(auth_client).verify(tokens.access)
    assert claims["amr"] == ["saml"]
    assert claims["sub"] == response.json()["user_id"]
    profile = (await me(auth_client, tokens.access)).json()
    assert (profile["email"], profile["auth_method"], profile["tier"]) == (email, "saml", "free")


@pytest.mark.L4
async def test_a_signature_on_the_response_instead_of_the_assertion_is_accepted(
    auth_client: httpx.AsyncClient,
    fake_saml_idp: FakeSamlIdp,
    email_domain: str,
) -> None:
    email = idp_email(email_domain, "sso")
    saml_response = fake_saml_idp.response_for(
        await _start(auth_client), email, email, signed="response"
    )
    response = await _acs(auth_client, saml_response)
    assert response.status_code == 200, response.text
    assert (await me(auth_client, Tokens.of(response).access)).json()["email"] == email


@pytest.mark.parametrize(
    "defect",
    [
        {"signed": None},
        {"tamper": "modify_email"},
        {"tamper": "modify_email", "signed": "response"},
        {"expired": True},
        {"not_yet_valid": True},
        {"audience": "https://some-other-sp.example"},
        {"recipient": "https://evil.example/auth/saml/acs"},
        {"issuer": "https://evil-idp.example/metadata"},
    ],
    ids=[
        "unsigned",
        "tampered-assertion",
        "tampered-response",
        "expired",
        "not-yet-valid",
        "wrong-audience",
        "wrong-recipient",
        "wrong-issuer",
    ],
)
async def test_a_defective_response_is_refused(
    auth_client: httpx.AsyncClient,
    fake_saml_idp: FakeSamlIdp,
    auth_db: asyncpg.Connection,
    defect: dict[str, Any],
    email_domain: str,
) -> None:
    email = idp_email(email_domain, "sso")
    saml_response = fake_saml_idp.response_for(await _start(auth_client), email, email, **defect)

    response = await _acs(auth_client, saml_response)

    assert (response.status_code, error_of(response)) == (401, "invalid_saml")
    assert response.json()["detail"], "a detail saying which check failed"
    assert await _user_ids(auth_db, email, WRAPPING_EMAIL) == [], "a user was provisioned"
    # Control: the same request answered correctly works, so the refusal was the defect.
    good = fake_saml_idp.response_for(await _start(auth_client), email, email)
    assert (await _acs(auth_client, good)).status_code == 200


@pytest.mark.parametrize("signed", ["assertion", "response"])
async def test_signature_wrapping_never_logs_the_attacker_in(
    auth_client: httpx.AsyncClient,
    fake_saml_idp: FakeSamlIdp,
    auth_db: asyncpg.Connection,
    signed: str,
    email_domain: str,
) -> None:
    """An unsigned assertion for the attacker placed next to a genuinely signed one: refused
    (SUT notes: "expected exactly one Assertion", where wrapping attempts land), and
    nobody is provisioned, neither the attacker nor the victim."""
    victim = idp_email(email_domain, "sso")
    saml_response = fake_saml_idp.response_for(
        await _start(auth_client), victim, victim, signed=signed, tamper="wrapping"
    )

    response = await _acs(auth_client, saml_response)

    assert (response.status_code, error_of(response)) == (401, "invalid_saml")
    assert await _user_ids(auth_db, WRAPPING_EMAIL, victim) == [], "an assertion was used"


async def test_an_unsolicited_response_is_refused(
    auth_client: httpx.AsyncClient,
    fake_saml_idp: FakeSamlIdp,
    auth_db: asyncpg.Connection,
    email_domain: str,
) -> None:
    """IdP-initiated (or stolen from another SP's flow): InResponseTo matches nothing we sent."""
    email = idp_email(email_domain, "sso")
    saml_response = fake_saml_idp.response_for(f"_{uuid.uuid4().hex}", email, email)

    response = await _acs(auth_client, saml_response)

    assert (response.status_code, error_of(response)) == (401, "invalid_saml")
    assert await _user_ids(auth_db, email) == []


@pytest.mark.L4
async def test_a_replayed_response_is_refused(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_saml_idp: FakeSamlIdp,
    email_domain: str,
) -> None:
    email = idp_email(email_domain, "sso")
    saml_response = fake_saml_idp.response_for(await _start(auth_client), email, email)
    first = await _acs(auth_client, saml_response)
    user_id = first.json()["user_id"]
    assert await auth_admin.logins(user_id) == [Tokens.of(first).session_id]

    replay = await _acs(auth_client, saml_response)

    assert (replay.status_code, error_of(replay)) == (401, "saml_replay")
    assert await auth_admin.logins(user_id) == [Tokens.of(first).session_id], "a second session"


@pytest.mark.L4
async def test_two_pending_logins_complete_in_any_order_and_only_once(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_saml_idp: FakeSamlIdp,
    email_domain: str,
) -> None:
    """Two pending requests: each response is tied to its own (InResponseTo) and signs in
    its own user, and after both are used neither works again."""
    a, b = idp_email(email_domain, "sso"), idp_email(email_domain, "sso")
    first = fake_saml_idp.response_for(await _start(auth_client), a, a)
    second = fake_saml_idp.response_for(await _start(auth_client), b, b)

    as_b = Tokens.of(await _acs(auth_client, second))
    as_a = Tokens.of(await _acs(auth_client, first))
    again = await _acs(auth_client, first)

    assert (await me(auth_client, as_b.access)).json()["email"] == b
    assert (await me(auth_client, as_a.access)).json()["email"] == a
    assert (again.status_code, error_of(again)) == (401, "saml_replay")
    user_a = (await me(auth_client, as_a.access)).json()["user_id"]
    assert await auth_admin.logins(user_a) == [as_a.session_id], "the replay opened a session"


_XXE = """<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="_x" Version="2.0">
&x;</samlp:Response>"""
_BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>
<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">&d;&d;&d;&d;</samlp:Response>"""


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "not base64 !!!",
        base64.b64encode(b"<not-xml").decode(),
        base64.b64encode(b"<samlp:Response/>").decode(),
        base64.b64encode(_XXE.encode()).decode(),
        base64.b64encode(_BILLION_LAUGHS.encode()).decode(),
    ],
    ids=["empty", "not-base64", "not-xml", "no-namespace", "xxe", "entity-expansion"],
)
@pytest.mark.L4
async def test_hostile_or_garbage_input_is_a_clean_401(
    auth_client: httpx.AsyncClient,
    fake_saml_idp: FakeSamlIdp,
    payload: str,
) -> None:
    """SUT notes: no SAMLResponse is a 400 `invalid_request`; anything else that is not a
    valid response is a 401 `invalid_saml` naming what failed."""
    response = await _acs(auth_client, payload)

    expected = (400, "invalid_request") if payload == "" else (401, "invalid_saml")
    assert (response.status_code, error_of(response)) == expected, response.text
    assert "root:" not in response.text, "an external entity was resolved"


# -- JIT provisioning and groups ---------------------------------------------------------


async def _team(admin: AuthAdmin, idp_group: str | None) -> str:
    """A team (in the run's namespace) that IdP group `idp_group` maps to."""
    team = await AccessAdmin(admin).create_team(idp_group=idp_group)
    return str(team["id"])


async def _memberships(db: asyncpg.Connection, user_id: str) -> dict[str, str]:
    rows = await db.fetch(
        "SELECT team_id::text AS team, role FROM team_members WHERE user_id = $1",
        uuid.UUID(user_id),
    )
    return {r["team"]: r["role"] for r in rows}


async def test_jit_provisioning_creates_once_and_links_existing_users(
    auth_client: httpx.AsyncClient,
    trusting_auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_saml_idp: FakeSamlIdp,
    email_domain: str,
) -> None:
    """Linking needs an IdP trusted for the user's domain (issue 10)."""
    newcomer = idp_email(email_domain, "sso")
    first = await _browser_login(auth_client, fake_saml_idp, newcomer, newcomer, [])
    second = await _browser_login(auth_client, fake_saml_idp, newcomer, newcomer, [])
    assert first.json()["user_id"] == second.json()["user_id"]
    created = [
        e for e in await auth_admin.audit(first.json()["user_id"]) if e["action"] == "user.created"
    ]
    assert len(created) == 1

    existing = await auth_admin.create_user(tier="enterprise")
    linked = await _browser_login(
        trusting_auth_client, fake_saml_idp, f"employee-{uuid.uuid4().hex}", existing["email"], []
    )
    assert linked.json()["user_id"] == existing["id"]
    assert (await me(auth_client, Tokens.of(linked).access)).json()["tier"] == "enterprise"


async def test_a_returning_user_whose_email_changed_is_the_same_user(
    auth_client: httpx.AsyncClient,
    trusting_auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_saml_idp: FakeSamlIdp,
    auth_db: asyncpg.Connection,
    email_domain: str,
) -> None:
    """The NameID, not the address, identifies the IdP user: a changed address signs in
    the same account, which keeps its address (the IdP never changes an account, CONTRACT3
    notes), and makes no new one. Even when the new address is another account's in a
    domain the IdP is trusted for, the linked identity wins: that account is untouched."""
    name_id, original, renamed = (
        f"emp-{uuid.uuid4().hex}",
        idp_email(email_domain, "sso"),
        idp_email(email_domain, "sso"),
    )
    first = await _browser_login(auth_client, fake_saml_idp, name_id, original, [])
    user_id = first.json()["user_id"]

    again = await _browser_login(auth_client, fake_saml_idp, name_id, renamed, [])

    assert again.json()["user_id"] == user_id
    profile = (await me(auth_client, Tokens.of(again).access)).json()
    assert (profile["user_id"], profile["email"]) == (user_id, original)
    assert await _user_ids(auth_db, renamed) == [], "the new address made an account"

    colleague = await auth_admin.create_user()
    taken = await _browser_login(
        trusting_auth_client, fake_saml_idp, name_id, colleague["email"], []
    )

    assert taken.json()["user_id"] == user_id, "the address took the login to another account"
    assert await auth_admin.logins(colleague["id"]) == []
    linked = [
        e for e in await auth_admin.audit(colleague["id"]) if e["action"] == "identity.linked"
    ]
    assert linked == [], "the colleague's account was linked to the IdP identity"


async def test_saml_groups_become_team_memberships_and_relogin_syncs_them(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_saml_idp: FakeSamlIdp,
    auth_db: asyncpg.Connection,
    email_domain: str,
) -> None:
    sales, support = f"sales-{uuid.uuid4().hex[:6]}", f"support-{uuid.uuid4().hex[:6]}"
    sales_team = await _team(auth_admin, sales)
    support_team = await _team(auth_admin, support)
    email = idp_email(email_domain, "sso")

    first = await _browser_login(auth_client, fake_saml_idp, email, email, [sales, support])
    user_id = first.json()["user_id"]
    assert await _memberships(auth_db, user_id) == {sales_team: "member", support_team: "member"}

    await _browser_login(auth_client, fake_saml_idp, email, email, [support])
    assert await _memberships(auth_db, user_id) == {support_team: "member"}


def _resigned_with_a_foreign_key(saml_response: str) -> str:
    """The attacker's forgery: an assertion signed correctly, but with the attacker's own key
    and certificate (carried in the signature's KeyInfo), not the IdP's."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil idp")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    root = etree.fromstring(base64.b64decode(saml_response))
    assertion = root.find(f"{{{SAML_NS}}}Assertion")
    issuer = assertion.find(f"{{{SAML_NS}}}Issuer")
    issuer.addnext(etree.Element(f"{{{DS_NS}}}Signature", Id="placeholder", nsmap={"ds": DS_NS}))
    signed = XMLSigner(
        signature_algorithm=SignatureMethod.RSA_SHA256,
        digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    ).sign(
        assertion,
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert=cert.public_bytes(serialization.Encoding.PEM).decode(),
        reference_uri=assertion.get("ID"),
    )
    root.replace(assertion, signed)
    return base64.b64encode(etree.tostring(root)).decode()


async def test_an_assertion_signed_by_another_key_is_refused(
    auth_client: httpx.AsyncClient,
    fake_saml_idp: FakeSamlIdp,
    auth_db: asyncpg.Connection,
    email_domain: str,
) -> None:
    """Only the certificate from the IdP's metadata counts, never one the response brings."""
    email = idp_email(email_domain, "sso")
    unsigned = fake_saml_idp.response_for(await _start(auth_client), email, email, signed=None)

    response = await _acs(auth_client, _resigned_with_a_foreign_key(unsigned))

    assert (response.status_code, error_of(response)) == (401, "invalid_saml")
    assert await _user_ids(auth_db, email) == []


async def test_a_response_replayed_through_another_instance_is_refused(
    clean_platform: Platform,
    admin_token: str,
    fake_saml_idp: FakeSamlIdp,
    email_domain: str,
) -> None:
    """The seen-assertion record is shared: a second instance refuses the replay too."""
    email = idp_email(email_domain, "sso")
    async with (
        clean_platform.client("auth", instance=0) as first,
        clean_platform.client("auth", instance=1) as second,
    ):
        saml_response = fake_saml_idp.response_for(await _start(first), email, email)
        accepted = await _acs(first, saml_response)
        session = Tokens.of(accepted).session_id

        replay = await _acs(second, saml_response)

        assert (replay.status_code, error_of(replay)) == (401, "saml_replay")
        logins = await AuthAdmin(second, admin_token).logins(accepted.json()["user_id"])
        assert logins == [session], "the replay opened a session"


async def test_a_saml_user_with_2fa_gets_a_second_factor_challenge(
    auth_client: httpx.AsyncClient,
    trusting_auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    fake_saml_idp: FakeSamlIdp,
) -> None:
    person = await create_password_user(auth_admin)
    await enroll_totp(auth_client, person)

    response = await _browser_login(
        trusting_auth_client, fake_saml_idp, person.email, person.email, []
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body.get("mfa_required") is True
    assert "access_token" not in body, "the SAML login skipped the user's second factor"
