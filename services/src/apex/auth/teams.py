"""Teams, memberships and grants: tables, admin API, and a user's permission inputs.

Admin routes (bearer APEX_ADMIN_TOKEN): ``/admin/teams`` (create, read, move/rename,
delete; ``DELETE /admin/teams?namespace=<domain>`` removes a test run's teams, those
named ``<domain>/...`` or ``<subdomain>.<domain>/...``), ``/admin/teams/{id}/members/{user_id}``,
``/admin/teams/{id}/grants/{perm}``, ``/admin/users/{id}/grants/{perm}`` and
``/admin/users/{id}/permissions``. Every change is audited and invalidates the cached
permissions of the users it affects (the members of the team and of all its
descendants). The four grant routes (set or remove, of a team or of a user) run one
code path, ``_change_grant``, parametrised by a ``_Grantee``.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final

import asyncpg
from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from apex.auth import audit, users
from apex.auth.context import AuthContext, get_context, require_admin
from apex.auth.guard import guard_of
from apex.auth.permissions import Effect, Membership, Role, effective_permissions, is_permission
from apex.common.http import ApiError, require_json_body

__all__ = ["load_permissions", "members_of_subtree", "router"]

router = APIRouter(
    prefix="/admin", dependencies=[Depends(require_admin), Depends(require_json_body)]
)
Context = Annotated[AuthContext, Depends(get_context)]

# Serialises changes of the hierarchy, so two concurrent moves cannot close a cycle.
_HIERARCHY_LOCK: Final = 0x61706578_7465616D  # "apexteam"
# Over the team $1 and its descendants (UNION, not UNION ALL: ends even on bad data).
_SUBTREE_MEMBERS: Final = """
WITH RECURSIVE subtree AS (
    SELECT id FROM teams WHERE id = $1
    UNION
    SELECT t.id FROM teams t JOIN subtree s ON t.parent_id = s.id
)
SELECT DISTINCT user_id FROM team_members WHERE team_id IN (SELECT id FROM subtree)
"""
_SUBTREE_IDS: Final = """
WITH RECURSIVE subtree AS (
    SELECT id FROM teams WHERE id = $1
    UNION
    SELECT t.id FROM teams t JOIN subtree s ON t.parent_id = s.id
)
SELECT id FROM subtree
"""
_IN_SUBTREE: Final = """
WITH RECURSIVE subtree AS (
    SELECT id FROM teams WHERE id = $1
    UNION
    SELECT t.id FROM teams t JOIN subtree s ON t.parent_id = s.id
)
SELECT EXISTS (SELECT 1 FROM subtree WHERE id = $2)
"""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateTeam(_Body):
    name: str = Field(min_length=1, max_length=200)
    parent_id: uuid.UUID | None = None
    idp_group: str | None = Field(default=None, min_length=1, max_length=256)
    tenant_id: uuid.UUID | None = None


class UpdateTeam(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    parent_id: uuid.UUID | None = None
    idp_group: str | None = Field(default=None, min_length=1, max_length=256)
    tenant_id: uuid.UUID | None = None


class SetRole(_Body):
    role: Role


class SetEffect(_Body):
    effect: Effect


# -- queries the permission cache and identity flows use ------------------------


async def load_permissions(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[str]:
    """The effective permissions of ``user_id``, read in one consistent snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        member_rows = await conn.fetch(
            "SELECT team_id, role FROM team_members WHERE user_id = $1", user_id
        )
        chain_rows = await conn.fetch(
            """
            WITH RECURSIVE chain AS (
                SELECT t.id, t.parent_id FROM teams t
                JOIN team_members m ON m.team_id = t.id WHERE m.user_id = $1
                UNION
                SELECT p.id, p.parent_id FROM teams p JOIN chain c ON p.id = c.parent_id
            )
            SELECT id, parent_id FROM chain
            """,
            user_id,
        )
        team_ids = [row["id"] for row in chain_rows]
        grant_rows = await conn.fetch(
            "SELECT team_id, permission, effect FROM team_grants WHERE team_id = ANY($1::uuid[])",
            team_ids,
        )
        user_rows = await conn.fetch(
            "SELECT permission, effect FROM user_grants WHERE user_id = $1", user_id
        )
    parents = {
        str(row["id"]): str(row["parent_id"]) if row["parent_id"] is not None else None
        for row in chain_rows
    }
    team_grants: dict[str, dict[str, str]] = {}
    for row in grant_rows:
        team_grants.setdefault(str(row["team_id"]), {})[row["permission"]] = row["effect"]
    return effective_permissions(
        [Membership(str(row["team_id"]), row["role"]) for row in member_rows],
        parents,
        team_grants,
        {row["permission"]: row["effect"] for row in user_rows},
    )


async def members_of_subtree(conn: asyncpg.Connection, team_id: uuid.UUID) -> list[str]:
    """The users in ``team_id`` or any of its descendants."""
    rows = await conn.fetch(_SUBTREE_MEMBERS, team_id)
    return [str(row["user_id"]) for row in rows]


# -- routes -----------------------------------------------------------------------


@router.post("/teams", status_code=201)
async def create_team(body: CreateTeam, context: Context) -> dict[str, Any]:
    """Create a team, optionally under a parent."""
    team_id = uuid.uuid4()
    async with context.pool.acquire() as conn, conn.transaction():
        if body.parent_id is not None:
            await _lock_hierarchy(conn)
            if not await _team_exists(conn, body.parent_id):
                raise _no_team(str(body.parent_id), "parent team")
        try:
            row = await conn.fetchrow(
                "INSERT INTO teams (id, name, parent_id, idp_group, tenant_id) "
                "VALUES ($1, $2, $3, $4, $5) "
                "RETURNING id, name, parent_id, idp_group, tenant_id, created_at",
                team_id,
                body.name,
                body.parent_id,
                body.idp_group,
                body.tenant_id,
            )
        except asyncpg.UniqueViolationError:
            raise _duplicate_group(body.idp_group) from None
        team = _team_json(row)
        await audit.record(
            conn,
            "team.created",
            subject=str(team_id),
            actor=audit.ADMIN,
            detail={k: team[k] for k in ("name", "parent_id", "idp_group", "tenant_id")},
        )
    return team


@router.get("/teams/{team_id}")
async def get_team(team_id: str, context: Context) -> dict[str, Any]:
    """A team with its members, grants and direct children."""
    tid = _team_id(team_id)
    async with context.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT id, name, parent_id, idp_group, tenant_id, created_at FROM teams WHERE id = $1",
            tid,
        )
        if row is None:
            raise _no_team(team_id)
        members = await conn.fetch(
            "SELECT user_id, role FROM team_members WHERE team_id = $1 ORDER BY user_id", tid
        )
        grants = await conn.fetch(
            "SELECT permission, effect FROM team_grants WHERE team_id = $1 ORDER BY permission",
            tid,
        )
        children = await conn.fetch("SELECT id FROM teams WHERE parent_id = $1 ORDER BY id", tid)
    return {
        **_team_json(row),
        "members": [{"user_id": str(m["user_id"]), "role": m["role"]} for m in members],
        "grants": [{"permission": g["permission"], "effect": g["effect"]} for g in grants],
        "children": [str(c["id"]) for c in children],
    }


@router.patch("/teams/{team_id}")
async def update_team(team_id: str, body: UpdateTeam, context: Context) -> dict[str, Any]:
    """Rename a team, change its IdP group or tenant, or move it under another parent."""
    tid = _team_id(team_id)
    fields = body.model_fields_set
    if "name" in fields and body.name is None:
        raise ApiError(422, "invalid_request", "name: a team needs a name")
    affected: list[str] = []
    async with context.pool.acquire() as conn, conn.transaction():
        await _lock_hierarchy(conn)
        current = await conn.fetchrow(
            "SELECT id, name, parent_id, idp_group, tenant_id, created_at FROM teams "
            "WHERE id = $1 FOR UPDATE",
            tid,
        )
        if current is None:
            raise _no_team(team_id)
        changes: dict[str, Any] = {f: getattr(body, f) for f in sorted(fields)}
        moved = "parent_id" in changes and changes["parent_id"] != current["parent_id"]
        if moved and changes["parent_id"] is not None:
            parent = changes["parent_id"]
            if not await _team_exists(conn, parent):
                raise _no_team(str(parent), "parent team")
            if await _is_in_subtree(conn, tid, parent):
                raise ApiError(
                    409,
                    "cycle",
                    f"team {parent} is {team_id} itself or one of its descendants: "
                    "moving the team under it would make a cycle",
                )
        if changes:
            assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=2))
            try:
                row = await conn.fetchrow(
                    # Column names come from UpdateTeam's fields, never from the request text.
                    f"UPDATE teams SET {assignments} WHERE id = $1 "  # noqa: S608
                    "RETURNING id, name, parent_id, idp_group, tenant_id, created_at",
                    tid,
                    *changes.values(),
                )
            except asyncpg.UniqueViolationError:
                raise _duplicate_group(body.idp_group) from None
        else:
            row = current
        team = _team_json(row)
        if changes:
            await audit.record(
                conn,
                "team.updated",
                subject=str(tid),
                actor=audit.ADMIN,
                detail={name: team[name] for name in changes},
            )
        if moved:
            affected = await members_of_subtree(conn, tid)
    await guard_of(context).permissions.invalidate(affected)
    return team


@router.delete("/teams/{team_id}", status_code=204)
async def delete_team(team_id: str, context: Context) -> Response:
    """Delete a team with all its descendants, their memberships and grants."""
    tid = _team_id(team_id)
    async with context.pool.acquire() as conn, conn.transaction():
        await _lock_hierarchy(conn)
        affected = await members_of_subtree(conn, tid)
        subtree = await conn.fetch(_SUBTREE_IDS, tid)
        row = await conn.fetchrow("DELETE FROM teams WHERE id = $1 RETURNING name", tid)
        if row is None:
            raise _no_team(team_id)
        await audit.record(
            conn,
            "team.deleted",
            subject=str(tid),
            actor=audit.ADMIN,
            detail={
                "name": row["name"],
                "deleted_teams": sorted(str(r["id"]) for r in subtree),
                "affected_users": affected,
            },
        )
    await guard_of(context).permissions.invalidate(affected)
    return Response(status_code=204)


@router.delete("/teams")
async def delete_test_teams(
    context: Context, namespace: Annotated[str, Query(min_length=1, max_length=253)]
) -> dict[str, Any]:
    """Delete every team named ``<namespace>/...`` (or ``<subdomain>.<namespace>/...``)
    with its descendants, where ``namespace`` is a domain under the reserved TLD
    .invalid: a test run's teams (its users go by their e-mail domain, DELETE
    /admin/users)."""
    domain = namespace.lower()
    if not users.is_test_domain(domain):
        raise ApiError(
            400, "invalid_namespace", "only a domain under the reserved TLD .invalid is a namespace"
        )
    async with context.pool.acquire() as conn, conn.transaction():
        await _lock_hierarchy(conn)
        # Matched literally (no LIKE): the domain's own characters never widen the match.
        roots = await conn.fetch(
            "SELECT id FROM teams WHERE strpos(name, '/') > 0 AND ("
            "split_part(lower(name), '/', 1) = $1 "
            "OR right(split_part(lower(name), '/', 1), length($1) + 1) = '.' || $1)",
            domain,
        )
        affected = sorted(
            {user for row in roots for user in await members_of_subtree(conn, row["id"])}
        )
        deleted = await conn.fetch(
            "DELETE FROM teams WHERE id = ANY($1::uuid[]) RETURNING id", [r["id"] for r in roots]
        )
        await audit.record(
            conn,
            "teams.deleted",
            subject=domain,
            actor=audit.ADMIN,
            detail={"namespace": domain, "count": len(deleted), "affected_users": affected},
        )
    await guard_of(context).permissions.invalidate(affected)
    return {"deleted": len(deleted)}


@router.put("/teams/{team_id}/members/{user_id}")
async def set_member(team_id: str, user_id: str, body: SetRole, context: Context) -> dict[str, Any]:
    """Add a user to a team, or change the user's role in it."""
    tid, uid = _team_id(team_id), _user_id(user_id)
    async with context.pool.acquire() as conn, conn.transaction():
        await _require_team(conn, tid, team_id)
        await _require_user(conn, uid, user_id)
        previous = await conn.fetchval(
            "SELECT role FROM team_members WHERE team_id = $1 AND user_id = $2 FOR UPDATE",
            tid,
            uid,
        )
        await conn.execute(
            "INSERT INTO team_members (team_id, user_id, role) VALUES ($1, $2, $3) "
            "ON CONFLICT (team_id, user_id) DO UPDATE SET role = EXCLUDED.role",
            tid,
            uid,
            body.role,
        )
        if previous != body.role:
            await audit.record(
                conn,
                "team.member_set",
                subject=str(tid),
                actor=audit.ADMIN,
                user_id=uid,
                detail={"team_id": str(tid), "role": body.role, "previous_role": previous},
            )
    if previous != body.role:
        await guard_of(context).permissions.invalidate([str(uid)])
    return {"team_id": str(tid), "user_id": str(uid), "role": body.role}


@router.delete("/teams/{team_id}/members/{user_id}", status_code=204)
async def remove_member(team_id: str, user_id: str, context: Context) -> Response:
    """Take a user out of a team."""
    tid, uid = _team_id(team_id), _user_id(user_id)
    async with context.pool.acquire() as conn, conn.transaction():
        role = await conn.fetchval(
            "DELETE FROM team_members WHERE team_id = $1 AND user_id = $2 RETURNING role", tid, uid
        )
        if role is None:
            raise ApiError(404, "not_found", f"user {user_id[:64]!r} is not in team {team_id!r}")
        await audit.record(
            conn,
            "team.member_removed",
            subject=str(tid),
            actor=audit.ADMIN,
            user_id=uid,
            detail={"team_id": str(tid), "role": role},
        )
    await guard_of(context).permissions.invalidate([str(uid)])
    return Response(status_code=204)


@router.put("/teams/{team_id}/grants/{permission}")
async def set_team_grant(
    team_id: str, permission: str, body: SetEffect, context: Context
) -> dict[str, Any]:
    """Allow or deny a permission to a team and its descendants."""
    return await _change_grant(_TEAM, team_id, permission, body.effect, context)


@router.delete("/teams/{team_id}/grants/{permission}", status_code=204)
async def remove_team_grant(team_id: str, permission: str, context: Context) -> Response:
    """Remove a team's grant of a permission."""
    await _change_grant(_TEAM, team_id, permission, None, context)
    return Response(status_code=204)


@router.put("/users/{user_id}/grants/{permission}")
async def set_user_grant(
    user_id: str, permission: str, body: SetEffect, context: Context
) -> dict[str, Any]:
    """Allow or deny a permission to one user (overrides every team)."""
    return await _change_grant(_USER, user_id, permission, body.effect, context)


@router.delete("/users/{user_id}/grants/{permission}", status_code=204)
async def remove_user_grant(user_id: str, permission: str, context: Context) -> Response:
    """Remove a user's own grant of a permission."""
    await _change_grant(_USER, user_id, permission, None, context)
    return Response(status_code=204)


@router.get("/users/{user_id}/permissions")
async def user_permissions(user_id: str, context: Context) -> dict[str, Any]:
    """A user's effective permissions (through the cache, as /authz/check sees them)."""
    uid = _user_id(user_id)
    async with context.pool.acquire() as conn:
        await _require_user(conn, uid, user_id)
    guard = guard_of(context)
    permissions = await guard.permissions.get(str(uid), cached=not guard.resilience.degraded)
    return {"user_id": str(uid), "permissions": permissions}


# -- helpers ------------------------------------------------------------------------


async def _lock_hierarchy(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _HIERARCHY_LOCK)


async def _team_exists(conn: asyncpg.Connection, team_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM teams WHERE id = $1)", team_id))


async def _is_in_subtree(conn: asyncpg.Connection, root: uuid.UUID, team: uuid.UUID) -> bool:
    return bool(await conn.fetchval(_IN_SUBTREE, root, team))


async def _require_team(conn: asyncpg.Connection, team_id: uuid.UUID, text: str) -> None:
    if not await _team_exists(conn, team_id):
        raise _no_team(text)


async def _require_user(conn: asyncpg.Connection, user_id: uuid.UUID, text: str) -> None:
    if await users.get_user(conn, user_id) is None:
        raise ApiError(404, "not_found", f"no user {text[:64]!r}")


async def _upsert_grant(
    conn: asyncpg.Connection,
    table: str,
    owner_column: str,
    owner: uuid.UUID,
    permission: str,
    effect: str,
) -> str | None:
    # table and owner_column are constants of this module, never request text.
    previous: str | None = await conn.fetchval(
        f"SELECT effect FROM {table} WHERE {owner_column} = $1 "  # noqa: S608
        "AND permission = $2 FOR UPDATE",
        owner,
        permission,
    )
    await conn.execute(
        f"INSERT INTO {table} ({owner_column}, permission, effect) "  # noqa: S608
        "VALUES ($1, $2, $3) "
        f"ON CONFLICT ({owner_column}, permission) DO UPDATE SET effect = EXCLUDED.effect",
        owner,
        permission,
        effect,
    )
    return previous


async def _delete_grant(
    conn: asyncpg.Connection, table: str, owner_column: str, owner: uuid.UUID, permission: str
) -> str | None:
    # table and owner_column are constants of this module, never request text.
    effect: str | None = await conn.fetchval(
        f"DELETE FROM {table} WHERE {owner_column} = $1 "  # noqa: S608
        "AND permission = $2 RETURNING effect",
        owner,
        permission,
    )
    return effect


def _check_permission(permission: str) -> None:
    if not is_permission(permission):
        raise ApiError(
            422,
            "invalid_request",
            "permission: must be resource:action in lower-case letters, digits and _ . - "
            "(each part 1-64 characters), e.g. agents:run",
        )


def _team_json(row: asyncpg.Record | None) -> dict[str, Any]:
    if row is None:
        raise RuntimeError("the team row vanished inside its transaction")
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "parent_id": _opt(row["parent_id"]),
        "idp_group": row["idp_group"],
        "tenant_id": _opt(row["tenant_id"]),
        "created_at": row["created_at"].isoformat(),
    }


def _opt(value: uuid.UUID | None) -> str | None:
    return str(value) if value is not None else None


def _team_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise _no_team(text) from None


def _user_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ApiError(404, "not_found", f"no user {text[:64]!r}") from None


def _no_team(team_id: str, what: str = "team") -> ApiError:
    return ApiError(404, "not_found", f"no {what} {team_id[:64]!r}")


def _no_grant(permission: str, owner: str) -> ApiError:
    return ApiError(404, "not_found", f"{owner} has no grant of {permission[:140]!r}")


def _duplicate_group(group: str | None) -> ApiError:
    return ApiError(409, "duplicate_idp_group", f"another team maps IdP group {group!r}")


# -- grants ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Grantee:
    """What a grant is given to (a team with its descendants, or one user): its table,
    its audit actions and whose permissions a change of its grants affects."""

    kind: str  # "team" | "user": the audit actions are <kind>.grant_set / .grant_removed
    table: str
    column: str  # the owner's column in ``table``, also the key in the answer
    parse: Callable[[str], uuid.UUID]  # the path parameter, 404 if it is no id
    require: Callable[[asyncpg.Connection, uuid.UUID, str], Awaitable[None]]  # 404 if absent
    affected: Callable[[asyncpg.Connection, uuid.UUID], Awaitable[list[str]]]
    audit_user: bool  # whether the audit event names the owner as its user


async def _only_the_user(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[str]:
    return [str(user_id)]


async def _change_grant(
    grantee: _Grantee, owner_text: str, permission: str, effect: Effect | None, context: Context
) -> dict[str, Any]:
    """Set (``effect``) or remove (None) ``grantee``'s grant of ``permission``: audited,
    and the permissions of the users it affects invalidated, when anything changed."""
    owner = grantee.parse(owner_text)
    if effect is not None:
        _check_permission(permission)
    affected: list[str] = []
    async with context.pool.acquire() as conn, conn.transaction():
        if effect is not None:
            await grantee.require(conn, owner, owner_text)
            previous = await _upsert_grant(
                conn, grantee.table, grantee.column, owner, permission, effect
            )
            action = f"{grantee.kind}.grant_set"
            detail = {"permission": permission, "effect": effect, "previous": previous}
        else:
            previous = await _delete_grant(conn, grantee.table, grantee.column, owner, permission)
            if previous is None:
                raise _no_grant(permission, f"{grantee.kind} {owner_text[:64]!r}")
            action = f"{grantee.kind}.grant_removed"
            detail = {"permission": permission, "effect": previous}
        if previous != effect:
            await audit.record(
                conn,
                action,
                subject=str(owner),
                actor=audit.ADMIN,
                user_id=owner if grantee.audit_user else None,
                detail=detail,
            )
            affected = await grantee.affected(conn, owner)
    await guard_of(context).permissions.invalidate(affected)
    return {grantee.column: str(owner), "permission": permission, "effect": effect}


_TEAM: Final = _Grantee(
    kind="team",
    table="team_grants",
    column="team_id",
    parse=_team_id,
    require=_require_team,
    affected=members_of_subtree,
    audit_user=False,
)
_USER: Final = _Grantee(
    kind="user",
    table="user_grants",
    column="user_id",
    parse=_user_id,
    require=_require_user,
    affected=_only_the_user,
    audit_user=True,
)
