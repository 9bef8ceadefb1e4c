"""What the tests read to prove state: the service's pools and metrics, and the database
behind it (L2/L3: the worker's database, read as the kit's superuser).

Public: `Connect`, `pool_stats`, `metrics`, `sample`, `usage_count`, `outbox_count`,
`waiting_backends`, `active_queries`, `APPLICATION_NAME`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import httpx
from prometheus_client.parser import text_string_to_metric_families

from db_tests.client import admin_headers

__all__ = [
    "APPLICATION_NAME",
    "Connect",
    "Samples",
    "active_queries",
    "metrics",
    "outbox_count",
    "pool_stats",
    "sample",
    "usage_count",
    "waiting_backends",
]

# `await db_connect()`: what the db_connect fixture hands out (an asyncpg connection).
Connect = Callable[[], Awaitable[Any]]
# The application_name of apex.data's connections (pg_stat_activity).
APPLICATION_NAME: Final = "apex-data"
# (metric sample name, sorted labels) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def pool_stats(client: httpx.AsyncClient, admin_token: str) -> dict[str, Any]:
    """`GET /admin/pools`: each pool's size, in_use, idle, waiting; the replica's state."""
    response = await client.get("/admin/pools", headers=admin_headers(admin_token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def metrics(client: httpx.AsyncClient, admin_token: str) -> Samples:
    """`GET /metrics`, parsed with prometheus_client's own parser."""
    response = await client.get("/metrics", headers=admin_headers(admin_token))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample (0 when the series does not exist yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def usage_count(db: Any, tenant_id: str | None = None) -> int:
    """Usage records (of `tenant_id`, or all), as the superuser sees them."""
    if tenant_id is None:
        count: int = await db.fetchval("SELECT count(*) FROM usage_records")
    else:
        count = await db.fetchval(
            "SELECT count(*) FROM usage_records WHERE tenant_id = $1::uuid", tenant_id
        )
    return count


async def outbox_count(db: Any, tenant_id: str | None = None) -> int:
    """Outbox rows (of usage records of `tenant_id`, or all)."""
    if tenant_id is None:
        count: int = await db.fetchval("SELECT count(*) FROM outbox")
    else:
        count = await db.fetchval(
            "SELECT count(*) FROM outbox WHERE payload->>'tenant_id' = $1", tenant_id
        )
    return count


async def waiting_backends(db: Any) -> int:
    """apex.data's backends on this database waiting on a lock right now (other workers'
    databases are on the same server)."""
    count: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
        "AND datname = current_database() AND wait_event_type = 'Lock'",
        APPLICATION_NAME,
    )
    return count


async def active_queries(db: Any) -> int:
    """apex.data's backends on this database running a query right now."""
    count: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
        "AND datname = current_database() AND state = 'active'",
        APPLICATION_NAME,
    )
    return count
