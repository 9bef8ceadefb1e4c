"""Real Redis, PostgreSQL and ClickHouse servers for a test run.

One server per service per run, from the first provider of its chain that works
(url -> local -> embedded -> docker); a namespace of it per worker; a cheap reset per test.
"""

from __future__ import annotations

from apex_testkit._provisioning import clickhouse, postgres, redis
from apex_testkit._provisioning._chain import (
    PROVIDERS,
    Server,
    Service,
    ServiceUnavailable,
    obtain,
    parse_services,
)

SERVICES: dict[str, Service] = {
    service.name: service for service in (redis.SERVICE, postgres.SERVICE, clickhouse.SERVICE)
}

__all__ = [
    "PROVIDERS",
    "SERVICES",
    "Server",
    "Service",
    "ServiceUnavailable",
    "clickhouse",
    "obtain",
    "parse_services",
    "postgres",
    "redis",
]
