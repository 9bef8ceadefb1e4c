"""Handlers of the client's messages, by ``type``; each replies through the connection.

A handler may raise CircuitOpen, a Redis error or anything else: the connection
handler (:mod:`apex.gateway.handler`) turns that into an error reply for this message
only.

Who may publish to whom: ``user:<id>`` must name a user of the sender's tenant (any
other id, of another tenant or of nobody, is ``unknown_user``: the same answer, so the
ids of other tenants cannot be probed, and nothing is written); ``broadcast`` needs the
permission APEX_WS_BROADCAST_PERMISSION (asked of apex.auth, remembered for
PERMISSIONS_SECONDS or until a permissions.changed event) and reaches the online users
of the sender's tenant only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import httpx

from apex.gateway.auth_client import TokenRejected
from apex.gateway.breaker import CircuitOpen
from apex.gateway.connection import Connection
from apex.gateway.fanout import MessageLog
from apex.gateway.notes import NoteError
from apex.gateway.uploads import UploadError, parse_chunk

if TYPE_CHECKING:
    from apex.gateway.server import Gateway

__all__ = ["HANDLERS", "handle_binary", "push_permissions"]

Handler = Callable[["Gateway", Connection, dict[str, Any]], Awaitable[None]]

_USER_TARGET: Final = re.compile(r"user:([A-Za-z0-9_.@-]{1,128})")
# How long a connection trusts the permissions auth last gave it (events refresh them).
PERMISSIONS_SECONDS: Final = 10.0


async def _ping(gw: Gateway, conn: Connection, msg: dict[str, Any]) -> None:
    conn.send({"type": "pong", "id": msg.get("id")})


async def _publish(gw: Gateway, conn: Connection, msg: dict[str, Any]) -> None:
    message_id, to, data = msg.get("id"), msg.get("to"), msg.get("data", {})
    if not isinstance(data, dict):
        conn.error("invalid", message_id, detail="data must be a JSON object")
        return
    target = _USER_TARGET.fullmatch(to) if isinstance(to, str) else None
    if to != "broadcast" and target is None:
        conn.error("invalid", message_id, detail='to must be "user:<id>" or "broadcast"')
        return
    tenant_id = conn.principal.tenant_id
    body = MessageLog.body(message_id=message_id, sender=conn.user_id, to=str(to), data=data)
    if target is not None:
        user_id = target.group(1)
        if user_id != conn.user_id and not await gw.directory.in_tenant(user_id, tenant_id):
            conn.error("unknown_user", message_id, detail="no such user in your tenant")
            return
        await gw.log.append(user_id, body)
    else:
        permission = gw.settings.broadcast_permission
        try:
            allowed = permission in await _permissions(gw, conn)
        except (httpx.HTTPError, ValueError) as exc:
            conn.error("unavailable", message_id, detail=f"auth: {type(exc).__name__}")
            return
        if not allowed:
            conn.error("forbidden", message_id, detail=f"broadcast needs {permission}")
            return
        await gw.log.broadcast(gw.registry.online_key(tenant_id), body)
    conn.send({"type": "ack", "id": message_id})


async def _permissions(gw: Gateway, conn: Connection) -> frozenset[str]:
    """The connection's user's permissions, as auth said within PERMISSIONS_SECONDS."""
    now = time.monotonic()
    if conn.permissions is not None and now - conn.permissions[0] < PERMISSIONS_SECONDS:
        return conn.permissions[1]
    permissions = frozenset(await gw.auth.permissions(conn.principal.token))
    conn.permissions = (now, permissions)
    return permissions


async def _resume(gw: Gateway, conn: Connection, msg: dict[str, Any]) -> None:
    last_seq = msg.get("last_seq")
    if not isinstance(last_seq, int) or isinstance(last_seq, bool) or last_seq < 0:
        conn.error("invalid", msg.get("id"), detail="last_seq must be a whole number >= 0")
        return
    if conn.messages_seen > 1:
        conn.error("invalid", msg.get("id"), detail="resume must be the first message")
        return
    feed = gw.feeds.get(conn.user_id)
    if feed is not None:
        feed.resume(conn, last_seq)


async def _refresh(gw: Gateway, conn: Connection, msg: dict[str, Any]) -> None:
    message_id, token = msg.get("id"), msg.get("access_token")
    if not isinstance(token, str):
        conn.error("invalid_token", message_id, detail="access_token must be a string")
        return
    try:
        principal = await gw.auth.verify(token)
    except TokenRejected as exc:
        conn.error(exc.code, message_id, detail=exc.detail)
        return
    if (principal.user_id, principal.session_id) != (conn.user_id, conn.session_id):
        conn.error("invalid_token", message_id, detail="token of another user or session")
        return
    if principal.tenant_id != conn.principal.tenant_id:
        # The connection is registered in its tenant (broadcast audience): reconnect.
        conn.error("invalid_token", message_id, detail="the user's tenant changed: reconnect")
        return
    conn.principal = principal
    conn.send({"type": "refreshed", "id": message_id, "exp": principal.expires_at})


async def _note_create(gw: Gateway, conn: Connection, msg: dict[str, Any]) -> None:
    message_id = msg.get("id")
    try:
        note_id = await gw.notes.create(conn.user_id, msg.get("data"))
    except NoteError as exc:
        conn.error(exc.code, message_id, detail=exc.detail)
        return
    conn.send({"type": "ack", "id": message_id, "result": {"note_id": note_id}})


async def _note_list(gw: Gateway, conn: Connection, msg: dict[str, Any]) -> None:
    message_id = msg.get("id")
    try:
        notes = await gw.notes.list(conn.user_id)
    except NoteError as exc:
        conn.error(exc.code, message_id, detail=exc.detail)
        return
    conn.send({"type": "result", "id": message_id, "notes": notes})


async def _upload_start(gw: Gateway, conn: Connection, msg: dict[str, Any]) -> None:
    message_id = msg.get("id")
    try:
        upload = await gw.uploads.start(conn.user_id, msg)
    except UploadError as exc:
        conn.error(exc.code, message_id, detail=exc.detail, **exc.extra)
        return
    conn.send(
        {
            "type": "upload.ready",
            "id": message_id,
            "upload_id": upload.id,
            "offset": 0,
            "chunk_size": gw.chunk_size,
        }
    )


async def _upload_resume(gw: Gateway, conn: Connection, msg: dict[str, Any]) -> None:
    message_id = msg.get("id")
    try:
        upload = await gw.uploads.get(conn.user_id, msg.get("upload_id"))
    except UploadError as exc:
        conn.error(exc.code, message_id, detail=exc.detail)
        return
    conn.send(
        {
            "type": "upload.ready",
            "id": message_id,
            "upload_id": upload.id,
            "offset": upload.received,
            "chunk_size": gw.chunk_size,
        }
    )


async def handle_binary(gw: Gateway, conn: Connection, frame: bytes) -> None:
    """A binary frame: an upload chunk at an offset."""
    chunk = parse_chunk(frame)
    if chunk is None:
        conn.error("unexpected_binary", detail="binary frames are upload chunks")
        return
    try:
        upload = await gw.uploads.append(conn.user_id, chunk)
    except UploadError as exc:
        if exc.code == "unknown_upload":
            conn.error("unexpected_binary", detail="binary frame of no upload of yours")
        else:
            conn.error(exc.code, upload_id=chunk.upload_id, detail=exc.detail, **exc.extra)
        return
    conn.send(
        {
            "type": "upload.progress",
            "upload_id": upload.id,
            "received": upload.received,
            "size": upload.size,
        }
    )
    if upload.received == upload.size:
        if await gw.uploads.finish(conn.user_id, upload):
            conn.send({"type": "upload.complete", "upload_id": upload.id, "sha256": upload.sha256})
        else:
            conn.error("checksum_mismatch", upload_id=upload.id, detail="sha256 does not match")


async def push_permissions(gw: Gateway, conn: Connection) -> None:
    """After ``permissions.changed``: fetch the user's permissions and send them."""
    try:
        permissions = await gw.auth.permissions(conn.principal.token)
    except CircuitOpen as exc:
        conn.permissions = None  # whatever was known is stale: ask again when needed
        conn.error("unavailable", detail=str(exc))
        return
    except (httpx.HTTPError, ValueError) as exc:
        conn.permissions = None
        conn.error("unavailable", detail=f"auth: {type(exc).__name__}")
        return
    conn.permissions = (time.monotonic(), frozenset(permissions))
    conn.send({"type": "permissions_changed", "permissions": permissions})


HANDLERS: Final[dict[str, Handler]] = {
    "ping": _ping,
    "publish": _publish,
    "resume": _resume,
    "refresh": _refresh,
    "note.create": _note_create,
    "note.list": _note_list,
    "upload.start": _upload_start,
    "upload.resume": _upload_resume,
}
