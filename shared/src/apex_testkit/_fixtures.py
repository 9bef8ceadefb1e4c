"""Fixtures every test package builds on.

Session-scoped fixtures are synchronous (servers, processes, namespaces); anything
async is function-scoped and lives in the test's own event loop.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, cast

import pytest

from apex_testkit._faults import FaultProxy
from apex_testkit._level import OWN_PLATFORM, Level, require_level
from apex_testkit._provisioning import postgres, redis
from apex_testkit._provisioning.postgres_replica import PostgresPair, PostgresReplica
from apex_testkit._provisioning.redis_replica import RedisPair, RedisReplica
from apex_testkit._run import Run
from apex_testkit._sandboxes import fake_of
from apex_testkit._settings import RUN, SETTINGS, KitSettings
from apex_testkit._sut import Platform
from apex_testkit._sut.wiring import migrate, run_secrets
from apex_testkit._worker import Worker, worker_slot

if TYPE_CHECKING:
    from apex_testkit._fakes.llm import FakeLlm
    from apex_testkit._fakes.oidc import FakeIdp
    from apex_testkit._fakes.otel import FakeOtelCollector
    from apex_testkit._fakes.payments import FakePayments
    from apex_testkit._fakes.saml import FakeSamlIdp
    from apex_testkit._fakes.sms import FakeSms
    from apex_testkit._fakes.smtp import Mailbox


@pytest.fixture(scope="session")
def apex_settings(pytestconfig: pytest.Config) -> KitSettings:
    """Level, target and provider chains of this run."""
    return pytestconfig.stash[SETTINGS]


@pytest.fixture(scope="session")
def apex_run(pytestconfig: pytest.Config) -> Run:
    return pytestconfig.stash[RUN]


@pytest.fixture(scope="session")
def apex_worker(
    apex_run: Run, apex_settings: KitSettings, pytestconfig: pytest.Config
) -> Iterator[Worker]:
    """This process's namespaces in the run's servers (made on first use)."""
    worker = Worker(apex_run, apex_settings, migrate, worker_slot(pytestconfig))
    yield worker
    worker.close()


@pytest.fixture(scope="session")
def redis_namespace(apex_worker: Worker, apex_level: Level) -> redis.RedisNamespace:
    """This worker's Redis: `.url` (its own logical database) and `.prefix` for keys.
    L2/L3 only: at L4 the platform's Redis is the deployment's, not this one."""
    require_level(apex_level, OWN_PLATFORM, "redis_namespace (the platform's Redis)")
    return apex_worker.redis_namespace()


@pytest.fixture(scope="session")
def redis_nodes(apex_worker: Worker, apex_level: Level) -> tuple[redis.RedisNamespace, ...]:
    """This worker's namespace (as redis_namespace) on each of the run's three extra Redis
    servers, independent of the platform's and of each other. L2/L3 only."""
    require_level(apex_level, OWN_PLATFORM, "redis_nodes")
    return apex_worker.redis_nodes()


@pytest.fixture(scope="session")
def redis_replica(apex_worker: Worker, apex_level: Level) -> RedisReplica:
    """This worker's database on the run's Redis replica (REPLICAOF the platform's Redis):
    `.url` (read-only), `.primary_url` (redis_namespace's), `.prefix`, `.client()`,
    `.wait_synced()`, `.lag_bytes()`. Shared by the run's workers, so never promoted nor
    cut off: a test that needs that takes `redis_pair`. L2/L3 only."""
    require_level(apex_level, OWN_PLATFORM, "redis_replica (the platform's Redis replica)")
    return apex_worker.redis_replica()


@pytest.fixture
def redis_pair(apex_worker: Worker, apex_level: Level) -> Iterator[RedisPair]:
    """A Redis master and its replica of this test's own, for failover: `.promote()`
    (REPLICAOF NO ONE), `.stop_primary()`, `.kill_primary()`, `.link` (the FaultProxy the
    replica follows through), `.replica`. Stopped after the test. L2/L3 only."""
    require_level(apex_level, OWN_PLATFORM, "redis_pair")
    pair = apex_worker.redis_pair()
    yield pair
    pair.close()


@pytest.fixture(scope="session")
def postgres_database(apex_worker: Worker, apex_level: Level) -> str:
    """DSN of this worker's PostgreSQL database, migrated to the platform's newest schema.
    L2/L3 only: at L4 the platform's database is the deployment's, and a test that read
    this one would see none of its writes (and pass for the wrong reason)."""
    require_level(apex_level, OWN_PLATFORM, "postgres_database (the platform's database)")
    return apex_worker.postgres_database()


@pytest.fixture(scope="session")
def postgres_replica(apex_worker: Worker, apex_level: Level) -> PostgresReplica:
    """This worker's database on the run's streaming read replica: `.url` (read-only),
    `.primary_url` (this worker's postgres_database), `.wait_for_lsn(lsn)`,
    `.wait_caught_up()`, `.replay_lsn()`, `.lag_bytes()`. Shared by the run's workers, so
    never promoted nor paused: a test that needs that takes `postgres_pair`. L2/L3 only."""
    require_level(apex_level, OWN_PLATFORM, "postgres_replica (the platform's replica)")
    return apex_worker.postgres_replica()


@pytest.fixture
def postgres_pair(apex_worker: Worker, apex_level: Level) -> Iterator[PostgresPair]:
    """A primary and its streaming replica of this test's own, for failover: `.promote()`,
    `.stop_primary()`, `.kill_primary()`, `.link` (the FaultProxy replication goes
    through), `.replica` (LSNs, lag, waits), `.multi_host_url`. Stopped after the test.
    L2/L3 only."""
    require_level(apex_level, OWN_PLATFORM, "postgres_pair")
    pair = apex_worker.postgres_pair()
    yield pair
    pair.close()


@pytest.fixture
def empty_database(apex_worker: Worker) -> Iterator[str]:
    """DSN of a fresh, empty PostgreSQL database, dropped after the test."""
    with _own_database(apex_worker, migrated=False) as dsn:
        yield dsn


@pytest.fixture
def migrated_database(apex_worker: Worker, apex_level: Level) -> Iterator[str]:
    """DSN of a PostgreSQL database of this test's own at the platform's newest schema (a
    clone of the run's migrated template, as each worker's database is; no migration runs),
    dropped after the test. L2/L3 only."""
    require_level(apex_level, OWN_PLATFORM, "migrated_database")
    with _own_database(apex_worker, migrated=True) as dsn:
        yield dsn


@contextlib.contextmanager
def _own_database(worker: Worker, *, migrated: bool) -> Iterator[str]:
    if migrated:
        name, dsn = worker.migrated_clone()
        with worker.guard("postgres"):
            server = worker.server("postgres")
    else:
        with worker.guard("postgres"):
            server = worker.server("postgres")
            name = f"{worker.run.name}_e{worker.slot}_{secrets.token_hex(3)}"
            if not server.owned:
                worker.run.record(f"pg-db-{name}", "pg_database", url=server.url, name=name)
            dsn = postgres.create_database(server, name)
    yield dsn
    with worker.guard("postgres"):
        postgres.drop_database(server.url, name)


@pytest.fixture(scope="session")
def clickhouse_database(apex_worker: Worker, apex_level: Level) -> str:
    """URL of this worker's own ClickHouse database (L2/L3 only, as postgres_database)."""
    require_level(apex_level, OWN_PLATFORM, "clickhouse_database (the platform's ClickHouse)")
    return apex_worker.clickhouse_database()


@pytest.fixture
def clean_platform(platform: Platform) -> Platform:
    """The platform, with the state earlier tests left in this worker's namespaces gone."""
    platform.reset()
    return platform


@pytest.fixture(scope="session")
def jwt_signing_key(apex_run: Run, apex_level: Level) -> str:
    """PEM of the private key the platform signs tokens with (L2/L3: the run made it), so
    tests can forge correctly signed tokens with bad claims. A deployment keeps its own."""
    require_level(apex_level, OWN_PLATFORM, "jwt_signing_key")
    return run_secrets(apex_run)["jwt_private_key"]


@pytest.fixture(scope="session")
def admin_token(platform: Platform) -> str:
    """Bearer token of the platform's admin API."""
    return platform.admin_token


@pytest.fixture
def fake_idp(apex_worker: Worker) -> Iterator[FakeIdp]:
    """The OIDC provider the platform's auth uses, reset: `issuer`, `client_id`,
    `client_secret`, `login_as(sub, email, groups, tenant)`,
    `next_id_token(expired=..., ...)`, `fail_next_token(error)`, `rotate_keys()`,
    `requests`. L2/L3: the worker's fake; L4: the target's `[sandboxes.oidc]`."""
    with fake_of(apex_worker, "oidc") as fake:
        yield cast("FakeIdp", fake)


@pytest.fixture
def fake_saml_idp(apex_worker: Worker) -> Iterator[FakeSamlIdp]:
    """The SAML IdP, reset: `entity_id`, `metadata_url`, `sso_url`, `cert_pem`,
    `login_as(name_id, email, groups)`, `authn_requests`, `response_for(...)`.
    L4: the target's `[sandboxes.saml]`."""
    with fake_of(apex_worker, "saml") as fake:
        yield cast("FakeSamlIdp", fake)


@pytest.fixture
def mailbox(apex_worker: Worker) -> Iterator[Mailbox]:
    """The SMTP server, emptied: `messages`, `await wait_for(to=..., timeout=5)`,
    `fail_next(451|550, times=1)`, `smtp_url`. L4: the target's `[sandboxes.smtp]`."""
    with fake_of(apex_worker, "smtp") as fake:
        yield cast("Mailbox", fake)


@pytest.fixture
def fake_sms(apex_worker: Worker) -> Iterator[FakeSms]:
    """The Twilio-compatible SMS API, emptied: `messages`,
    `await wait_for(to=..., timeout=5)`, `fail_next(500|429)`, credentials.
    L4: the target's `[sandboxes.sms]`."""
    with fake_of(apex_worker, "sms") as fake:
        yield cast("FakeSms", fake)


@pytest.fixture
def fake_llm(apex_worker: Worker) -> Iterator[FakeLlm]:
    """The OpenAI-compatible LLM provider, reset: `base_url` (with /v1), `api_key`,
    `reply(*replies)`, `respond_with(function)`, `fail_next(429|500|503, retry_after=)`,
    `hang_next()`, `cut_next(after_chunks=)`, `malformed_next()`, `set_latency(...)`,
    `add_model(...)`, `calls`, `hanging`. L4: the target's `[sandboxes.llm]`."""
    with fake_of(apex_worker, "llm") as fake:
        yield cast("FakeLlm", fake)


@pytest.fixture
def fake_llm_fallback(apex_worker: Worker) -> Iterator[FakeLlm]:
    """The second OpenAI-compatible LLM provider (a `FakeLlm` of its own, reset), standing
    in for apex.agents' fallback provider (third party `llm_fallback`). L4: the target's
    `[sandboxes.llm_fallback]`."""
    with fake_of(apex_worker, "llm_fallback") as fake:
        yield cast("FakeLlm", fake)


@pytest.fixture
def fake_payments(apex_worker: Worker) -> Iterator[FakePayments]:
    """The Stripe-compatible payment provider, reset: `base_url`, `api_key`,
    `webhook_secret`, `add_endpoint(url)`, `hold_webhooks()`,
    `release_webhooks(order="reverse")`, `resend(event_id)`, `deliveries`,
    `fail_next(500|429)`, `set_dunning(days)`, `set_webhook_backoff(base, cap)`, `requests`;
    everything else through the official `stripe` SDK. L4: the target's
    `[sandboxes.payments]`."""
    with fake_of(apex_worker, "payments") as fake:
        yield cast("FakePayments", fake)


@pytest.fixture
def otel_collector(apex_worker: Worker) -> Iterator[FakeOtelCollector]:
    """The OpenTelemetry collector (OTLP/HTTP traces), reset: `endpoint` (the `/v1/traces`
    URL an exporter posts to), `spans`, `await wait_for_spans(trace_id=, name=, count=)`.
    L2/L3 only (no L4 sandbox yet)."""
    with fake_of(apex_worker, "otel") as fake:
        yield cast("FakeOtelCollector", fake)


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[str], FaultProxy]]:
    """A factory: `fault_proxy(upstream_url)` starts a FaultProxy to it (use
    `proxy.url_for(upstream_url)` as the new URL); every one is stopped after the test."""
    started: list[FaultProxy] = []

    def start(upstream: str) -> FaultProxy:
        proxy = FaultProxy(upstream, name=f"fixture-{len(started)}").start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
