"""A fake OpenID Connect provider: discovery, JWKS, /authorize, /token, /userinfo.

No login UI: the test says who the IdP authenticates (`fake_idp.login_as(...)`), then
/authorize redirects straight back with a code. /token checks what a real provider
checks (client authentication, single-use codes, redirect_uri, PKCE S256) and returns
an RS256 id_token; `next_id_token(...)` makes the next one bad in a chosen way.

The issuer is the base URL the client used (so an IdP reached through a fault proxy is
consistently the proxy's URL); `fake_idp.issuer` is the direct one.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus, urlencode, urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from apex_testkit._fakes._control import FakeClient
from apex_testkit._fakes._server import CONTROL, FakeServer, form_of
from apex_testkit._keys import rsa_key

CODE_TTL = 60
TOKEN_TTL = 300
REALM = "fake-oidc"


@dataclass
class _Key:
    kid: str
    private: rsa.RSAPrivateKey = field(repr=False)

    @classmethod
    def new(cls, kid: str, name: str) -> _Key:
        """The process's key `name` (`_keys.rsa_key`) under the id `kid`."""
        return cls(kid, rsa_key(name))

    def jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**data, "kid": self.kid, "use": "sig", "alg": "RS256"}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _s256(verifier: str) -> str:
    return _b64url(hashlib.sha256(verifier.encode()).digest())


def _issuer(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _oauth_error(error: str, description: str, status: int = 400) -> Response:
    # RFC 6749 section 5.2: a 401 (invalid_client) challenges with the scheme clients
    # authenticate with (HTTP Basic, section 2.3.1).
    headers = {"WWW-Authenticate": f'Basic realm="{REALM}"'} if status == 401 else None
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


def _bearer_error(status: int, error: str | None) -> Response:
    """RFC 6750 section 3: no error code when the request carried no token."""
    challenge = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")
    return Response(status_code=status, headers={"WWW-Authenticate": challenge})


class OidcServer(FakeServer):
    name = "oidc"

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.client_id = "apex-test-client"
        self.client_secret = secrets.token_urlsafe(24)
        self._first_key = _Key.new("key-1", "fake-oidc-0")
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.keys: list[_Key] = [self._first_key]
        self.rotations = 0
        self.identity: dict[str, Any] | None = None
        self.codes: dict[str, dict[str, Any]] = {}
        self.access_tokens: dict[str, dict[str, Any]] = {}
        self.id_token_faults: list[dict[str, Any]] = []
        self.token_errors: list[dict[str, Any]] = []

    def config(self) -> dict[str, Any]:
        return {
            "issuer": self.base_url,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }

    # -- protocol ---------------------------------------------------------------------

    async def discovery(self, request: Request) -> Response:
        issuer = _issuer(request)
        return JSONResponse(
            {
                "issuer": issuer,
                "authorization_endpoint": f"{issuer}/authorize",
                "token_endpoint": f"{issuer}/token",
                "userinfo_endpoint": f"{issuer}/userinfo",
                "jwks_uri": f"{issuer}/jwks",
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                ],
                "code_challenge_methods_supported": ["S256"],
                "scopes_supported": ["openid", "email", "profile", "groups"],
                "claims_supported": ["sub", "email", "email_verified", "name", "groups", "tenant"],
            }
        )

    async def jwks(self, request: Request) -> Response:
        return JSONResponse({"keys": [key.jwk() for key in self.keys]})

    async def authorize(self, request: Request) -> Response:
        params = request.query_params
        redirect_uri = params.get("redirect_uri", "")
        if params.get("client_id") != self.client_id:
            return _oauth_error("invalid_client", "unknown client_id")
        if not redirect_uri.startswith(("http://", "https://")):
            return _oauth_error("invalid_request", "redirect_uri missing or not absolute")
        state = params.get("state")

        def back(**query: str) -> Response:
            if state is not None:
                query["state"] = state
            parts = urlsplit(redirect_uri)
            joined = "&".join(q for q in (parts.query, urlencode(query)) if q)
            return RedirectResponse(urlunsplit(parts._replace(query=joined)), status_code=302)

        if params.get("response_type") != "code":
            return back(error="unsupported_response_type")
        if "openid" not in params.get("scope", "").split():
            return back(error="invalid_scope", error_description="scope must include openid")
        challenge = params.get("code_challenge")
        method = params.get("code_challenge_method", "plain" if challenge else None)
        if challenge and method != "S256":
            return back(error="invalid_request", error_description="only S256 PKCE")
        if self.identity is None:
            return back(error="login_required", error_description="fake_idp.login_as() first")
        code = secrets.token_urlsafe(24)
        self.codes[code] = {
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "code_challenge": challenge,
            "nonce": params.get("nonce"),
            "scope": params.get("scope", ""),
            "identity": dict(self.identity),
            "expires": time.time() + CODE_TTL,
            "used": False,
        }
        return back(code=code)

    def _client_credentials(self, request: Request, form: dict[str, str]) -> tuple[str, str]:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            raw = base64.b64decode(header[6:]).decode()
            user, _, password = raw.partition(":")
            return unquote_plus(user), unquote_plus(password)
        return form.get("client_id", ""), form.get("client_secret", "")

    async def token(self, request: Request) -> Response:
        form = await form_of(request)
        client_id, secret = self._client_credentials(request, form)
        if client_id != self.client_id or not secrets.compare_digest(secret, self.client_secret):
            return _oauth_error("invalid_client", "client authentication failed", 401)
        if self.token_errors:
            scripted = self.token_errors.pop(0)
            return _oauth_error(scripted["error"], "scripted by the test", scripted["status"])
        if form.get("grant_type") != "authorization_code":
            return _oauth_error("unsupported_grant_type", "only authorization_code")
        grant = self.codes.get(form.get("code", ""))
        if grant is None:
            return _oauth_error("invalid_grant", "unknown code")
        if grant["used"]:
            return _oauth_error("invalid_grant", "code already used")
        grant["used"] = True
        if grant["expires"] < time.time():
            return _oauth_error("invalid_grant", "code expired")
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return _oauth_error("invalid_grant", "redirect_uri does not match /authorize")
        if grant["code_challenge"] is not None:
            verifier = form.get("code_verifier")
            if not verifier or _s256(verifier) != grant["code_challenge"]:
                return _oauth_error("invalid_grant", "PKCE code_verifier does not match")
        identity = grant["identity"]
        access = secrets.token_urlsafe(24)
        self.access_tokens[access] = identity
        id_token = self._id_token(_issuer(request), identity, grant["nonce"])
        return JSONResponse(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": TOKEN_TTL,
                "scope": grant["scope"],
                "id_token": id_token,
            },
            headers={"Cache-Control": "no-store"},
        )

    def _id_token(self, issuer: str, identity: dict[str, Any], nonce: str | None) -> str:
        fault = self.id_token_faults.pop(0) if self.id_token_faults else {}
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": fault.get("issuer") or issuer,
            "sub": identity["sub"],
            "aud": fault.get("audience") or self.client_id,
            "iat": now,
            "exp": now + TOKEN_TTL,
            "auth_time": now,
            "email": identity["email"],
            "email_verified": True,
            "groups": identity["groups"],
        }
        if identity.get("name"):
            claims["name"] = identity["name"]
        if identity.get("tenant"):
            claims["tenant"] = identity["tenant"]
        if nonce is not None:
            claims["nonce"] = nonce
        if "nonce" in fault:
            claims["nonce"] = fault["nonce"]
        if fault.get("expired"):
            claims["iat"], claims["exp"] = now - 2 * TOKEN_TTL, now - TOKEN_TTL
        claims.update(fault.get("claims") or {})
        for name in fault.get("without") or ():
            claims.pop(name, None)
        if fault.get("alg_none"):
            return jwt.encode(claims, "", algorithm="none")
        key = self.keys[-1]
        token = jwt.encode(
            claims, key.private, algorithm="RS256", headers={"kid": fault.get("kid") or key.kid}
        )
        if fault.get("bad_signature"):
            head, body, signature = token.split(".")
            raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
            raw[len(raw) // 2] ^= 0xFF
            token = f"{head}.{body}.{_b64url(bytes(raw))}"
        return token

    async def userinfo(self, request: Request) -> Response:
        """The access token in the Authorization header, or (POST) in the form body as
        ``access_token`` (RFC 6750 sections 2.1 and 2.2), never both (section 2)."""
        header = request.headers.get("authorization", "")
        in_header = header[7:].strip() if header[:7].lower() == "bearer " else None
        in_body = None
        if request.method == "POST" and request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            in_body = (await form_of(request)).get("access_token")
        if in_header is not None and in_body is not None:
            return _bearer_error(400, "invalid_request")
        token = in_header if in_header is not None else in_body
        if token is None:
            return _bearer_error(401, None)
        identity = self.access_tokens.get(token)
        if identity is None:
            return _bearer_error(401, "invalid_token")
        info = {"sub": identity["sub"], "email": identity["email"], "groups": identity["groups"]}
        if identity.get("tenant"):
            info["tenant"] = identity["tenant"]
        return JSONResponse(info)

    # -- control ----------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        body = await request.json()
        self.identity = {
            "sub": str(body["sub"]),
            "email": str(body["email"]),
            "groups": [str(g) for g in body.get("groups") or []],
            "tenant": body.get("tenant"),
            "name": body.get("name"),
        }
        return Response(status_code=204)

    async def next_id_token(self, request: Request) -> Response:
        self.id_token_faults.append(await request.json())
        return Response(status_code=204)

    async def fail_token(self, request: Request) -> Response:
        body = await request.json()
        for _ in range(int(body.get("times", 1))):
            self.token_errors.append({"error": body["error"], "status": int(body["status"])})
        return Response(status_code=204)

    async def rotate(self, request: Request) -> Response:
        body = await request.json()
        # Distinct from every key this fake holds since its reset; reused across tests.
        self.rotations += 1
        key = _Key.new(f"key-{secrets.token_hex(4)}", f"fake-oidc-{self.rotations}")
        self.keys = [*self.keys, key] if body.get("keep_old", True) else [key]
        return JSONResponse({"kid": key.kid})

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/.well-known/openid-configuration", self.discovery),
            Route("/jwks", self.jwks),
            Route("/authorize", self.authorize),
            Route("/token", self.token, methods=["POST"]),
            Route("/userinfo", self.userinfo, methods=["GET", "POST"]),
            Route(f"{CONTROL}/login", self.login, methods=["POST"]),
            Route(f"{CONTROL}/next_id_token", self.next_id_token, methods=["POST"]),
            Route(f"{CONTROL}/fail_token", self.fail_token, methods=["POST"]),
            Route(f"{CONTROL}/rotate_keys", self.rotate, methods=["POST"]),
        ]


class FakeIdp(FakeClient):
    """The `fake_idp` fixture: an OIDC provider on 127.0.0.1.

    `issuer`, `client_id`, `client_secret`; `login_as(...)` decides who /authorize
    authenticates; `next_id_token(...)` spoils the next id_token; `fail_next_token(...)`
    makes /token answer an OAuth error; `rotate_keys()`; `requests` (the log).
    """

    name = "oidc"

    @property
    def issuer(self) -> str:
        return str(self.config["issuer"])

    @property
    def client_id(self) -> str:
        return str(self.config["client_id"])

    @property
    def client_secret(self) -> str:
        return str(self.config["client_secret"])

    def settings(self) -> dict[str, str]:
        return {
            "issuer": self.issuer,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    def login_as(
        self,
        sub: str,
        email: str,
        groups: list[str] | tuple[str, ...] = (),
        tenant: str | None = None,
        name: str | None = None,
    ) -> None:
        """Every /authorize from now on authenticates this user (until reset)."""
        self._call(
            "POST", "login", sub=sub, email=email, groups=list(groups), tenant=tenant, name=name
        )

    def next_id_token(
        self,
        *,
        expired: bool = False,
        issuer: str | None = None,
        audience: str | None = None,
        bad_signature: bool = False,
        alg_none: bool = False,
        nonce: str | None = None,
        kid: str | None = None,
        claims: dict[str, Any] | None = None,
        without: Sequence[str] = (),
    ) -> None:
        """Make the next id_token /token issues bad in the given ways (then normal again);
        `claims` overrides or adds claims, `without` leaves claims out (e.g. the optional
        `email_verified`)."""
        fault: dict[str, Any] = {
            "expired": expired,
            "issuer": issuer,
            "audience": audience,
            "bad_signature": bad_signature,
            "alg_none": alg_none,
            "kid": kid,
            "claims": claims,
            "without": list(without),
        }
        if nonce is not None:
            fault["nonce"] = nonce
        self._call("POST", "next_id_token", **fault)

    def fail_next_token(
        self, error: str = "invalid_grant", *, status: int = 400, times: int = 1
    ) -> None:
        """The next `times` authenticated /token requests answer this OAuth error."""
        self._call("POST", "fail_token", error=error, status=status, times=times)

    def rotate_keys(self, *, keep_old: bool = True) -> str:
        """Sign with a new key from now on; the old one stays in the JWKS if `keep_old`.
        Returns the new kid."""
        return str(self._call("POST", "rotate_keys", keep_old=keep_old)["kid"])


SERVER = OidcServer
CLIENT = FakeIdp
