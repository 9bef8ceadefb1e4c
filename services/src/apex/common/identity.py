"""User-context tokens: how a service learns, from apex.auth, who it is working for.

A service that receives a request for a user asks apex.auth for a context token
(``POST /auth/context-token {audience}`` with the user's access token) and passes it
on; the receiving service verifies it with :func:`verify_context_token` against
apex.auth's JWKS (``/.well-known/jwks.json``), offline. Revocation of the user's
session is visible through ``POST /auth/context-token/introspect`` only (RFC 7662: the
form ``token=...``, the service authenticated with its API key's client credentials):
context tokens are short-lived (APEX_CONTEXT_TOKEN_TTL) for that reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import jwt

from apex.common import jwts

__all__ = ["CONTEXT_TOKEN_TYPE", "ContextTokenError", "verify_context_token"]

CONTEXT_TOKEN_TYPE: Final = "apex-context+jwt"  # noqa: S105 - a JWT "typ", not a secret
ALGORITHM: Final = jwts.ALGORITHM
REQUIRED_CLAIMS: Final = ("iss", "aud", "sub", "sid", "iat", "exp", "jti")
MAX_TOKEN_LENGTH: Final = 16_384


class ContextTokenError(ValueError):
    """A context token was refused; the message says why."""


def verify_context_token(
    token: str,
    jwks: Mapping[str, Any],
    audience: str,
    *,
    issuer: str | None = None,
    leeway: float = 0,
) -> dict[str, Any]:
    """The claims of a valid context token meant for ``audience``; ContextTokenError if not.

    Checks: RS256 only (no ``none``, no HMAC), the ``typ`` header, a key of ``jwks``
    (a JWKS document, e.g. apex.auth's) chosen by the header ``kid``, the signature,
    ``aud`` containing ``audience``, ``exp``/``iat``/``nbf``, the required claims and,
    if given, ``iss``.
    """
    if not audience:
        raise ContextTokenError("an audience is required")
    try:
        header = jwts.unverified_header(token, max_length=MAX_TOKEN_LENGTH)
        if header.get("typ") != CONTEXT_TOKEN_TYPE:
            raise jwts.JwtRejected("typ", f"must be {CONTEXT_TOKEN_TYPE!r}: not a context token")
        claims = jwts.decode(
            token,
            _key_for(jwks, header.get("kid")),
            audience=audience,
            issuer=issuer,
            require=REQUIRED_CLAIMS,
            leeway=leeway,
        )
    except jwts.JwtRejected as exc:
        raise ContextTokenError(f"context token rejected: {exc}") from None
    if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("sid"), str):
        raise ContextTokenError("token claims sub and sid must be strings")
    return claims


def _key_for(jwks: Mapping[str, Any], kid: object) -> Any:
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise ContextTokenError("the JWKS has no keys")
    for jwk in keys:
        if isinstance(jwk, Mapping) and jwk.get("kid") == kid and jwk.get("kty") == "RSA":
            try:
                return jwt.PyJWK(dict(jwk), algorithm=ALGORITHM).key
            except jwt.PyJWTError:
                raise ContextTokenError(f"unusable key {kid!r} in the JWKS") from None
    raise ContextTokenError(f"token signed by an unknown key {str(kid)[:64]!r}")
