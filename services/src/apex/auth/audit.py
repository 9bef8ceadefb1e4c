"""The audit trail: who did what to which user, key or session.

Actions: user.created, api_key.created, api_key.used, api_key.rejected,
api_key.revoked, session.revoked. ``subject`` is the id the event is about (a user id
or an API key id); ``user_id`` is the user it concerns, so a user's whole history is
one query. Details never contain secrets.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, Final

import asyncpg

__all__ = ["ACTIONS", "events_for", "record"]

IDENTITY_ACTIONS: Final = (
    "login.succeeded",
    "login.failed",
    "account.locked",
    "mfa.enabled",
    "mfa.disabled",
    "mfa.disable_failed",
    "mfa.sms_sent",
    "password.reset_requested",
    "password.reset",
    "mail.failed",
    "sms.failed",
    "identity.linked",
    "identity.groups_synced",
)
AUTHZ_ACTIONS: Final = (
    "team.created",
    "team.updated",
    "team.deleted",
    "teams.deleted",
    "team.member_set",
    "team.member_removed",
    "team.grant_set",
    "team.grant_removed",
    "user.grant_set",
    "user.grant_removed",
    "tenant.setting_set",
    "tenant.setting_deleted",
)
ACTIONS: Final = frozenset(
    {
        "user.created",
        "users.deleted",
        "api_key.created",
        "api_key.used",
        "api_key.rejected",
        "api_key.revoked",
        "session.revoked",
        # Issue 3, identity flows (apex.auth.logins and friends).
        *IDENTITY_ACTIONS,
        # Issue 3, authorization and tenant settings (apex.auth.teams, apex.auth.tenants).
        *AUTHZ_ACTIONS,
    }
)
ADMIN: Final = "admin"
SYSTEM: Final = "system"


def user_actor(user_id: str | uuid.UUID) -> str:
    """The actor of an event a user caused through a session."""
    return f"user:{user_id}"


def key_actor(key_id: str) -> str:
    """The actor of an event caused by presenting an API key."""
    return f"api_key:{key_id}"


async def record(
    conn: asyncpg.Connection,
    action: str,
    *,
    subject: str,
    actor: str,
    user_id: str | uuid.UUID | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Append one event."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    await conn.execute(
        "INSERT INTO audit_events (action, subject, actor, user_id, detail) "
        "VALUES ($1, $2, $3, $4, $5::jsonb)",
        action,
        subject,
        actor,
        uuid.UUID(str(user_id)) if user_id is not None else None,
        json.dumps(dict(detail or {})),
    )


async def events_for(
    conn: asyncpg.Connection, subject: str, *, limit: int = 100
) -> list[dict[str, Any]]:
    """The oldest ``limit`` events about ``subject`` (or, for a user id, concerning that user)."""
    try:
        user_id: uuid.UUID | None = uuid.UUID(subject)
    except ValueError:
        user_id = None
    rows = await conn.fetch(
        "SELECT at, action, subject, actor, detail FROM audit_events "
        "WHERE subject = $1 OR ($2::uuid IS NOT NULL AND user_id = $2) ORDER BY id LIMIT $3",
        subject,
        user_id,
        limit,
    )
    return [
        {
            "at": row["at"].isoformat(),
            "action": row["action"],
            "subject": row["subject"],
            "actor": row["actor"],
            "detail": json.loads(row["detail"]),
        }
        for row in rows
    ]
