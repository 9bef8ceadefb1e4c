"""RFC 6750 section 3 challenges (``WWW-Authenticate: Bearer ...``), for every service.

One form for the platform, with or without FastAPI: the realm names the protection
space (RFC 7235 section 2.2); a request that carried no credentials gets no error code;
a presented token that is expired, revoked or malformed gets ``error="invalid_token"``
(the specific reason stays in the JSON body); a request that carries its token wrongly
(in the URL, or more than one way) gets ``error="invalid_request"`` with its 400.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = ["REALM", "BearerError", "bearer_challenge"]

# The protection space our challenges name (RFC 7235 section 2.2).
REALM: Final = "apex"
# The RFC 6750 section 3.1 error codes (insufficient_scope: a 403; none of ours yet).
BearerError = Literal["invalid_request", "invalid_token", "insufficient_scope"]


def bearer_challenge(error: BearerError | None = "invalid_token") -> str:
    """The challenge of a refusal: ``Bearer realm="apex"``, with ``error`` unless the
    request carried no credentials (None: RFC 6750 section 3.1, no error code)."""
    challenge = f'Bearer realm="{REALM}"'
    return f'{challenge}, error="{error}"' if error else challenge
