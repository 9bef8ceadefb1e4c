"""`_leftovers.leftovers(dsn)`: what `apex-testkit stack --check-leftovers` counts, on the
worker's database (the platform's schema): usage records of test tenants count, those of
a tenant with a user outside the test namespaces do not."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from apex_testkit._leftovers import leftovers

_USER = "INSERT INTO users (id, email, tier, tenant_id) VALUES ($1, $2, 'pro', $3)"
_RECORD = (
    "INSERT INTO usage_records (id, tenant_id, user_id, kind, quantity, cost_micros, "
    "idempotency_key, occurred_at) VALUES (gen_random_uuid(), $1, $2, 'tokens', 1, 1, $3, now())"
)


async def _write(dsn: str) -> None:
    kept, tested, emptied = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(dsn)
    try:
        real, test = uuid.uuid4(), uuid.uuid4()
        await conn.execute(_USER, real, "someone@example.com", kept)
        await conn.execute(_USER, test, "t@run-1.tests.apex.invalid", tested)
        # kept: a real user's tenant (not counted, although a test user wrote in it too);
        # tested: a test user's tenant; emptied: a tenant whose users are gone.
        for n, (tenant, user) in enumerate(
            [(kept, real), (kept, test), (tested, test), (tested, test), (emptied, test)]
        ):
            await conn.execute(_RECORD, tenant, user, f"k{n}")
    finally:
        await conn.close()


def test_usage_records_of_test_tenants_are_leftovers(postgres_database: str) -> None:
    assert "usage_records" not in leftovers(postgres_database)
    asyncio.run(_write(postgres_database))
    counts = leftovers(postgres_database)
    assert counts["usage_records"] == 3
    assert counts["users"] == 1
