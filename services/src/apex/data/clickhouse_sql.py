"""Every ClickHouse statement apex.data sends, in one place.

Each must run on Debian's ClickHouse 18.16 and on current releases: no CTEs, window
functions, DateTime64, Map, TTL, ``SETTINGS`` clauses or the ``true`` literal.
:data:`STATEMENTS` names them all; the compatibility test (``nox -s clickhouse-compat``)
runs each one on the kit's 18.16 server and on current ClickHouse (chdb) and compares
the answers, so a statement added here is covered by construction. Placeholders are
clickhouse-driver's ``%(name)s``; ``{table}``/``{part}`` are identifiers that the caller
checks and formats in (identifiers cannot be bound).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

__all__ = [
    "ADD_LABEL_COLUMNS",
    "ANALYTICS",
    "ATTACH_PART",
    "COSTS_BY_AGENT_MODEL",
    "CREATE_TABLES",
    "DELETE_EVENTS",
    "DROP_TABLE",
    "EVENT_USERS",
    "FREEZE",
    "INSERT_COLUMNS",
    "LABEL_COLUMNS",
    "PENDING_MUTATIONS",
    "PING",
    "RENAME_TABLE",
    "STATEMENTS",
    "TABLE_DEFINITION",
    "TABLE_DIRECTORY",
    "TABLE_DIRECTORY_COLUMN",
    "TABLE_ROWS",
    "USAGE_BY_LINE",
    "insert",
]

PING: Final = "SELECT 1"

# The relay's tables. Partitioned by month of the event: a row sent twice lands in the
# same partition, where ReplacingMergeTree (and FINAL) collapses it.
CREATE_TABLES: Final[Mapping[str, str]] = {
    "usage_events": (
        "CREATE TABLE IF NOT EXISTS usage_events (id UUID, tenant_id UUID, user_id UUID, "
        "kind String, quantity UInt64, cost_micros UInt64, occurred_at DateTime, "
        "version UInt64, label_keys Array(String), label_values Array(String)) "
        "ENGINE = ReplacingMergeTree(version) "
        "PARTITION BY toYYYYMM(occurred_at) ORDER BY (tenant_id, id)"
    ),
    "credit_events": (
        "CREATE TABLE IF NOT EXISTS credit_events (id UUID, from_tenant UUID, to_tenant UUID, "
        "amount_micros UInt64, occurred_at DateTime, version UInt64) "
        "ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(occurred_at) ORDER BY id"
    ),
}
# usage_events made before the labels (migration 0019) lacks their columns: the relay's
# start probes for them and adds them (CREATE TABLE IF NOT EXISTS leaves a table alone).
LABEL_COLUMNS: Final = (
    "SELECT name FROM system.columns WHERE database = currentDatabase() "
    "AND table = 'usage_events' AND name IN ('label_keys', 'label_values') ORDER BY name"
)
ADD_LABEL_COLUMNS: Final = (
    "ALTER TABLE usage_events ADD COLUMN label_keys Array(String), "
    "ADD COLUMN label_values Array(String)"
)
# The columns the relay inserts, per table (the values go as native-protocol blocks).
INSERT_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    "usage_events": (
        "id", "tenant_id", "user_id", "kind", "quantity", "cost_micros", "occurred_at", "version",
        "label_keys", "label_values",
    ),
    "credit_events": ("id", "from_tenant", "to_tenant", "amount_micros", "occurred_at", "version"),
}  # fmt: skip


def insert(table: str, columns: Sequence[str]) -> str:
    """``INSERT INTO table (columns) VALUES``: the driver sends the rows after it."""
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES"


# GET /v1/usage/analytics: totals per kind of one tenant in [since, until) (epoch seconds).
ANALYTICS: Final = (
    "SELECT kind, sum(quantity), sum(cost_micros) FROM usage_events FINAL "
    "WHERE tenant_id = toUUID(%(tenant)s) AND occurred_at >= toDateTime(%(since)s) "
    "AND occurred_at < toDateTime(%(until)s) GROUP BY kind ORDER BY kind"
)
# GET /v1/usage/analytics/agents: cost per agent and model of one tenant in
# [since, until), from the records' labels (parallel arrays, sorted by key: no Map type
# on 18.16; a missing label reads as '').
COSTS_BY_AGENT_MODEL: Final = (
    "SELECT label_values[indexOf(label_keys, 'agent')] AS agent, "
    "label_values[indexOf(label_keys, 'model')] AS model, sum(quantity), sum(cost_micros) "
    "FROM usage_events FINAL WHERE tenant_id = toUUID(%(tenant)s) "
    "AND occurred_at >= toDateTime(%(since)s) AND occurred_at < toDateTime(%(until)s) "
    "GROUP BY agent, model ORDER BY agent, model"
)
# apex.billing.metering (001#97): one tenant's usage in [since, until) (epoch seconds) per
# kind, agent and model, with its count of events (each record once: FINAL).
USAGE_BY_LINE: Final = (
    "SELECT kind, label_values[indexOf(label_keys, 'agent')] AS agent, "
    "label_values[indexOf(label_keys, 'model')] AS model, sum(quantity), sum(cost_micros), "
    "count() FROM usage_events FINAL WHERE tenant_id = toUUID(%(tenant)s) "
    "AND occurred_at >= toDateTime(%(since)s) AND occurred_at < toDateTime(%(until)s) "
    "GROUP BY kind, agent, model ORDER BY kind, agent, model"
)
# apex.data.references (001#63): every event's record and user, each record once.
EVENT_USERS: Final = "SELECT id, user_id FROM usage_events FINAL"
# has() over strings: 18.16 converts neither an array nor string literals to UUIDs inside
# IN, and toString(UUID) reads the same everywhere. A mutation, applied in the background.
DELETE_EVENTS: Final = "ALTER TABLE usage_events DELETE WHERE has(%(ids)s, toString(id))"
PENDING_MUTATIONS: Final = (
    "SELECT count() FROM system.mutations WHERE database = currentDatabase() "
    "AND table = 'usage_events' AND is_done = 0"
)

# -- backup (apex.data.clickhouse_backup) -----------------------------------------------
# system.tables names a table's directory data_path on 18.16 and data_paths (an array:
# one per disk) on current releases; this probe says which, and TABLE_DIRECTORY maps
# the answer to the statement to use.
TABLE_DIRECTORY_COLUMN: Final = (
    "SELECT name FROM system.columns WHERE database = 'system' AND table = 'tables' "
    "AND name IN ('data_path', 'data_paths')"
)
TABLE_DIRECTORY: Final[Mapping[str, str]] = {
    "data_path": (
        "SELECT data_path FROM system.tables WHERE database = currentDatabase() "
        "AND name = %(table)s"
    ),
    "data_paths": (
        "SELECT arrayElement(data_paths, 1) FROM system.tables "
        "WHERE database = currentDatabase() AND name = %(table)s"
    ),
}
# The relay's tables that exist, with the statement that made them.
TABLE_DEFINITION: Final = (
    "SELECT name, create_table_query FROM system.tables WHERE database = currentDatabase() "
    "AND name IN %(tables)s ORDER BY name"
)
TABLE_ROWS: Final = "SELECT count() FROM {table}"
# A snapshot of every part (hard links under <path>/shadow/<N>/): ClickHouse's own
# backup before the BACKUP statement (22.x) existed.
FREEZE: Final = "ALTER TABLE {table} FREEZE"
ATTACH_PART: Final = "ALTER TABLE {table} ATTACH PART %(part)s"
RENAME_TABLE: Final = "RENAME TABLE {table} TO {target}"
DROP_TABLE: Final = "DROP TABLE IF EXISTS {table}"

# Every statement, by name (the relay's INSERT once per table).
STATEMENTS: Final[Mapping[str, str]] = {
    "PING": PING,
    **{f"CREATE_TABLES[{name}]": ddl for name, ddl in CREATE_TABLES.items()},
    "LABEL_COLUMNS": LABEL_COLUMNS,
    "ADD_LABEL_COLUMNS": ADD_LABEL_COLUMNS,
    **{f"insert[{name}]": insert(name, cols) for name, cols in INSERT_COLUMNS.items()},
    "ANALYTICS": ANALYTICS,
    "COSTS_BY_AGENT_MODEL": COSTS_BY_AGENT_MODEL,
    "USAGE_BY_LINE": USAGE_BY_LINE,
    "EVENT_USERS": EVENT_USERS,
    "DELETE_EVENTS": DELETE_EVENTS,
    "PENDING_MUTATIONS": PENDING_MUTATIONS,
    "TABLE_DIRECTORY_COLUMN": TABLE_DIRECTORY_COLUMN,
    **{f"TABLE_DIRECTORY[{name}]": sql for name, sql in TABLE_DIRECTORY.items()},
    "TABLE_DEFINITION": TABLE_DEFINITION,
    "TABLE_ROWS": TABLE_ROWS,
    "FREEZE": FREEZE,
    "ATTACH_PART": ATTACH_PART,
    "RENAME_TABLE": RENAME_TABLE,
    "DROP_TABLE": DROP_TABLE,
}
