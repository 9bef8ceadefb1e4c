"""apex.data: the data layer, as a library and as a service.

The library: PostgreSQL pools (``pool``) and migrations, the ClickHouse client, tenant
isolation (``tenancy``), primary/replica routing (``router``), retries (``retry``), the
usage domain (``usage``). The service contract (apex.topology): ``load_settings(env)``,
then ``create_app(settings)`` gives the ASGI app; ``python -m apex.data`` runs it as a
process (``python -m apex.data migrate|rollback|status`` manages the schema). Its routes
are in ``routes``, its stores and error answers in ``service``, its metrics in
``metrics``, who is asking in ``callers``. The data flow (``flow``): the outbox relay
to ClickHouse (``outbox``), the Redis cache over several nodes (``cache``) and the
summary read through it (``summaries``), materialized views (``views``), cross-database
references (``references``), backups of both stores (``backup``, ClickHouse's half in
``clickhouse_backup``), deleting tenants' rows (``purge``); every ClickHouse statement is
in ``clickhouse_sql``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from apex.data.settings import Backoff, DataSettings

if TYPE_CHECKING:
    from apex.data.app import create_app
    from apex.data.backup import BackupError
    from apex.data.cache import Cache
    from apex.data.outbox import Relay, RelayPass
    from apex.data.pool import DatabasePool, PoolExhausted
    from apex.data.retry import DatabaseUnavailable, RetryExhausted
    from apex.data.router import Router

# Imported on first use: `python -m apex.data migrate` and apex.auth's pools (which
# import apex.data.pool) need none of the service (FastAPI, the ClickHouse driver), and
# importing it all cost about 1 s per process.
_EXPORTS: dict[str, str] = {
    "create_app": "apex.data.app",
    "BackupError": "apex.data.backup",
    "Cache": "apex.data.cache",
    "Relay": "apex.data.outbox",
    "RelayPass": "apex.data.outbox",
    "DatabasePool": "apex.data.pool",
    "PoolExhausted": "apex.data.pool",
    "DatabaseUnavailable": "apex.data.retry",
    "RetryExhausted": "apex.data.retry",
    "Router": "apex.data.router",
}


def load_settings(env: Mapping[str, str] | None = None) -> DataSettings:
    """The service's settings from `env` (default: the process environment)."""
    return DataSettings.from_env(env)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'apex.data' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Backoff",
    "BackupError",
    "Cache",
    "DataSettings",
    "DatabasePool",
    "DatabaseUnavailable",
    "PoolExhausted",
    "Relay",
    "RelayPass",
    "RetryExhausted",
    "Router",
    "create_app",
    "load_settings",
]
