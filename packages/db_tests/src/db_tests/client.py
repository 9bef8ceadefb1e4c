"""A client of the Apex data service (apex.data), for any team's tests.

Public: `DataUser` (a platform user of one tenant, with a context token for apex.data
made by apex.auth: `auth_tests.access.ServiceUser`), `usage_body` (a valid
`POST /v1/usage` body with a fresh idempotency key), `bearer`, `admin_headers` and
`error_of`. `MakeUser` and `OpenData` are the types of the `make_data_user` and
`data_with` fixtures. `purge_tenants` deletes what tenants wrote (an L4 run's, at its end).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import httpx
from auth_tests.access import ServiceUser, bearer

__all__ = [
    "AUDIENCE",
    "BILLING_READ",
    "BILLING_WRITE",
    "RUN_AGENTS",
    "DataUser",
    "MakeUser",
    "OpenData",
    "admin_headers",
    "bearer",
    "error_of",
    "purge_tenants",
    "usage_body",
]

# The audience apex.data accepts context tokens for.
AUDIENCE: Final = "apex-data"
# A user with a context token for apex.data (`auth_tests.access.service_user`).
DataUser = ServiceUser
# Writing usage needs the first, reading it the second.
RUN_AGENTS: Final = "agents:run"
BILLING_READ: Final = "billing:read"
# Moving credit to another tenant (POST /v1/credits/transfer).
BILLING_WRITE: Final = "billing:write"
# Tenants per `POST /admin/tenants/purge` (the route takes up to 10,000).
PURGE_CHUNK: Final = 1000


# `await make_data_user(tenant=..., permissions=(...))`: what `make_data_user` hands out.
MakeUser = Callable[..., Awaitable[DataUser]]
# `await data_with(APEX_DB_POOL_SIZE="2", ...)`: what `data_with` hands out.
OpenData = Callable[..., Awaitable[httpx.AsyncClient]]


def admin_headers(admin_token: str) -> dict[str, str]:
    """The headers of apex.data's /admin/* routes and /metrics."""
    return bearer(admin_token)


def usage_body(user_id: str, **fields: Any) -> dict[str, Any]:
    """A valid `POST /v1/usage` body for `user_id` with a fresh idempotency key; `fields`
    override (or, set to None, remove) any field."""
    body: dict[str, Any] = {
        "user_id": user_id,
        "kind": "tokens",
        "quantity": 100,
        "cost_micros": 250,
        "idempotency_key": uuid.uuid4().hex,
    }
    for name, value in fields.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def error_of(response: httpx.Response) -> str:
    """The machine-readable error code of a refused response."""
    code: str = response.json()["error"]
    return code


async def purge_tenants(
    data_client: httpx.AsyncClient, admin_token: str, tenant_ids: Sequence[str]
) -> dict[str, int]:
    """Delete what `tenant_ids` wrote to apex.data (`POST /admin/tenants/purge`, in chunks
    the route takes): the rows deleted per table."""
    deleted: dict[str, int] = {}
    for start in range(0, len(tenant_ids), PURGE_CHUNK):
        response = await data_client.post(
            "/admin/tenants/purge",
            json={"tenant_ids": list(tenant_ids[start : start + PURGE_CHUNK])},
            headers=admin_headers(admin_token),
        )
        assert response.status_code == 200, response.text
        for table, count in response.json().items():
            deleted[table] = deleted.get(table, 0) + int(count)
    return deleted
