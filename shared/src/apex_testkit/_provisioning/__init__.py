"""Real Redis, PostgreSQL and ClickHouse servers for a test run.

One server per service per run, from the first provider of its chain that works
(url -> local -> embedded -> docker); a namespace of it per worker; a cheap reset per test.
Replicas and extra nodes are made from the run's servers, by the provider of each, the
same way: once per run, by the first process that needs them.
"""

from __future__ import annotations

from apex_testkit._provisioning import (
    clickhouse,
    postgres,
    postgres_replica,
    redis,
    redis_replica,
)
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
# Servers made from one of SERVICES (a replica from its primary), by the provider that
# supplied it: not in --services.
DERIVED: dict[str, Service] = {
    service.name: service
    for service in (postgres_replica.REPLICA, redis_replica.REPLICA, *redis_replica.NODE_SERVICES)
}
# Every kind of server a run may have, by name.
SERVERS: dict[str, Service] = SERVICES | DERIVED

__all__ = [
    "DERIVED",
    "PROVIDERS",
    "SERVERS",
    "SERVICES",
    "Server",
    "Service",
    "ServiceUnavailable",
    "clickhouse",
    "obtain",
    "parse_services",
    "postgres",
    "postgres_replica",
    "redis",
    "redis_replica",
]
