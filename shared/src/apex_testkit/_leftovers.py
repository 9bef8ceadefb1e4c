"""What an L4 run left behind on the local stack: the rows of test namespaces.

Every L4 test process writes in a namespace of its own: an e-mail domain under the
reserved TLD .invalid (users in it or its subdomains, teams named `<domain>/...`), which it
deletes when it ends (the platform's `DELETE /admin/users` and `/admin/teams`, and
apex.data's `POST /admin/tenants/purge` for its tenants' usage records). The local
stack's database is made for one run, so after the run nothing of any such namespace may be
left: `apex-testkit stack --check-leftovers` counts the rows with `leftovers(dsn)`.

Public: `leftovers(dsn)` (the non-zero counts, by table) and `NAMESPACE_ROWS` (the query).
"""

from __future__ import annotations

import asyncio

import asyncpg

__all__ = ["NAMESPACE_ROWS", "leftovers"]

# How many rows of each table belong to a test namespace. A user of one: its e-mail's domain
# is under .invalid (a namespace or one of its subdomains); a team of one: its name's part
# before the first "/" is. A user's keys, identities, grants... go with it (ON DELETE
# CASCADE): counted all the same, so a broken cascade shows too. A usage record (apex.data)
# belongs to a tenant, not to a user: one of a test namespace is a record of a tenant that
# no user outside the test namespaces belongs to (on the stack's database, made for one
# run, every tenant is a test's: those of deleted namespaces have no user left at all).
NAMESPACE_ROWS = """
WITH u AS (SELECT id FROM users WHERE lower(split_part(email, '@', 2)) LIKE '%.invalid'),
t AS (
    SELECT id FROM teams
    WHERE strpos(name, '/') > 0 AND lower(split_part(name, '/', 1)) LIKE '%.invalid'
)
SELECT
    (SELECT count(*) FROM u) AS users,
    (SELECT count(*) FROM api_keys WHERE user_id IN (SELECT id FROM u)) AS api_keys,
    (SELECT count(*) FROM external_identities WHERE user_id IN (SELECT id FROM u))
        AS external_identities,
    (SELECT count(*) FROM user_grants WHERE user_id IN (SELECT id FROM u)) AS user_grants,
    (SELECT count(*) FROM team_members WHERE user_id IN (SELECT id FROM u)) AS team_members,
    (SELECT count(*) FROM mfa_backup_codes WHERE user_id IN (SELECT id FROM u))
        AS mfa_backup_codes,
    (SELECT count(*) FROM password_resets WHERE user_id IN (SELECT id FROM u))
        AS password_resets,
    (SELECT count(*) FROM t) AS teams,
    (SELECT count(*) FROM team_grants WHERE team_id IN (SELECT id FROM t)) AS team_grants,
    (SELECT count(*) FROM usage_records r WHERE NOT EXISTS (
        SELECT 1 FROM users k
        WHERE k.tenant_id = r.tenant_id AND k.id NOT IN (SELECT id FROM u)
    )) AS usage_records
"""


def leftovers(dsn: str) -> dict[str, int]:
    """The tables of the database at `dsn` that hold rows of a test namespace, with how many."""
    return asyncio.run(_count(dsn))


async def _count(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        counts = await conn.fetchrow(NAMESPACE_ROWS)  # one row: an aggregate
    finally:
        await conn.close()
    return {table: int(count) for table, count in (counts or {}).items() if count}
