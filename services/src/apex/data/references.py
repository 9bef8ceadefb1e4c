"""References across PostgreSQL and ClickHouse: checked, and repaired (001#63).

No database enforces a key that lives in the other one, so this module does. A ClickHouse
usage event refers to a PostgreSQL usage record (same id) and to its user: an event
whose record or user is gone from PostgreSQL is an *orphan*. A record of a user who
still exists, whose outbox row was relayed but which has no event in ClickHouse, is
*missing* (a record whose outbox row is still pending is relay lag, not an
inconsistency). Repair deletes the orphans from
ClickHouse (a mutation, waited for) and re-enqueues the missing records, which the relay
then copies like any other. The records are read across tenants, in
:func:`apex.data.tenancy.audit_transaction` (the read-only role ``apex_auditor``, which
may also read users' ids: migration 0013).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any, Final

from apex.data import clickhouse_sql
from apex.data.clickhouse import ClickHouse, ClickHouseError
from apex.data.outbox import USAGE_TOPIC, Connect, enqueue, ensure_clickhouse_schema
from apex.data.tenancy import audit_transaction

__all__ = ["ReferenceReport", "RepairResult", "check", "repair"]

# An ALTER TABLE ... DELETE is applied in the background; repair waits this long for it.
MUTATION_DEADLINE: Final = 30.0
_MUTATION_STEP: Final = 0.05


@dataclasses.dataclass(frozen=True)
class ReferenceReport:
    """What the check found: ids of orphan events and of missing records."""

    orphans: list[str]
    missing: list[str]
    checked_events: int
    checked_records: int

    @property
    def consistent(self) -> bool:
        """Whether both stores agree."""
        return not self.orphans and not self.missing

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON."""
        return {**dataclasses.asdict(self), "consistent": self.consistent}


@dataclasses.dataclass(frozen=True)
class RepairResult:
    """What a repair did: orphans deleted from ClickHouse, records enqueued again."""

    deleted: int
    requeued: int

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON."""
        return dataclasses.asdict(self)


async def check(connect: Connect, clickhouse: ClickHouse) -> ReferenceReport:
    """Compare the usage events in ClickHouse with the records and users in PostgreSQL."""
    await ensure_clickhouse_schema(clickhouse)  # nothing relayed yet: no events at all
    events = await clickhouse.execute(clickhouse_sql.EVENT_USERS)
    event_users = {str(row[0]): str(row[1]) for row in events}
    async with connect() as conn:
        async with audit_transaction(conn):
            records = await conn.fetch(
                "SELECT id::text AS id, user_id::text AS user_id FROM usage_records"
            )
            record_users = {row["id"]: row["user_id"] for row in records}
            users = await conn.fetch(
                "SELECT id::text AS id FROM users WHERE id = ANY($1::uuid[])",
                sorted(set(event_users.values()) | set(record_users.values())),
            )
        relayed = await conn.fetch(
            "SELECT payload->>'id' AS id FROM outbox WHERE topic = $1 AND relayed_at IS NOT NULL",
            USAGE_TOPIC,
        )
    user_ids = {row["id"] for row in users}
    orphans = sorted(
        event
        for event, user in event_users.items()
        if event not in record_users or user not in user_ids
    )
    # A record of a user who is gone is not expected in ClickHouse (its event would be an
    # orphan), so it is not missing either.
    relayed_ids = {row["id"] for row in relayed}
    missing = sorted(
        record
        for record, user in record_users.items()
        if record in relayed_ids and record not in event_users and user in user_ids
    )
    return ReferenceReport(orphans, missing, len(event_users), len(record_users))


async def repair(connect: Connect, clickhouse: ClickHouse) -> RepairResult:
    """Delete the orphan events, re-enqueue the missing records; return the counts."""
    report = await check(connect, clickhouse)
    if report.orphans:
        await _delete_events(clickhouse, report.orphans)
    if report.missing:
        async with connect() as conn:
            async with audit_transaction(conn):
                rows = await conn.fetch(
                    "SELECT id, tenant_id, user_id, kind, quantity, cost_micros, occurred_at "
                    "FROM usage_records WHERE id = ANY($1::uuid[])",
                    report.missing,
                )
            async with conn.transaction():
                for row in rows:
                    await enqueue(conn, USAGE_TOPIC, dict(row))
    return RepairResult(deleted=len(report.orphans), requeued=len(report.missing))


async def _delete_events(clickhouse: ClickHouse, ids: list[str]) -> None:
    """``ALTER TABLE ... DELETE`` (a mutation: 18.16 has them, applied in the background),
    then wait until no mutation of the table is left undone."""
    values = [str(uuid.UUID(value)) for value in ids]
    await clickhouse.execute(clickhouse_sql.DELETE_EVENTS, {"ids": values})
    deadline = time.monotonic() + MUTATION_DEADLINE
    while time.monotonic() < deadline:
        left = await clickhouse.execute(clickhouse_sql.PENDING_MUTATIONS)
        if left == [(0,)]:
            return
        await asyncio.sleep(_MUTATION_STEP)
    raise ClickHouseError(
        f"the deletion of {len(ids)} orphan events did not finish in {MUTATION_DEADLINE:.0f} s"
    )
