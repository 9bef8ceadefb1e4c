"""The four grant routes of apex.auth (set/remove, team/user): answers, audit events and
permission invalidations, on the kit's PostgreSQL and Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis

from apex.auth import create_app
from apex.common.config import Settings
from apex_testkit import eventually

ADMIN_TOKEN = "grants-admin-token"


class Admin:
    """An admin client of one apex.auth app, with the views the assertions need."""

    def __init__(self, client: httpx.AsyncClient, db: asyncpg.Connection, events: Any) -> None:
        self.client = client
        self.db = db
        self.events = events  # a Redis pub/sub on <prefix>auth:events
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return await self.client.request(method, path, json=body, headers=self.headers)

    async def audit(self, subject: str) -> list[tuple[str, str | None, dict[str, Any]]]:
        rows = await self.db.fetch(
            "SELECT action, user_id, detail FROM audit_events "
            "WHERE subject = $1 AND action LIKE '%grant%' ORDER BY id",
            subject,
        )
        return [
            (r["action"], str(r["user_id"]) if r["user_id"] else None, json.loads(r["detail"]))
            for r in rows
        ]

    async def invalidated(self) -> list[list[str]]:
        """The user lists of the permissions.changed events published since the last call."""
        found: list[list[str]] = []
        while (message := await self.events.get_message(timeout=0.05)) is not None:
            event = json.loads(message["data"])
            if event.get("type") == "permissions.changed":
                found.append(event["user_ids"])
        return found


@pytest.fixture(name="admin")
async def _admin(postgres_database: str, redis_namespace: Any) -> AsyncIterator[Admin]:
    prefix = f"{redis_namespace.prefix}grants-{uuid.uuid4().hex[:8]}:"
    settings = Settings.from_env(
        {
            "APEX_DATABASE_URL": postgres_database,
            "APEX_REDIS_URL": redis_namespace.url,
            "APEX_REDIS_PREFIX": prefix,
            "APEX_ADMIN_TOKEN": ADMIN_TOKEN,
            "APEX_LOG_LEVEL": "WARNING",
        }
    )
    app = create_app(settings)
    redis = Redis.from_url(redis_namespace.url, decode_responses=True)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"{prefix}auth:events")
    db = await asyncpg.connect(postgres_database)
    try:
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://auth.test"
            ) as client,
        ):
            yield Admin(client, db, pubsub)
    finally:
        await db.close()
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def _user(admin: Admin) -> str:
    response = await admin.call(
        "POST", "/admin/users", {"email": f"{uuid.uuid4().hex}@grants.test", "tier": "free"}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _expect_invalidated(admin: Admin, user_ids: list[str]) -> None:
    seen: list[list[str]] = []

    async def published() -> bool:
        seen.extend(await admin.invalidated())
        return sorted(user_ids) in seen

    await eventually(published, timeout=10, message=f"permissions.changed for {user_ids}")


async def test_team_grants_are_set_and_removed_for_the_whole_subtree(admin: Admin) -> None:
    parent = (await admin.call("POST", "/admin/teams", {"name": "parent"})).json()["id"]
    child = (await admin.call("POST", "/admin/teams", {"name": "c", "parent_id": parent})).json()
    first, second = await _user(admin), await _user(admin)
    for team, user in ((parent, first), (child["id"], second)):
        put = await admin.call("PUT", f"/admin/teams/{team}/members/{user}", {"role": "viewer"})
        assert put.status_code == 200, put.text
    await admin.invalidated()
    grant = f"/admin/teams/{parent}/grants/agents:run"

    response = await admin.call("PUT", grant, {"effect": "allow"})
    assert response.status_code == 200
    assert response.json() == {"team_id": parent, "permission": "agents:run", "effect": "allow"}
    await _expect_invalidated(admin, [first, second])
    # The same effect again changes nothing: no audit event.
    assert (await admin.call("PUT", grant, {"effect": "allow"})).status_code == 200
    assert (await admin.call("PUT", grant, {"effect": "deny"})).status_code == 200
    assert (await admin.call("DELETE", grant)).status_code == 204

    assert await admin.audit(parent) == [
        ("team.grant_set", None, {"permission": "agents:run", "effect": "allow", "previous": None}),
        (
            "team.grant_set",
            None,
            {"permission": "agents:run", "effect": "deny", "previous": "allow"},
        ),
        ("team.grant_removed", None, {"permission": "agents:run", "effect": "deny"}),
    ]
    missing = await admin.call("DELETE", grant)
    assert missing.status_code == 404
    assert missing.json()["detail"] == f"team {parent!r} has no grant of 'agents:run'"


async def test_user_grants_are_set_and_removed_for_that_user(admin: Admin) -> None:
    user = await _user(admin)
    await admin.invalidated()
    grant = f"/admin/users/{user}/grants/billing:write"

    response = await admin.call("PUT", grant, {"effect": "deny"})
    assert response.status_code == 200
    assert response.json() == {"user_id": user, "permission": "billing:write", "effect": "deny"}
    await _expect_invalidated(admin, [user])
    assert (await admin.call("PUT", grant, {"effect": "deny"})).status_code == 200
    assert (await admin.call("DELETE", grant)).status_code == 204
    await _expect_invalidated(admin, [user])

    assert await admin.audit(user) == [
        (
            "user.grant_set",
            user,
            {"permission": "billing:write", "effect": "deny", "previous": None},
        ),
        ("user.grant_removed", user, {"permission": "billing:write", "effect": "deny"}),
    ]
    missing = await admin.call("DELETE", grant)
    assert missing.status_code == 404
    assert missing.json()["detail"] == f"user {user!r} has no grant of 'billing:write'"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/admin/teams/not-a-uuid/grants/agents:run", 404, "not_found"),
        (f"/admin/teams/{uuid.UUID(int=1)}/grants/agents:run", 404, "not_found"),
        (f"/admin/users/{uuid.UUID(int=1)}/grants/agents:run", 404, "not_found"),
        (f"/admin/users/{uuid.UUID(int=1)}/grants/Not-A-Permission", 422, "invalid_request"),
    ],
)
async def test_bad_grants_are_refused(admin: Admin, path: str, status: int, code: str) -> None:
    response = await admin.call("PUT", path, {"effect": "allow"})
    assert (response.status_code, response.json()["error"]) == (status, code)
