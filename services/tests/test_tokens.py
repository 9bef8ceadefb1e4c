"""Access tokens: signing, verification and every way a token can be wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from apex.auth.tokens import Signer, TokenError

ISSUER, AUDIENCE = "apex-auth", "apex"


@pytest.fixture(scope="module", name="private_key")
def _private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(name="signer")
def _signer(private_key: rsa.RSAPrivateKey) -> Signer:
    return Signer(private_key, issuer=ISSUER, audience=AUDIENCE)


def _issue(signer: Signer, **overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "subject": "user-1",
        "session_id": "0" * 32,
        "tenant_id": None,
        "tier": "pro",
        "scopes": ["read"],
        "api_key_id": "abcdefghijkl",
        "ttl": 60,
    }
    arguments.update(overrides)
    return signer.issue(**arguments)


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "sid": "0" * 32,
        "tid": None,
        "tier": "pro",
        "scopes": [],
        "kid": "abcdefghijkl",
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "jti": "j",
    }
    claims.update(overrides)
    return claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _expect(signer: Signer, token: str, code: str = "invalid_token") -> TokenError:
    with pytest.raises(TokenError) as info:
        signer.verify(token)
    assert info.value.code == code
    return info.value


def test_issued_token_verifies_with_all_claims(signer: Signer) -> None:
    token = _issue(signer, tenant_id="t-1", scopes=["read", "write"])
    claims = signer.verify(token)
    assert claims.subject == "user-1"
    assert claims.session_id == "0" * 32
    assert claims.tenant_id == "t-1"
    assert claims.tier == "pro"
    assert claims.scopes == ["read", "write"]
    assert claims.api_key_id == "abcdefghijkl"
    assert claims.expires_at - claims.issued_at == 60
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": signer.kid, "typ": "JWT"}
    raw = jwt.decode(token, options={"verify_signature": False})
    assert set(raw) == {
        "iss",
        "aud",
        "sub",
        "sid",
        "tid",
        "tier",
        "scopes",
        "kid",
        "iat",
        "nbf",
        "exp",
        "jti",
        "amr",
    }
    assert raw["amr"] == ["api_key"]


def test_jwks_verifies_our_tokens(signer: Signer) -> None:
    jwks = signer.jwks()
    (jwk,) = jwks["keys"]
    assert jwk["kty"] == "RSA"
    assert (jwk["alg"], jwk["use"], jwk["kid"]) == ("RS256", "sig", signer.kid)
    assert "d" not in jwk  # the public half only
    public_key = jwt.PyJWK(jwk).key
    decoded = jwt.decode(
        _issue(signer), public_key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER
    )
    assert decoded["sub"] == "user-1"


def test_kid_is_the_same_wherever_the_key_is_loaded(private_key: rsa.RSAPrivateKey) -> None:
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    first = Signer.from_pem(pem, issuer=ISSUER, audience=AUDIENCE)
    second = Signer.from_pem(pem, issuer=ISSUER, audience=AUDIENCE)
    assert first.kid == second.kid
    assert second.verify(_issue(first)).subject == "user-1"


def test_without_a_key_an_ephemeral_one_is_generated() -> None:
    first = Signer.from_pem(None, issuer=ISSUER, audience=AUDIENCE)
    second = Signer.from_pem(None, issuer=ISSUER, audience=AUDIENCE)
    assert first.kid != second.kid
    _expect(second, _issue(first))


def test_expired_token(signer: Signer) -> None:
    token = _issue(signer, ttl=5, now=int(time.time()) - 60)
    _expect(signer, token, "token_expired")


def test_whole_second_lifetimes_keep_integer_times(signer: Signer) -> None:
    raw = jwt.decode(_issue(signer, ttl=60), options={"verify_signature": False})
    assert all(type(raw[claim]) is int for claim in ("iat", "nbf", "exp"))


def test_a_fractional_lifetime_expires_to_the_millisecond(signer: Signer) -> None:
    """RFC 7519 NumericDates may be fractional: a 0.25 s token lives 0.25 s from its
    fractional issue time, and expires then, not at pyjwt's whole second before."""
    now = time.time()
    live = _issue(signer, ttl=0.25, now=now - 0.2)
    raw = jwt.decode(live, options={"verify_signature": False})
    assert raw["exp"] == round(raw["iat"] + 0.25, 3)
    assert raw["iat"] == round(now - 0.2, 3)
    claims = signer.verify(live)
    assert claims.expires_at - claims.issued_at == pytest.approx(0.25)
    _expect(signer, _issue(signer, ttl=0.25, now=now - 0.3), "token_expired")


def test_an_expiry_that_is_not_a_number_is_an_invalid_token(
    signer: Signer, private_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(
        _claims(exp="soon"), private_key, algorithm="RS256", headers={"kid": signer.kid}
    )
    _expect(signer, token, "invalid_token")


def test_alg_none_is_refused(signer: Signer) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": signer.kid}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    _expect(signer, f"{header}.{payload}.")


def test_hs256_signed_with_the_public_key_is_refused(signer: Signer) -> None:
    # The classic algorithm confusion: an HMAC keyed with the (public) PEM.
    pem = signer.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": signer.kid}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    signature = _b64(hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    _expect(signer, f"{header}.{payload}.{signature}")


def test_token_signed_by_another_key_is_refused(signer: Signer) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # Even when it claims our key id.
    token = jwt.encode(_claims(), other, algorithm="RS256", headers={"kid": signer.kid})
    assert "signature" in _expect(signer, token).detail


def test_unknown_kid_is_refused(signer: Signer, private_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(_claims(), private_key, algorithm="RS256", headers={"kid": "someone-else"})
    _expect(signer, token)


def test_tampered_payload_is_refused(signer: Signer) -> None:
    header, payload, signature = _issue(signer).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["tier"] = "enterprise"
    _expect(signer, f"{header}.{_b64(json.dumps(claims).encode())}.{signature}")


@pytest.mark.parametrize(
    ("claim", "value", "detail"),
    [("aud", "someone-else", "audience"), ("iss", "evil-issuer", "issuer")],
)
def test_wrong_audience_or_issuer_is_refused(
    signer: Signer, private_key: rsa.RSAPrivateKey, claim: str, value: str, detail: str
) -> None:
    token = jwt.encode(
        _claims(**{claim: value}), private_key, algorithm="RS256", headers={"kid": signer.kid}
    )
    assert detail in _expect(signer, token).detail


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "sid", "nbf", "iss", "aud"])
def test_required_claims(signer: Signer, private_key: rsa.RSAPrivateKey, claim: str) -> None:
    claims = _claims()
    del claims[claim]
    token = jwt.encode(claims, private_key, algorithm="RS256", headers={"kid": signer.kid})
    _expect(signer, token)


def test_not_yet_valid_token_is_refused(signer: Signer) -> None:
    _expect(signer, _issue(signer, now=int(time.time()) + 3600))


@pytest.mark.parametrize("claim", [{"sub": 5}, {"scopes": "read"}, {"scopes": [1]}, {"tid": 7}])
def test_claims_of_the_wrong_type_are_refused(
    signer: Signer, private_key: rsa.RSAPrivateKey, claim: dict[str, Any]
) -> None:
    token = jwt.encode(
        _claims(**claim), private_key, algorithm="RS256", headers={"kid": signer.kid}
    )
    _expect(signer, token)


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b.c", "a.b", "....", "\u00e9.\u00e9.\u00e9", "x" * 5000]
)
def test_malformed_tokens(signer: Signer, token: str) -> None:
    _expect(signer, token)
