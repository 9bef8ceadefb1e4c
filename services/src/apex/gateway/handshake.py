"""The HTTP side of the gateway's port: the WebSocket handshake and the plain GET routes.

websockets calls :func:`process_request` for every HTTP request before any upgrade.
``/healthz``, ``/metrics`` and ``/instances`` are answered here; on ``/ws`` the token
is verified and a refusal is an HTTP response with a JSON body ``{"error","detail"}``;
returning None lets websockets complete the upgrade.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

from redis.exceptions import RedisError
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from apex.gateway.auth_client import TokenRejected
from apex.gateway.connection import GatewayWebSocket

if TYPE_CHECKING:
    from apex.gateway.server import Gateway

__all__ = ["json_response", "process_request"]

WS_PATH: Final = "/ws"
MAX_QUERY_TOKEN: Final = 4096


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


def error_response(status: int, code: str, detail: str) -> Response:
    headers = {"WWW-Authenticate": f'Bearer error="{code}"'} if status == 401 else None
    return json_response(status, {"error": code, "detail": detail}, headers=headers)


async def process_request(
    gateway: Gateway, ws: GatewayWebSocket, request: Request
) -> Response | None:
    """Answer a plain HTTP request, refuse a handshake, or return None to upgrade."""
    path, _, query_text = request.path.partition("?")
    if path == "/healthz":
        status, body = await gateway.health()
        return json_response(status, body)
    if path == "/metrics":
        return json_response(
            200, gateway.render_metrics(), content_type="text/plain; version=0.0.4"
        )
    if path == "/instances":
        try:
            return json_response(200, {"instances": await gateway.registry.instances()})
        except RedisError:
            return error_response(503, "unavailable", "Redis is unavailable")
    if path != WS_PATH:
        return error_response(404, "not_found", f"no route {path[:100]}")
    if gateway.draining:
        return error_response(503, "draining", "this gateway is shutting down; reconnect")

    query = parse_qs(query_text, keep_blank_values=True)
    token = _bearer(request.headers.get("Authorization")) or _first(query, "access_token")
    if not token:
        return error_response(401, "missing_token", "send Authorization: Bearer <access token>")
    resume_text = _first(query, "last_seq")
    resume_from: int | None = None
    if resume_text is not None:
        if not resume_text.isdigit() or len(resume_text) > 18:
            return error_response(400, "invalid", "last_seq must be a whole number >= 0")
        resume_from = int(resume_text)
    try:
        principal = await gateway.auth.verify(token[: MAX_QUERY_TOKEN + 1])
        count = await gateway.registry.tab_count(principal.user_id)
    except TokenRejected as exc:
        return error_response(exc.status, exc.code, exc.detail)
    except RedisError:
        return error_response(503, "unavailable", "Redis is unavailable; retry later")
    if count >= gateway.settings.max_connections_per_user:
        return error_response(
            429,
            "too_many_connections",
            f"at most {gateway.settings.max_connections_per_user} connections per user",
        )
    ws.principal = principal
    ws.resume_from = resume_from
    return None


def _bearer(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None
