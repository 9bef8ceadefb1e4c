"""Pure logic of the issue 3 identity flows: settings, TOTP, backup codes, PKCE, SAML checks."""

from __future__ import annotations

import base64
import datetime as dt
import time
from typing import Any

import pyotp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID
from lxml import etree  # type: ignore[import-untyped,unused-ignore]
from signxml import methods
from signxml.signer import XMLSigner

from apex.auth import mfa, passwords, saml
from apex.auth.login_routes import reset_mail_body
from apex.auth.notify import Mailer
from apex.auth.oidc import code_challenge
from apex.auth.sessions import _session
from apex.common.config import ConfigError, PasswordHashCost, RateLimit, Settings

# --- settings -----------------------------------------------------------------------


def test_identity_settings_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.public_url == "http://auth.apex.test"
    assert dict(settings.device_limits) == {"free": 2, "pro": 5, "enterprise": 20}
    assert settings.login_lockout == RateLimit(count=5, window=900)
    assert settings.password_reset_ttl == 900
    assert settings.saml_sp_entity_id == "apex-auth"
    assert settings.idp_issuer is None
    assert settings.smtp_url is None


def test_identity_settings_parse() -> None:
    settings = Settings.from_env(
        {
            "APEX_DEVICE_LIMITS": "free=1",
            "APEX_LOGIN_LOCKOUT": "3/60",
            "APEX_PUBLIC_URL": "https://auth.example.com/",
            "APEX_SMTP_URL": "smtp://127.0.0.1:2525",
        }
    )
    assert dict(settings.device_limits) == {"free": 1, "pro": 5, "enterprise": 20}
    assert settings.login_lockout == RateLimit(count=3, window=60)
    assert settings.public_url == "https://auth.example.com"
    assert "sms_auth_token" not in repr(Settings(sms_auth_token="secret"))
    assert "secret" not in repr(Settings(idp_client_secret="secret"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"APEX_DEVICE_LIMITS": "free=0"}, "APEX_DEVICE_LIMITS"),
        ({"APEX_DEVICE_LIMITS": "gold=3"}, "APEX_DEVICE_LIMITS"),
        ({"APEX_LOGIN_LOCKOUT": "5"}, "APEX_LOGIN_LOCKOUT"),
        ({"APEX_LOGIN_LOCKOUT": "x/60"}, "APEX_LOGIN_LOCKOUT"),
        ({"APEX_IDP_ISSUER": "http://idp"}, "APEX_IDP_CLIENT_ID"),
        ({"APEX_SMTP_URL": "http://mail"}, "APEX_SMTP_URL"),
        ({"APEX_PASSWORD_RESET_TTL": "0"}, "APEX_PASSWORD_RESET_TTL"),
    ],
)
def test_identity_settings_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


# --- passwords, TOTP, backup codes --------------------------------------------------


def test_password_policy() -> None:
    assert passwords.check_password_policy("x" * 12) == "x" * 12
    for bad in ("short", " " * 20, "x" * 1025):
        with pytest.raises(ValueError, match="password"):
            passwords.check_password_policy(bad)


async def test_password_hash_roundtrip_at_production_cost() -> None:
    """The production defaults (the one test that pays them): argon2id at RFC 9106's
    low-memory profile, a wrong or missing password refused."""
    production = Settings.from_env({}).password_hash_cost
    assert production == PasswordHashCost(time_cost=3, memory_kib=65536, parallelism=4)
    hasher = passwords.Hasher(production)
    stored = await hasher.hash("correct horse battery")
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert await hasher.verify("correct horse battery", stored)
    assert not await hasher.verify("wrong", stored)
    assert not await hasher.verify("anything", None)
    assert not await hasher.verify("anything", "not-a-hash")


async def test_a_cheap_hasher_verifies_production_hashes() -> None:
    """A stored hash carries its cost: lowering the setting never locks anyone out."""
    cheap = Settings.from_env(
        {
            "APEX_PASSWORD_HASH_TIME_COST": "1",
            "APEX_PASSWORD_HASH_MEMORY_KIB": "8",
            "APEX_PASSWORD_HASH_PARALLELISM": "1",
        }
    ).password_hash_cost
    stored = await passwords.hasher(cheap).hash("correct horse battery")
    assert stored.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert await passwords.hasher(PasswordHashCost()).verify("correct horse battery", stored)
    assert not await passwords.hasher(cheap).verify("wrong", stored)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"APEX_PASSWORD_HASH_TIME_COST": "0"}, "APEX_PASSWORD_HASH_TIME_COST"),
        ({"APEX_PASSWORD_HASH_MEMORY_KIB": "lots"}, "APEX_PASSWORD_HASH_MEMORY_KIB"),
        (
            {"APEX_PASSWORD_HASH_MEMORY_KIB": "16", "APEX_PASSWORD_HASH_PARALLELISM": "4"},
            "at least 8 per lane",
        ),
    ],
)
def test_password_hash_cost_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_totp_window() -> None:
    secret = mfa.new_totp_secret()
    totp = pyotp.TOTP(secret)
    now = 1_700_000_000.0
    step = int(now // 30)
    assert mfa.match_totp(secret, totp.at(now), now=now).step == step
    assert mfa.match_totp(secret, totp.at(now - 30), now=now).step == step - 1
    assert mfa.match_totp(secret, totp.at(now + 30), now=now).step == step + 1
    assert mfa.match_totp(secret, totp.at(now - 90), now=now).step is None
    assert mfa.match_totp(secret, "12345", now=now).step is None
    assert mfa.match_totp(secret, "abcdef", now=now).step is None
    uri = mfa.provisioning_uri(secret, "a@example.com")
    assert uri.startswith("otpauth://totp/Apex:a%40example.com?")
    assert f"secret={secret}" in uri


def test_backup_codes() -> None:
    codes = mfa.generate_backup_codes()
    assert len(codes) == 10
    assert len(set(codes)) == 10
    for code in codes:
        assert len(code) == 11
        assert code[5] == "-"
        assert mfa.normalize_backup_code(code.upper()) == code.replace("-", "")
        assert mfa.normalize_backup_code(f" {code[:5]} {code[6:]} ") == code.replace("-", "")
    assert mfa.normalize_backup_code("123456") is None


def test_pkce_s256_rfc7636_vector() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_reset_mail() -> None:
    body = reset_mail_body("http://auth.apex.test", "tok-en_1", 900)
    assert "http://auth.apex.test/reset?token=tok-en_1\n" in body
    assert "\nToken: tok-en_1\n" in body
    message = Mailer("smtp://127.0.0.1:2525", "no-reply@apex.test").compose(
        "a@example.com", "Apex password reset", body
    )
    assert message["To"] == "a@example.com"
    assert "password reset" in message["Subject"]


def test_sessions_without_method_are_api_key_sessions() -> None:
    legacy = ["u1", "key123456789", "", "[]", "1.0", "2.0", None, "60", None, None]
    session = _session("a" * 32, legacy)
    assert session is not None
    assert (session.method, session.amr, session.api_key_id) == (
        "api_key",
        ("api_key",),
        "key123456789",
    )
    interactive = ["u1", "", "", "[]", "1.0", "2.0", None, "60", "password", '["pwd", "otp"]']
    session = _session("b" * 32, interactive)
    assert session is not None
    assert (session.method, session.amr, session.api_key_id) == ("password", ("pwd", "otp"), None)
    assert session.to_json()["method"] == "password"
    # An api_key session without its key is not a session.
    assert _session("c" * 32, ["u1", "", "", "[]", "1", "2", None, "60", "api_key", None]) is None


# --- SAML ---------------------------------------------------------------------------

IDP = "https://idp.example.com/metadata"
SP = "apex-auth"
ACS = "http://auth.apex.test/auth/saml/acs"


@pytest.fixture(scope="module")
def idp_key() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    return key_pem, cert.public_bytes(Encoding.PEM).decode()


def _iso(offset: float) -> str:
    return dt.datetime.fromtimestamp(time.time() + offset, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _response(idp_key: tuple[str, str], **overrides: Any) -> tuple[bytes, Any]:
    o: dict[str, Any] = {"issuer": IDP, "audience": SP, "recipient": ACS, "not_after": 300}
    o.update(overrides)
    xml = f"""<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol"
 xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_r1" Version="2.0"
 IssueInstant="{_iso(0)}" InResponseTo="_req1"><saml:Issuer>{IDP}</saml:Issuer>
<samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>
<saml:Assertion ID="_a1" Version="2.0" IssueInstant="{_iso(0)}">
<saml:Issuer>{o["issuer"]}</saml:Issuer>
<saml:Subject><saml:NameID>alice</saml:NameID>
<saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer">
<saml:SubjectConfirmationData InResponseTo="_req1" Recipient="{o["recipient"]}"
 NotOnOrAfter="{_iso(o["not_after"])}"/></saml:SubjectConfirmation></saml:Subject>
<saml:Conditions NotBefore="{_iso(-10)}" NotOnOrAfter="{_iso(o["not_after"])}">
<saml:AudienceRestriction><saml:Audience>{o["audience"]}</saml:Audience></saml:AudienceRestriction>
</saml:Conditions><saml:AttributeStatement>
<saml:Attribute Name="email">
<saml:AttributeValue>alice@example.com</saml:AttributeValue></saml:Attribute>
<saml:Attribute Name="groups"><saml:AttributeValue>eng</saml:AttributeValue>
<saml:AttributeValue>ops</saml:AttributeValue></saml:Attribute>
</saml:AttributeStatement></saml:Assertion></samlp:Response>"""
    root = etree.fromstring(xml.encode())
    assertion = root.find("saml:Assertion", saml.NS)
    key_pem, cert_pem = idp_key
    signed = XMLSigner(
        method=methods.enveloped, c14n_algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"
    )
    signed_assertion = signed.sign(assertion, key=key_pem, cert=cert_pem, reference_uri="_a1")
    # The signature goes right after the Issuer, as the SAML schema wants.
    signature = signed_assertion.find("ds:Signature", saml.NS)
    signed_assertion.remove(signature)
    signed_assertion.insert(1, signature)
    root.replace(assertion, signed_assertion)
    return etree.tostring(root), root


def _verify(idp_key: tuple[str, str], raw: bytes) -> saml.VerifiedAssertion:
    metadata = saml.IdpMetadata(
        entity_id=IDP, sso_url="https://idp/sso", certificates=(idp_key[1],)
    )
    return saml.verify_response(base64.b64encode(raw).decode(), metadata, SP, ACS)


def test_saml_valid_assertion(idp_key: tuple[str, str]) -> None:
    raw, _ = _response(idp_key)
    verified = _verify(idp_key, raw)
    assert (verified.id, verified.name_id, verified.email) == ("_a1", "alice", "alice@example.com")
    assert verified.groups == ("eng", "ops")
    assert verified.in_response_to == "_req1"


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"issuer": "https://evil"}, "Issuer"),
        ({"audience": "someone-else"}, "Audience"),
        ({"recipient": "https://evil/acs"}, "Recipient"),
        ({"not_after": -120}, "expired"),
    ],
)
def test_saml_checks(idp_key: tuple[str, str], overrides: dict[str, Any], detail: str) -> None:
    raw, _ = _response(idp_key, **overrides)
    with pytest.raises(saml.SamlError, match=detail):
        _verify(idp_key, raw)


def test_saml_tampering_and_wrapping(idp_key: tuple[str, str]) -> None:
    raw, root = _response(idp_key)
    with pytest.raises(saml.SamlError, match="signature"):
        _verify(idp_key, raw.replace(b"alice@example.com", b"admin@example.com"))
    # Wrapping: an unsigned assertion for someone else next to the signed one.
    evil = etree.fromstring(etree.tostring(root.find("saml:Assertion", saml.NS)))
    evil.set("ID", "_evil")
    evil.remove(evil.find("ds:Signature", saml.NS))
    root.insert(2, evil)
    with pytest.raises(saml.SamlError, match="exactly one Assertion"):
        _verify(idp_key, etree.tostring(root))


def test_saml_refuses_unsigned_dtd_and_garbage(idp_key: tuple[str, str]) -> None:
    raw, root = _response(idp_key)
    assertion = root.find("saml:Assertion", saml.NS)
    assertion.remove(assertion.find("ds:Signature", saml.NS))
    with pytest.raises(saml.SamlError, match="signed"):
        _verify(idp_key, etree.tostring(root))
    with pytest.raises(saml.SamlError, match="DTD"):
        _verify(idp_key, b'<!DOCTYPE x [<!ENTITY a "b">]>' + raw)
    with pytest.raises(saml.SamlError, match="base64"):
        saml.verify_response(
            "!!!", saml.IdpMetadata(IDP, "https://idp/sso", (idp_key[1],)), SP, ACS
        )
