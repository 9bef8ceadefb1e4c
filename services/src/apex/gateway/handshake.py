"""The HTTP side of the gateway's port: the WebSocket handshake and the plain GET routes.

websockets calls :func:`process_request` for every HTTP request before any upgrade.
``/healthz`` (open: readiness probes), ``/metrics``, ``/instances`` and ``/admin/config``
(the platform's admin token: they list internals) are answered here; on ``/ws`` the
token is verified, the connection's slot under the per-user limit reserved, and a
refusal is an HTTP response with a JSON body ``{"error","detail"}``; returning None lets websockets
complete the upgrade.

The token comes in ``Authorization: Bearer`` or, from a browser (whose WebSocket API
sends no headers), as the subprotocol ``apex.bearer.<token>`` offered beside
``apex.v1``; never in the URL: RFC 6750 §2.3 advises against it because URLs end up in
access logs, proxies and browser history, so ``?access_token=`` is refused (400
invalid_request), whatever else the request carries.
"""

from __future__ import annotations

import hmac
import json
import uuid
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

from redis.exceptions import RedisError
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from apex.common import entitlements
from apex.common.challenges import BearerError, bearer_challenge
from apex.common.shared_config import config_report
from apex.gateway import handler
from apex.gateway.auth_client import TokenRejected
from apex.gateway.connection import GatewayWebSocket

if TYPE_CHECKING:
    from apex.gateway.server import Gateway

__all__ = ["BEARER_PROTOCOL", "SUBPROTOCOL", "json_response", "process_request"]

WS_PATH: Final = "/ws"
OPERATOR_PATHS: Final = ("/metrics", "/instances", "/admin/config")
MAX_TOKEN: Final = 4096
SUBPROTOCOL: Final = "apex.v1"
# The subprotocol that carries a browser's token: "apex.bearer.<token>".
BEARER_PROTOCOL: Final = "apex.bearer."
# A 401's RFC 6750 error code by our own: none when the request sent no credentials.
_TOKEN_ERROR: Final[dict[str, BearerError | None]] = {"missing_token": None}


class _BadRequest(Exception):
    """The handshake request is malformed: 400 invalid_request with this detail."""


def json_response(
    status: int, body: Any, *, headers: dict[str, str] | None = None, content_type: str = ""
) -> Response:
    """An HTTP response with a JSON (or, given ``content_type``, text) body."""
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    all_headers = Headers(
        [
            ("Content-Type", content_type or "application/json"),
            ("Content-Length", str(len(raw))),
            ("Connection", "close"),
            ("Cache-Control", "no-store"),
        ]
    )
    for name, value in (headers or {}).items():
        all_headers[name] = value
    return Response(status, HTTPStatus(status).phrase, all_headers, raw)


def error_response(
    status: int, code: str, detail: str, *, challenge: BearerError | None = None
) -> Response:
    """``{"error","detail"}``. Every refusal of the credentials carries an RFC 6750
    challenge (``apex.common.challenges``): a 401 names no error code when no credentials
    were sent and ``invalid_token`` for any bad one (the JSON body says which); a 400
    about how the token was sent passes ``challenge="invalid_request"``."""
    headers = None
    if status == 401:
        headers = {"WWW-Authenticate": bearer_challenge(_TOKEN_ERROR.get(code, "invalid_token"))}
    elif challenge is not None:
        headers = {"WWW-Authenticate": bearer_challenge(challenge)}
    return json_response(status, {"error": code, "detail": detail}, headers=headers)


async def process_request(
    gateway: Gateway, ws: GatewayWebSocket, request: Request
) -> Response | None:
    """Answer a plain HTTP request, refuse a handshake, or return None to upgrade."""
    path, _, query_text = request.path.partition("?")
    if path == "/healthz":
        status, body = await gateway.health()
        return json_response(status, body)
    if path in OPERATOR_PATHS:
        return await _operator_route(gateway, path, request.headers)
    if path != WS_PATH:
        return error_response(404, "not_found", f"no route {path[:100]}")
    if gateway.draining:
        return error_response(503, "draining", "this gateway is shutting down; reconnect")

    query = parse_qs(query_text, keep_blank_values=True)
    try:
        token = _token(request.headers, query)
    except _BadRequest as exc:
        return error_response(400, "invalid_request", str(exc), challenge="invalid_request")
    if not token:
        return error_response(
            401,
            "missing_token",
            f"send Authorization: Bearer <access token> (browsers: the subprotocol "
            f"{BEARER_PROTOCOL}<access token> beside {SUBPROTOCOL})",
        )
    resume_text = _first(query, "last_seq")
    resume_from: int | None = None
    if resume_text is not None:
        if not resume_text.isdigit() or len(resume_text) > 18:
            return error_response(400, "invalid", "last_seq must be a whole number >= 0")
        resume_from = int(resume_text)
    connection_id = uuid.uuid4().hex
    limit = gateway.settings.max_connections_per_user
    plan: entitlements.Entitlements | None = None
    try:
        principal = await gateway.auth.verify(token[: MAX_TOKEN + 1])
        if gateway.settings.plan_limits and principal.tenant_id:
            plan = await entitlements.read(
                gateway.redis, gateway.settings.redis_prefix, principal.tenant_id
            )
        reserved = await gateway.registry.reserve_tab(
            principal.user_id,
            principal.tenant_id,
            connection_id,
            limit=limit,
            tenant_limit=plan.limits["ws_connections"] if plan else None,
        )
    except TokenRejected as exc:
        return error_response(exc.status, exc.code, exc.detail)
    except RedisError:
        return error_response(503, "unavailable", "Redis is unavailable; retry later")
    if reserved == "user_limit":
        return error_response(429, "too_many_connections", f"at most {limit} connections per user")
    if reserved == "tenant_limit" and plan is not None:
        # Before the upgrade, like every refusal: nothing was registered (notes-gateway.md).
        return json_response(402, entitlements.refusal(plan, "ws_connections"))
    ws.principal = principal
    ws.connection_id = connection_id
    ws.resume_from = resume_from

    def give_back() -> None:
        if not gateway.draining:  # a drained instance's tabs are dead to the others
            gateway.spawn(handler.release_tab(gateway, principal, connection_id))

    ws.on_abandoned = give_back
    return None


async def _operator_route(gateway: Gateway, path: str, headers: Headers) -> Response:
    """``/metrics``, ``/instances`` or ``/admin/config`` for a request with the admin token."""
    expected = gateway.settings.admin_token
    if not expected:
        return error_response(403, "forbidden", f"{path} needs APEX_ADMIN_TOKEN to be set")
    token = _bearer(headers.get("Authorization"))
    if token is None:
        return error_response(401, "missing_token", "send Authorization: Bearer <admin token>")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        return error_response(401, "invalid_token", "not the admin token")
    if path == "/metrics":
        return json_response(
            200, gateway.render_metrics(), content_type="text/plain; version=0.0.4"
        )
    if path == "/admin/config":
        return json_response(200, config_report("apex.gateway", gateway.settings))
    try:
        return json_response(200, {"instances": await gateway.registry.instances()})
    except RedisError:
        return error_response(503, "unavailable", "Redis is unavailable")


def _token(headers: Headers, query: dict[str, list[str]]) -> str | None:
    """The access token of a handshake, from the Authorization header or the bearer
    subprotocol; _BadRequest for one in the URL, or sent more than one way."""
    if "access_token" in query:
        raise _BadRequest(
            "access tokens in the URL end up in logs (RFC 6750 §2.3): send Authorization: "
            f"Bearer <access token>, or from a browser the subprotocol "
            f"{BEARER_PROTOCOL}<access token> beside {SUBPROTOCOL}"
        )
    offered = [
        item.strip()
        for value in headers.get_all("Sec-WebSocket-Protocol")
        for item in value.split(",")
    ]
    in_protocol = [
        item.removeprefix(BEARER_PROTOCOL) for item in offered if item.startswith(BEARER_PROTOCOL)
    ]
    in_header = headers.get("Authorization")
    if len(in_protocol) + (in_header is not None) > 1:
        raise _BadRequest("send the access token one way only (RFC 6750 §2)")
    if in_protocol and SUBPROTOCOL not in offered:
        raise _BadRequest(f"offer {SUBPROTOCOL} beside {BEARER_PROTOCOL}<access token>")
    if in_protocol:
        return in_protocol[0] or None
    return _bearer(in_header)


def _bearer(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None
