"""Row-level tenant isolation: run queries as one tenant.

Tables with per-tenant rows (``tenant_settings`` first) have ROW LEVEL SECURITY
enabled and forced, with a policy comparing ``tenant_id`` to the transaction-local
setting ``apex.tenant_id``; :func:`tenant_transaction` sets it and switches to the
role ``apex_tenant`` (migration 0008) for the rest of the transaction: superusers and
roles with BYPASSRLS are not subject to policies, so the service's own (possibly
superuser) connection would otherwise see every tenant's rows.

apex.data's own pools run every connection as ``apex_data`` (:data:`SERVICE_ROLE`,
migration 0011): not BYPASSRLS, so a code path that forgets the tenant transaction sees
no tenant row. :func:`audit_transaction` is the one explicit way to read every tenant's
usage records (``apex_auditor``, read-only).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg

__all__ = [
    "AUDITOR_ROLE",
    "SERVICE_ROLE",
    "TENANT_ROLE",
    "TENANT_SETTING",
    "audit_transaction",
    "tenant_transaction",
]

TENANT_SETTING = "apex.tenant_id"
# Neither superuser nor BYPASSRLS; may only read and write the tenant tables.
TENANT_ROLE = "apex_tenant"
# What apex.data's pooled connections run as (SET ROLE on every acquire).
SERVICE_ROLE = "apex_data"
# Reads every tenant's usage records, writes nothing.
AUDITOR_ROLE = "apex_auditor"


@contextlib.asynccontextmanager
async def tenant_transaction(
    conn: asyncpg.Connection, tenant_id: uuid.UUID | str
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on ``conn`` in which RLS policies see ``tenant_id`` as the current tenant."""
    try:
        tenant = uuid.UUID(str(tenant_id))
    except ValueError:
        raise ValueError(f"tenant_id must be a UUID, got {tenant_id!r}") from None
    async with conn.transaction():
        # is_local=true: the setting ends with the transaction, so a pooled
        # connection never carries one tenant's identity into the next user's work.
        await conn.execute("SELECT set_config($1, $2, true)", TENANT_SETTING, str(tenant))
        # SET LOCAL: back to the connection's own role when the transaction ends.
        await conn.execute(f"SET LOCAL ROLE {TENANT_ROLE}")
        yield conn


@contextlib.asynccontextmanager
async def audit_transaction(conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """A read-only transaction on ``conn`` that sees every tenant's usage records."""
    async with conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL ROLE {AUDITOR_ROLE}")
        yield conn
