"""Helpers for the tests of replicas and failover (L3): the replica's state as the data
service reports it.

Public: `replica_state(client, admin_token)`, `wait_replica_state(...)`.
"""

from __future__ import annotations

from typing import Any

import httpx

from apex_testkit import eventually
from db_tests.state import pool_stats

__all__ = ["replica_state", "wait_replica_state"]


async def replica_state(client: httpx.AsyncClient, admin_token: str) -> dict[str, Any]:
    """The replica's state and lag as `/admin/pools` reports them."""
    state: dict[str, Any] = (await pool_stats(client, admin_token))["replica"]
    return state


async def wait_replica_state(client: httpx.AsyncClient, admin_token: str, state: str) -> None:
    """Wait until the service reports the replica `state` (ok, lagging, down)."""

    last: dict[str, Any] = {}

    async def reached() -> bool:
        last.update(await replica_state(client, admin_token))
        return bool(last["state"] == state)

    try:
        await eventually(reached, timeout=15, message=f"the replica to be {state}")
    except AssertionError:
        raise AssertionError(f"the replica never became {state}: last {last}") from None
