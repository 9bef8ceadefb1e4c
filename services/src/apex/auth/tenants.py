"""Per-tenant settings: ``/tenants/{tid}/settings[/{key}]`` (bearer access token).

Only a token whose ``tid`` is the path's tenant gets in; any other tenant id answers
404 ``not_found`` exactly like a tenant without settings, so tenant ids cannot be
probed. Every query runs in :func:`apex.data.tenancy.tenant_transaction`: row-level
security (as role ``apex_tenant``) does the filtering, not only the WHERE clauses.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from apex.auth import audit
from apex.auth.context import AuthContext, Principal, authenticated, get_context
from apex.common.http import ApiError, require_json_body
from apex.data.tenancy import tenant_transaction

__all__ = ["router"]

router = APIRouter(prefix="/tenants", dependencies=[Depends(require_json_body)])
Context = Annotated[AuthContext, Depends(get_context)]
Caller = Annotated[Principal, Depends(authenticated)]

_KEY: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
MAX_VALUE_LENGTH: Final = 8192


class SettingValue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str = Field(max_length=MAX_VALUE_LENGTH)


@router.get("/{tenant_id}/settings")
async def list_settings(tenant_id: str, caller: Caller, context: Context) -> dict[str, Any]:
    """Every setting of the caller's tenant."""
    tenant = _own_tenant(tenant_id, caller)
    async with context.pool.acquire() as conn, tenant_transaction(conn, tenant):
        rows = await conn.fetch("SELECT key, value FROM tenant_settings ORDER BY key")
    return {"tenant_id": str(tenant), "settings": {row["key"]: row["value"] for row in rows}}


@router.get("/{tenant_id}/settings/{key}")
async def get_setting(tenant_id: str, key: str, caller: Caller, context: Context) -> dict[str, Any]:
    """One setting of the caller's tenant."""
    tenant = _own_tenant(tenant_id, caller)
    _check_key(key)
    async with context.pool.acquire() as conn, tenant_transaction(conn, tenant):
        value = await conn.fetchval("SELECT value FROM tenant_settings WHERE key = $1", key)
    if value is None:
        raise ApiError(404, "not_found", f"no setting {key!r}")
    return {"tenant_id": str(tenant), "key": key, "value": value}


@router.put("/{tenant_id}/settings/{key}")
async def put_setting(
    tenant_id: str, key: str, body: SettingValue, caller: Caller, context: Context
) -> dict[str, Any]:
    """Create or replace a setting of the caller's tenant."""
    tenant = _own_tenant(tenant_id, caller)
    _check_key(key)
    async with context.pool.acquire() as conn:
        async with tenant_transaction(conn, tenant):
            previous = await conn.fetchval(
                "SELECT value FROM tenant_settings WHERE key = $1 FOR UPDATE", key
            )
            await conn.execute(
                "INSERT INTO tenant_settings (tenant_id, key, value) VALUES ($1, $2, $3) "
                "ON CONFLICT (tenant_id, key) DO UPDATE SET value = EXCLUDED.value",
                tenant,
                key,
                body.value,
            )
        if previous != body.value:
            # Values may be secrets: the trail names the key only.
            await audit.record(
                conn,
                "tenant.setting_set",
                subject=str(tenant),
                actor=audit.user_actor(caller.claims.subject),
                user_id=caller.claims.subject,
                detail={"key": key, "created": previous is None},
            )
    return {"tenant_id": str(tenant), "key": key, "value": body.value}


@router.delete("/{tenant_id}/settings/{key}", status_code=204)
async def delete_setting(tenant_id: str, key: str, caller: Caller, context: Context) -> Response:
    """Remove a setting of the caller's tenant."""
    tenant = _own_tenant(tenant_id, caller)
    _check_key(key)
    async with context.pool.acquire() as conn:
        async with tenant_transaction(conn, tenant):
            deleted = await conn.fetchval(
                "DELETE FROM tenant_settings WHERE key = $1 RETURNING key", key
            )
        if deleted is None:
            raise ApiError(404, "not_found", f"no setting {key!r}")
        await audit.record(
            conn,
            "tenant.setting_deleted",
            subject=str(tenant),
            actor=audit.user_actor(caller.claims.subject),
            user_id=caller.claims.subject,
            detail={"key": key},
        )
    return Response(status_code=204)


def _own_tenant(tenant_id: str, caller: Principal) -> uuid.UUID:
    try:
        tenant = uuid.UUID(tenant_id)
    except ValueError:
        tenant = None
    own = caller.claims.tenant_id
    if tenant is None or own is None or str(tenant) != own:
        # Not 403: whether another tenant exists is none of the caller's business.
        raise ApiError(404, "not_found", f"no tenant {tenant_id[:64]!r}")
    return tenant


def _check_key(key: str) -> None:
    if not _KEY.fullmatch(key):
        raise ApiError(
            422,
            "invalid_request",
            "key: 1-128 letters, digits and _ . : - (starting with a letter or digit)",
        )
