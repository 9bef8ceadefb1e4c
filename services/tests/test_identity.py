"""verify_context_token: what a receiving service accepts and refuses."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from apex.auth.tokens import Signer
from apex.common.identity import CONTEXT_TOKEN_TYPE, ContextTokenError, verify_context_token

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SIGNER = Signer(KEY, issuer="apex-auth", audience="apex")
JWKS = SIGNER.jwks()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "apex-auth",
        "aud": "billing",
        "sub": "u1",
        "sid": "s1",
        "azp": "s1",
        "tid": None,
        "tier": "pro",
        "perms": ["agents:read"],
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "jti": "j1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not ...}


def test_a_valid_token_gives_its_claims() -> None:
    token = SIGNER.sign(_claims(), typ=CONTEXT_TOKEN_TYPE)
    claims = verify_context_token(token, JWKS, "billing", issuer="apex-auth")
    assert claims["sub"] == "u1"
    assert claims["perms"] == ["agents:read"]


@pytest.mark.parametrize(
    ("overrides", "audience", "match"),
    [
        ({}, "other", "audience"),
        ({"exp": -1}, "billing", "expired"),
        ({"aud": ...}, "billing", "aud"),
        ({"sid": ...}, "billing", "sid"),
        ({"iss": "evil"}, "billing", "issuer"),
    ],
)
def test_bad_claims_are_refused(overrides: dict[str, Any], audience: str, match: str) -> None:
    # Built when the test runs, not when it is collected: a slow collection must not make
    # the 60 s token expire first. A negative exp is that many seconds ago.
    if overrides.get("exp", 0) < 0:
        overrides = {**overrides, "exp": int(time.time()) + overrides["exp"]}
    token = SIGNER.sign(_claims(**overrides), typ=CONTEXT_TOKEN_TYPE)
    with pytest.raises(ContextTokenError, match=match):
        verify_context_token(token, JWKS, audience, issuer="apex-auth")


def test_an_access_token_is_not_a_context_token() -> None:
    token = SIGNER.sign(_claims(), typ="JWT")
    with pytest.raises(ContextTokenError, match="typ"):
        verify_context_token(token, JWKS, "billing")


def test_alg_none_and_hs256_with_the_public_key_are_refused() -> None:
    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    header = {"alg": "none", "typ": CONTEXT_TOKEN_TYPE, "kid": SIGNER.kid}
    with pytest.raises(ContextTokenError, match="RS256"):
        verify_context_token(f"{b64(header)}.{b64(_claims())}.", JWKS, "billing")
    hs = jwt.encode(
        _claims(),
        "not-the-key-but-long-enough-for-hmac-sha256",
        algorithm="HS256",
        headers={"typ": CONTEXT_TOKEN_TYPE, "kid": SIGNER.kid},
    )
    with pytest.raises(ContextTokenError, match="RS256"):
        verify_context_token(hs, JWKS, "billing")


def test_another_key_with_our_kid_is_refused() -> None:
    other = Signer(
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        issuer="apex-auth",
        audience="apex",
    )
    token = jwt.encode(
        _claims(), other._private_key, algorithm="RS256",
        headers={"typ": CONTEXT_TOKEN_TYPE, "kid": SIGNER.kid},
    )  # fmt: skip
    with pytest.raises(ContextTokenError, match="signature"):
        verify_context_token(token, JWKS, "billing")
    with pytest.raises(ContextTokenError, match="unknown key"):
        verify_context_token(other.sign(_claims(), typ=CONTEXT_TOKEN_TYPE), JWKS, "billing")


def test_garbage_and_empty_audience() -> None:
    with pytest.raises(ContextTokenError, match="malformed"):
        verify_context_token("garbage", JWKS, "billing")
    with pytest.raises(ContextTokenError, match="audience"):
        verify_context_token("garbage", JWKS, "")
    with pytest.raises(ContextTokenError, match="no keys"):
        verify_context_token(SIGNER.sign(_claims(), typ=CONTEXT_TOKEN_TYPE), {}, "billing")
