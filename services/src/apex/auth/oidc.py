"""OpenID Connect relying party: authorization code flow with PKCE (S256), state and nonce.

A login's state is bound to the browser that started it: the state is stored under the
SHA-256 of a browser binding (the ``__Host-`` cookie the login route sets, see
apex.auth.sso_routes), and only a callback presenting the same binding finds it. A
callback URL used from another browser (leaked, or forced on a victim: login CSRF) is an
unknown state, and the state stays usable by its own browser.

Discovery (``{issuer}/.well-known/openid-configuration``) and the IdP's JWKS are
fetched on first use and cached; an id_token signed with a key id the cached JWKS
lacks makes one refetch (the IdP rotated its keys). id_tokens must be RS256, signed by
a JWKS key, with iss == issuer, aud containing our client id (and azp == client id if
there are several audiences), exp/iat, and the nonce stored with the login's state.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import secrets
import time
from typing import Any, Final
from urllib.parse import urlencode

import httpx
import jwt
from redis.asyncio import Redis

from apex.common import jwts

__all__ = [
    "IdTokenError",
    "IdpError",
    "IdpUnavailable",
    "OidcClient",
    "code_challenge",
]

ALGORITHM: Final = jwts.ALGORITHM
STATE_TTL: Final = 600
SCOPE: Final = "openid email profile groups"
LEEWAY_SECONDS: Final = 5
MAX_ID_TOKEN_LENGTH: Final = 16_384


class IdpUnavailable(Exception):
    """The IdP did not answer, or answered with a server error (502 idp_unavailable)."""


class IdpError(Exception):
    """The IdP refused (e.g. invalid_grant at the token endpoint) (401 idp_error)."""


class IdTokenError(Exception):
    """The id_token failed a check; the message names it (401 invalid_id_token)."""


class InvalidState(Exception):
    """Unknown, used or expired state (400 invalid_state)."""


def code_challenge(verifier: str) -> str:
    """The PKCE S256 challenge of ``verifier`` (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclasses.dataclass(frozen=True)
class PendingAuth:
    """What a login's state stands for."""

    nonce: str
    verifier: str


class OidcClient:
    """The RP of one IdP (APEX_IDP_ISSUER / CLIENT_ID / CLIENT_SECRET)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        redis: Redis,
        *,
        prefix: str,
        issuer: str,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
    ) -> None:
        self._http = http
        self._redis = redis
        self._prefix = prefix
        self.issuer = issuer
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self._metadata: dict[str, Any] | None = None
        self._jwks: dict[str, jwt.PyJWK] = {}
        self._lock = asyncio.Lock()

    def _state_key(self, state: str, binding: str) -> str:
        digest = hashlib.sha256(binding.encode()).hexdigest()
        return f"{self._prefix}oidc_state:{state}:{digest}"

    async def metadata(self) -> dict[str, Any]:
        """The IdP's discovery document (cached after the first success)."""
        if self._metadata is None:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = await self._get_json(url, "discovery")
            for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(document.get(field), str):
                    raise IdpUnavailable(f"the IdP's discovery document lacks {field}")
            self._metadata = document
        return self._metadata

    async def authorization_url(self, binding: str) -> str:
        """Where to send the browser: a fresh state (bound to ``binding``, the browser's),
        nonce and PKCE verifier are stored."""
        metadata = await self.metadata()
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        await self._redis.set(
            self._state_key(state, binding),
            json.dumps({"nonce": nonce, "verifier": verifier}),
            ex=STATE_TTL,
        )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": SCOPE,
                "state": state,
                "nonce": nonce,
                "code_challenge": code_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint = str(metadata["authorization_endpoint"])
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def take_state(self, state: str, binding: str) -> PendingAuth:
        """Consume a state of the browser with ``binding`` (single use); InvalidState if
        unknown, used, expired or started by another browser."""
        if not state or len(state) > 256:
            raise InvalidState("missing or malformed state")
        if not binding:
            raise InvalidState("this browser started no login (no login cookie)")
        key = self._state_key(state, binding)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(key)
            pipe.delete(key)
            raw, _ = await pipe.execute()
        if raw is None:
            raise InvalidState("unknown, used or expired state, or a login of another browser")
        data = json.loads(raw)
        return PendingAuth(nonce=data["nonce"], verifier=data["verifier"])

    async def exchange(self, code: str, pending: PendingAuth) -> dict[str, Any]:
        """Redeem an authorization code; return the verified id_token claims."""
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": pending.verifier,
        }
        methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        headers = {"Accept": "application/json"}
        if "client_secret_basic" in methods:
            pair = f"{self.client_id}:{self._client_secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            form.update(client_id=self.client_id, client_secret=self._client_secret)
        try:
            response = await self._http.post(
                str(metadata["token_endpoint"]), data=form, headers=headers
            )
        except httpx.HTTPError as exc:
            raise IdpUnavailable(f"token endpoint unreachable: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise IdpUnavailable(f"token endpoint answered {response.status_code}")
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise IdpError(f"token endpoint answered {response.status_code} without JSON")
        if response.status_code != 200 or "error" in payload:
            error = str(payload.get("error", "error"))[:100]
            description = str(payload.get("error_description", ""))[:200]
            raise IdpError(
                f"token endpoint: {error}" + (f" ({description})" if description else "")
            )
        id_token = payload.get("id_token")
        if not isinstance(id_token, str):
            raise IdTokenError("the token response has no id_token")
        return await self.verify_id_token(id_token, nonce=pending.nonce)

    async def verify_id_token(self, token: str, *, nonce: str) -> dict[str, Any]:
        """The claims of a valid id_token; IdTokenError naming the failed check otherwise."""
        try:
            header = jwts.unverified_header(token, max_length=MAX_ID_TOKEN_LENGTH)
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise jwts.JwtRejected("kid", "names no key")
            key = await self._key(kid)
            claims = jwts.decode(
                token,
                key.key,
                audience=self.client_id,
                issuer=self.issuer,
                require=("iss", "aud", "sub", "exp", "iat"),
                leeway=LEEWAY_SECONDS,
            )
        except jwts.JwtRejected as exc:
            # The detail starts with the check that failed ("exp: ...", "aud: ...").
            raise IdTokenError(f"{exc.check}: the id_token's {exc.check} {exc.reason}") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.client_id:
            raise IdTokenError("azp: several audiences and azp is not this client")
        if not isinstance(claims.get("iat"), int | float) or claims["iat"] > time.time() + 60:
            raise IdTokenError("iat: the id_token is issued in the future")
        got = claims.get("nonce")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise IdTokenError("nonce: the id_token's nonce does not match this login")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise IdTokenError("sub: the id_token's subject is empty")
        return claims

    async def _key(self, kid: str) -> jwt.PyJWK:
        if kid in self._jwks:
            return self._jwks[kid]
        # Unknown kid: the IdP may have rotated its keys; refetch once.
        async with self._lock:
            if kid not in self._jwks:
                await self._refresh_jwks()
        try:
            return self._jwks[kid]
        except KeyError:
            raise IdTokenError(f"kid: no key {kid[:64]!r} in the IdP's JWKS") from None

    async def _refresh_jwks(self) -> None:
        metadata = await self.metadata()
        document = await self._get_json(str(metadata["jwks_uri"]), "JWKS")
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document.get("keys", []) if isinstance(document.get("keys"), list) else []:
            if not isinstance(entry, dict) or entry.get("kty") != "RSA" or "kid" not in entry:
                continue
            if entry.get("use", "sig") != "sig":
                continue
            try:
                keys[str(entry["kid"])] = jwt.PyJWK.from_dict(entry, algorithm=ALGORITHM)
            except jwt.PyJWTError:
                continue
        self._jwks = keys

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise IdpUnavailable(f"the IdP's {what} is unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise IdpUnavailable(f"the IdP's {what} answered {response.status_code}")
        try:
            document = response.json()
        except ValueError:
            raise IdpUnavailable(f"the IdP's {what} is not JSON") from None
        if not isinstance(document, dict):
            raise IdpUnavailable(f"the IdP's {what} is not a JSON object")
        return document
