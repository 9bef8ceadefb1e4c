"""RS256 JWT checks every verifier shares: the algorithm pinned, pyjwt's refusals named.

Access tokens (apex.auth), context tokens (apex.common.identity), IdP id_tokens
(apex.auth.oidc) and the gateway's handshake all verify through here; each turns a
JwtRejected into its own error and wording.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import jwt

__all__ = ["ALGORITHM", "JwtRejected", "decode", "unverified_header"]

ALGORITHM = "RS256"


class JwtRejected(ValueError):
    """A token was refused: `check` names what failed (token, alg, kid, exp, nbf, iat,
    aud, iss, signature, claims), `reason` says how."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason


def unverified_header(token: str, *, max_length: int) -> dict[str, Any]:
    """The header of a token that says it is RS256-signed; nothing is verified yet."""
    if not token:
        raise JwtRejected("token", "is empty")
    if len(token) > max_length:
        raise JwtRejected("token", "is too long")
    try:
        header: dict[str, Any] = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise JwtRejected("token", "is malformed") from None
    # Pinned before any key is looked at: no "none", no HMAC keyed with a public key.
    if header.get("alg") != ALGORITHM:
        raise JwtRejected("alg", f"must be {ALGORITHM}")
    return header


def decode(
    token: str,
    key: Any,
    *,
    audience: str | None,
    issuer: str | None,
    require: Iterable[str],
    leeway: float = 0,
) -> dict[str, Any]:
    """The claims of `token` if its signature (by `key`), times, audience and issuer hold
    and every claim of `require` is present; JwtRejected naming the failed check if not.

    `exp` is checked here, to the fraction of a second: pyjwt truncates it to an int, and
    would refuse a token with a fractional expiry (RFC 7519 NumericDate) up to a second
    before it. A whole-second `exp` is checked as pyjwt does: expired once now >= exp."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": list(require), "verify_exp": False},
        )
    except jwt.MissingRequiredClaimError as exc:
        raise JwtRejected("claims", f"lack {exc.claim!r}") from None
    except jwt.ImmatureSignatureError as exc:
        check = "nbf" if "nbf" in str(exc) else "iat"
        raise JwtRejected(check, "is in the future: the token is not valid yet") from None
    except jwt.InvalidAudienceError:
        raise JwtRejected("aud", "names another audience") from None
    except jwt.InvalidIssuerError:
        raise JwtRejected("iss", "names another issuer") from None
    except jwt.InvalidSignatureError:
        raise JwtRejected("signature", "does not verify") from None
    except jwt.PyJWTError as exc:
        raise JwtRejected("token", f"is invalid ({type(exc).__name__})") from None
    if "exp" in claims:
        _check_expiry(claims["exp"], leeway)
    return claims


def _check_expiry(exp: object, leeway: float) -> None:
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        raise JwtRejected("claims", "exp is not a NumericDate")
    if exp <= time.time() - leeway:
        raise JwtRejected("exp", "has passed: the token expired")
