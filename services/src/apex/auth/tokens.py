"""Access tokens: RS256 JWTs signed with the service's RSA key, and its JWKS.

Verification pins the algorithm to RS256 (no ``none``, no HS256 signed with the
public key as an HMAC secret), requires the claims the platform relies on, and
checks issuer, audience and the signing key id.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from apex.common import jwts
from apex.common.config import lifetime, load_private_key

__all__ = ["ALGORITHM", "AccessClaims", "Signer", "TokenError"]

log = logging.getLogger(__name__)

ALGORITHM: Final = jwts.ALGORITHM
REQUIRED_CLAIMS: Final = ("iss", "aud", "sub", "sid", "iat", "nbf", "exp")
# Far beyond any token we issue (about 1 KiB): refuse before parsing.
MAX_TOKEN_LENGTH: Final = 4096


class TokenError(Exception):
    """A token was rejected; ``code`` is the API error code (invalid_token, token_expired)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class AccessClaims:
    """The verified claims of an access token."""

    subject: str
    session_id: str
    tenant_id: str | None
    tier: str
    scopes: list[str]
    api_key_id: str | None
    issued_at: float  # NumericDates: ints, unless the lifetime is a fraction of a second
    expires_at: float
    token_id: str
    amr: list[str] = dataclasses.field(default_factory=list)


class Signer:
    """Signs and verifies access tokens with one RSA key pair."""

    def __init__(self, private_key: rsa.RSAPrivateKey, *, issuer: str, audience: str) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.issuer = issuer
        self.audience = audience
        self.kid = _thumbprint(self.public_key)

    @classmethod
    def from_pem(cls, pem: str | None, *, issuer: str, audience: str) -> Signer:
        """A signer for the PEM private key, or for a fresh ephemeral key when ``pem`` is None."""
        if pem is None:
            log.warning(
                "APEX_JWT_PRIVATE_KEY is not set: signing with an ephemeral key; tokens will not "
                "verify after a restart or on another instance"
            )
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            loaded = load_private_key(pem)
            if not isinstance(loaded, rsa.RSAPrivateKey):
                raise ValueError("APEX_JWT_PRIVATE_KEY must be an RSA private key")
            key = loaded
        return cls(key, issuer=issuer, audience=audience)

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set that verifies our tokens."""
        jwk = json.loads(RSAAlgorithm.to_jwk(self.public_key))
        jwk.update({"kid": self.kid, "alg": ALGORITHM, "use": "sig"})
        return {"keys": [jwk]}

    def issue(
        self,
        *,
        subject: str,
        session_id: str,
        tenant_id: str | None,
        tier: str,
        scopes: Sequence[str],
        api_key_id: str | None,
        ttl: float,
        now: float | None = None,
        amr: Sequence[str] = ("api_key",),
    ) -> str:
        """A signed access token valid for ``ttl`` seconds (whole seconds: integer times, as
        ever; a fraction, to the millisecond: fractional times, RFC 7519 NumericDates).

        ``kid`` (the API key id) is null for sessions not opened with an API key;
        ``amr`` names how the user authenticated (RFC 8176 style: pwd, otp, oidc, ...).
        """
        clock = time.time() if now is None else now
        # A fractional lifetime counts from the fractional now: from the whole second it
        # would lose up to a second, more than it has.
        issued_at = int(clock) if float(ttl).is_integer() else lifetime(clock)
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "sid": session_id,
            "tid": tenant_id,
            "tier": tier,
            "scopes": list(scopes),
            "kid": api_key_id,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": lifetime(issued_at + ttl),
            "jti": uuid.uuid4().hex,
            "amr": list(amr),
        }
        return jwt.encode(claims, self._private_key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def sign(self, claims: dict[str, Any], *, typ: str) -> str:
        """Sign other kinds of tokens (``typ`` header, e.g. context tokens) with our key."""
        return jwt.encode(
            claims, self._private_key, algorithm=ALGORITHM, headers={"kid": self.kid, "typ": typ}
        )

    def verify(self, token: str) -> AccessClaims:
        """The claims of a valid token; raise TokenError otherwise."""
        try:
            header = jwts.unverified_header(token, max_length=MAX_TOKEN_LENGTH)
            if header.get("kid") != self.kid:
                raise jwts.JwtRejected("kid", "names an unknown signing key")
            claims = jwts.decode(
                token,
                self.public_key,
                audience=self.audience,
                issuer=self.issuer,
                require=REQUIRED_CLAIMS,
            )
        except jwts.JwtRejected as exc:
            code = "token_expired" if exc.check == "exp" else "invalid_token"
            raise TokenError(code, f"token rejected: {exc}") from None
        return _access_claims(claims)


def _access_claims(claims: dict[str, Any]) -> AccessClaims:
    sub, sid, tid = claims.get("sub"), claims.get("sid"), claims.get("tid")
    scopes, kid = claims.get("scopes", []), claims.get("kid")
    if not (isinstance(sub, str) and isinstance(sid, str)):
        raise TokenError("invalid_token", "token claims sub and sid must be strings")
    if kid is not None and not isinstance(kid, str):
        raise TokenError("invalid_token", "token claim kid must be a string or null")
    amr = claims.get("amr", [])
    if not (isinstance(amr, list) and all(isinstance(a, str) for a in amr)):
        raise TokenError("invalid_token", "token claim amr must be a list of strings")
    if tid is not None and not isinstance(tid, str):
        raise TokenError("invalid_token", "token claim tid must be a string")
    if not (isinstance(scopes, list) and all(isinstance(s, str) for s in scopes)):
        raise TokenError("invalid_token", "token claim scopes must be a list of strings")
    return AccessClaims(
        subject=sub,
        session_id=sid,
        tenant_id=tid,
        tier=str(claims.get("tier", "")),
        scopes=scopes,
        api_key_id=kid,
        issued_at=lifetime(float(claims["iat"])),
        expires_at=lifetime(float(claims["exp"])),
        token_id=str(claims.get("jti", "")),
        amr=amr,
    )


def _thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """The RFC 7638 JWK thumbprint: a key id that is the same wherever the key is loaded."""
    numbers = public_key.public_numbers()

    def b64(value: int) -> str:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    canonical = json.dumps(
        {"e": b64(numbers.e), "kty": "RSA", "n": b64(numbers.n)}, separators=(",", ":")
    )
    return (
        base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    )
