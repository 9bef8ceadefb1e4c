"""What apex.data holds of the agents' costs, read the way billing reads it (L2/L3).

Public: `UsageRow` and `usage_rows` (apex.data's `usage_records` of some runs, from
PostgreSQL as the kit's superuser), `ClickHouseCosts` (the worker's ClickHouse:
`usage_events` read with FINAL, each record once, and the cost per tenant, agent and
model from the records' labels, contract-data.md), `admin_json` (an apex.agents admin
route's answer) and `metric` (a sample of apex.agents' `/metrics`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from clickhouse_driver import Client
from prometheus_client.parser import text_string_to_metric_families

from agent_tests.client import admin_headers

__all__ = ["ClickHouseCosts", "UsageRow", "admin_json", "metric", "usage_rows"]


@dataclasses.dataclass(frozen=True)
class UsageRow:
    """One usage record in apex.data's PostgreSQL."""

    tenant_id: str
    user_id: str
    kind: str
    quantity: int
    cost_micros: int
    idempotency_key: str
    labels: dict[str, str]


async def usage_rows(db: Any, run_ids: Iterable[str]) -> list[UsageRow]:
    """The usage records whose idempotency key names one of `run_ids` (`<run>:<step>:<call>`),
    by key."""
    rows = await db.fetch(
        "SELECT tenant_id::text, user_id::text, kind, quantity, cost_micros, idempotency_key, "
        "labels::text FROM usage_records WHERE split_part(idempotency_key, ':', 1) = ANY($1) "
        "ORDER BY idempotency_key",
        list(run_ids),
    )
    return [
        UsageRow(
            tenant_id=row[0],
            user_id=row[1],
            kind=row[2],
            quantity=row[3],
            cost_micros=row[4],
            idempotency_key=row[5],
            labels=json.loads(row[6]),
        )
        for row in rows
    ]


class ClickHouseCosts:
    """The worker's ClickHouse database (the relay's copy of apex.data's records)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._client = Client(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 9000,
            user=unquote(parts.username) if parts.username else "default",
            password=unquote(parts.password) if parts.password else "",
            database=unquote(parts.path.lstrip("/")) or "default",
        )

    async def _execute(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        exists = await asyncio.to_thread(
            self._client.execute,
            "SELECT count() FROM system.tables WHERE database = currentDatabase() "
            "AND name = 'usage_events'",
        )
        if exists == [(0,)]:
            return []  # the relay makes the table on its first pass
        return list(await asyncio.to_thread(self._client.execute, sql, params))

    async def by_agent_model(self, tenant_id: str) -> dict[tuple[str, str], tuple[int, int]]:
        """{(agent, model): (records, cost_micros)} of one tenant: a ClickHouse query over
        the records' labels, each record once (FINAL)."""
        rows = await self._execute(
            "SELECT label_values[indexOf(label_keys, 'agent')] AS agent, "
            "label_values[indexOf(label_keys, 'model')] AS model, count(), sum(cost_micros) "
            "FROM usage_events FINAL WHERE tenant_id = toUUID(%(tenant)s) "
            "GROUP BY agent, model",
            {"tenant": tenant_id},
        )
        return {(agent, model): (int(n), int(cost)) for agent, model, n, cost in rows}

    async def records_of(self, run_ids: Iterable[str]) -> int:
        """How many events (FINAL: each record once) carry the label run_id of `run_ids`."""
        rows = await self._execute(
            "SELECT count() FROM usage_events FINAL "
            "WHERE has(%(runs)s, label_values[indexOf(label_keys, 'run_id')])",
            {"runs": list(run_ids)},
        )
        return int(rows[0][0]) if rows else 0

    def close(self) -> None:
        self._client.disconnect()


async def admin_json(client: httpx.AsyncClient, admin_token: str, path: str) -> dict[str, Any]:
    """The JSON answer (200 asserted) of an apex.agents admin route."""
    response = await client.get(path, headers=admin_headers(admin_token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def metric(client: httpx.AsyncClient, admin_token: str, name: str, **labels: str) -> float:
    """The value of sample `name` with `labels` in apex.agents' /metrics (0 if absent)."""
    response = await client.get("/metrics", headers=admin_headers(admin_token))
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0
