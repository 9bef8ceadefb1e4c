"""Credit transfers between tenants: the PostgreSQL part of the multi-store operation.

One transaction debits the sender (never below zero: 409 ``insufficient_credit``,
nothing written), credits the receiver, records the transfer and its outbox row (topic
``credit_transfer``, for the ClickHouse ledger through the relay). Rows are locked in
the order the transfer names them (sender, then receiver), so two transfers in opposite
directions at once can deadlock; :mod:`apex.data.retry` runs the loser again. The same
idempotency key (per sender) again returns the first transfer and moves nothing.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import asyncpg

from apex.data.usage import OUTBOX_CHANNEL

__all__ = ["TOPIC", "InsufficientCredit", "transfer"]

TOPIC: Final = "credit_transfer"


class InsufficientCredit(Exception):
    """The sender's balance is below the amount."""


def _json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "from_tenant": str(row["from_tenant"]),
        "to_tenant": str(row["to_tenant"]),
        "amount_micros": row["amount_micros"],
        "idempotency_key": row["idempotency_key"],
        "state": row["state"],
    }


async def transfer(
    conn: asyncpg.Connection,
    from_tenant: uuid.UUID,
    to_tenant: uuid.UUID,
    amount_micros: int,
    idempotency_key: str,
) -> tuple[dict[str, Any], bool]:
    """Move ``amount_micros`` from one tenant to another: (the transfer, True), or the one
    made earlier with the same key and False; InsufficientCredit rolls everything back."""
    async with conn.transaction():
        earlier = await conn.fetchrow(
            "SELECT * FROM credit_transfers WHERE from_tenant = $1 AND idempotency_key = $2",
            from_tenant,
            idempotency_key,
        )
        if earlier is not None:
            return _json(earlier), False
        debited = await conn.fetchval(
            "UPDATE tenant_credits SET balance_micros = balance_micros - $2 "
            "WHERE tenant_id = $1 AND balance_micros >= $2 RETURNING balance_micros",
            from_tenant,
            amount_micros,
        )
        if debited is None:
            raise InsufficientCredit(f"the balance is below {amount_micros} micros")
        await conn.execute(
            "INSERT INTO tenant_credits (tenant_id, balance_micros) VALUES ($1, $2) "
            "ON CONFLICT (tenant_id) DO UPDATE "
            "SET balance_micros = tenant_credits.balance_micros + EXCLUDED.balance_micros",
            to_tenant,
            amount_micros,
        )
        row = await conn.fetchrow(
            "INSERT INTO credit_transfers "
            "(id, from_tenant, to_tenant, amount_micros, idempotency_key, state) "
            "VALUES ($1, $2, $3, $4, $5, 'committed') RETURNING *",
            uuid.uuid4(),
            from_tenant,
            to_tenant,
            amount_micros,
            idempotency_key,
        )
        await conn.execute(
            "INSERT INTO outbox (topic, payload) VALUES ($1, jsonb_build_object("
            "'id', $2::uuid, 'from_tenant', $3::uuid, 'to_tenant', $4::uuid, "
            "'amount_micros', $5::bigint, 'created_at', $6::timestamptz))",
            TOPIC,
            row["id"],
            from_tenant,
            to_tenant,
            amount_micros,
            row["created_at"],
        )
        await conn.execute("SELECT pg_notify($1, '')", OUTBOX_CHANNEL)
    return _json(row), True
