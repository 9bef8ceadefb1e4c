"""API keys as OAuth 2.0 clients, and the parameters of OAuth requests.

An API key is a confidential client (RFC 6749 section 2.1): its ``client_id`` is the key's
id, its ``client_secret`` the key as it was shown (``apx_<id>_<secret>``). A client
authenticates with HTTP Basic (section 2.3.1: both values form-urlencoded, then Basic;
``client_secret_basic``) or with both values in the form body (``client_secret_post``),
never both ways in one request (section 2.3). Failures are ``invalid_client`` (401, with
the Basic challenge, section 5.2); every check costs the same whether the key exists or
not, and a wrong secret or a revoked key is audited on the key as ``api_key.rejected``.

OAuth endpoints read their parameters from an ``application/x-www-form-urlencoded`` body
(each parameter at most once, section 3.2); unknown parameters are ignored.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import email.message
from collections.abc import Mapping
from typing import Final, Literal
from urllib.parse import parse_qsl, unquote_plus

import asyncpg
from fastapi import Request

from apex.auth import audit, keys
from apex.common.challenges import REALM
from apex.common.http import ApiError

__all__ = [
    "BASIC_CHALLENGE",
    "FORM",
    "JSON",
    "ClientCredentials",
    "KeyRefused",
    "authenticate",
    "body_kind",
    "invalid_client",
    "presented_client",
    "read_form",
    "rejected",
    "verify_api_key",
]

FORM: Final = "application/x-www-form-urlencoded"
JSON: Final = "application/json"
BASIC_CHALLENGE: Final = f'Basic realm="{REALM}"'
# Far more than any OAuth request we take has; a form with more is not one of them.
MAX_FORM_FIELDS: Final = 32


class KeyRefused(Exception):
    """An API key was refused: unknown, malformed, wrong secret or revoked."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class ClientCredentials:
    """The client authentication a request presented."""

    client_id: str
    client_secret: str
    method: Literal["client_secret_basic", "client_secret_post"]


def body_kind(request: Request) -> str | None:
    """The media type of the request body (``application/json``, a form, ...), or None
    when the request has no body and declares none."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        if (
            request.headers.get("content-length", "0") == "0"
            and "transfer-encoding" not in request.headers
        ):
            return None
        return ""
    message = email.message.Message()
    message["content-type"] = content_type
    kind = message.get_content_type()
    subtype = message.get_content_subtype()
    if message.get_content_maintype() == "application" and subtype.endswith("+json"):
        return JSON
    return kind


async def read_form(request: Request) -> dict[str, str]:
    """The parameters of a form-encoded body; 400 ``invalid_request`` if a parameter is
    repeated or the body is not a form (RFC 6749 section 3.2)."""
    try:
        text = (await request.body()).decode("utf-8")
        pairs = parse_qsl(
            text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FORM_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "invalid_request", "the body is not a URL-encoded UTF-8 form") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise ApiError(400, "invalid_request", f"parameter {name[:40]!r} given more than once")
        form[name] = value
    return form


def invalid_client(detail: str) -> ApiError:
    """RFC 6749 section 5.2: client authentication failed (401 with the Basic challenge)."""
    return ApiError(401, "invalid_client", detail, headers={"WWW-Authenticate": BASIC_CHALLENGE})


def presented_client(request: Request, form: Mapping[str, str]) -> ClientCredentials | None:
    """The client credentials of HTTP Basic or of the form, or None when there are none."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.strip().partition(" ")
    in_form = "client_secret" in form
    if scheme.lower() != "basic":
        if not in_form:
            return None
        return ClientCredentials(
            form.get("client_id", ""), form["client_secret"], "client_secret_post"
        )
    if in_form:
        raise ApiError(
            400,
            "invalid_request",
            "client credentials in both the Authorization header and the body: use one",
        )
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise invalid_client("the Basic credentials are not base64 of client_id:secret") from None
    client_id, colon, client_secret = decoded.partition(":")
    if not colon:
        raise invalid_client("the Basic credentials are not client_id:client_secret")
    client_id, client_secret = unquote_plus(client_id), unquote_plus(client_secret)
    if "client_id" in form and form["client_id"] != client_id:
        raise ApiError(
            400, "invalid_request", "client_id in the body differs from the authenticated one"
        )
    return ClientCredentials(client_id, client_secret, "client_secret_basic")


async def verify_api_key(
    conn: asyncpg.Connection, api_key: str, *, key_id: str | None = None
) -> keys.KeyOwner:
    """The owner of a valid, unrevoked ``api_key`` (whose id must be ``key_id`` when given);
    :class:`KeyRefused` otherwise. A wrong secret or a revoked key is audited on the key."""
    parsed = keys.parse_api_key(api_key)
    if parsed is None or (key_id is not None and parsed[0] != key_id):
        keys.verify_secret(api_key, None)  # the same hashing as any other refusal
        raise KeyRefused("malformed API key")
    parsed_id, secret = parsed
    owner = await keys.find_owner(conn, parsed_id)
    if owner is None or not keys.verify_secret(secret, owner.secret_sha256):
        if owner is None:
            # Same hashing and comparison as a wrong secret costs.
            keys.verify_secret(secret, None)
        else:
            await rejected(conn, owner, "wrong_secret")
        # One message for unknown keys and wrong secrets: a caller learns nothing about
        # which key ids exist.
        raise KeyRefused("unknown API key or wrong secret")
    if owner.revoked:
        await rejected(conn, owner, "revoked")
        raise KeyRefused("API key revoked")
    return owner


async def authenticate(conn: asyncpg.Connection, client: ClientCredentials) -> keys.KeyOwner:
    """The owner of the API key ``client`` authenticates with; 401 ``invalid_client``."""
    try:
        return await verify_api_key(conn, client.client_secret, key_id=client.client_id)
    except KeyRefused as exc:
        raise invalid_client(f"client authentication failed: {exc.detail}") from None


async def rejected(conn: asyncpg.Connection, owner: keys.KeyOwner, reason: str) -> None:
    """Audit a refused use of ``owner``'s key."""
    await audit.record(
        conn,
        "api_key.rejected",
        subject=owner.key_id,
        actor=audit.key_actor(owner.key_id),
        user_id=owner.user_id,
        detail={"reason": reason},
    )
