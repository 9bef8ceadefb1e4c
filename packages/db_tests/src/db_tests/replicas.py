"""Helpers for the tests of replicas and failover (L3): a schema on a test's own
PostgreSQL pair, and the replica's state as the data service reports it.

Public: `migrate(dsn)` (runs `python -m apex.data migrate` against `dsn`, as an operator
would), `replica_state(client, admin_token)`, `wait_replica_state(...)`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import httpx

from apex_testkit import eventually
from db_tests.state import pool_stats

__all__ = ["migrate", "replica_state", "wait_replica_state"]

MIGRATE_TIMEOUT = 60.0


async def migrate(dsn: str) -> None:
    """Bring the database at `dsn` to the platform's newest schema with the platform's
    own CLI; AssertionError with its output if it fails."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apex.data",
        "migrate",
        env={**os.environ, "APEX_DATABASE_URL": dsn},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), MIGRATE_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(
            f"python -m apex.data migrate took over {MIGRATE_TIMEOUT:g} s"
        ) from None
    assert process.returncode == 0, output.decode(errors="replace")


async def replica_state(client: httpx.AsyncClient, admin_token: str) -> dict[str, Any]:
    """The replica's state and lag as `/admin/pools` reports them."""
    state: dict[str, Any] = (await pool_stats(client, admin_token))["replica"]
    return state


async def wait_replica_state(client: httpx.AsyncClient, admin_token: str, state: str) -> None:
    """Wait until the service reports the replica `state` (ok, lagging, down)."""

    last: dict[str, Any] = {}

    async def reached() -> bool:
        last.update(await replica_state(client, admin_token))
        return last["state"] == state

    try:
        await eventually(reached, timeout=15, message=f"the replica to be {state}")
    except AssertionError:
        raise AssertionError(f"the replica never became {state}: last {last}") from None
