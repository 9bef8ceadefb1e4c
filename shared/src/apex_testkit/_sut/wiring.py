"""How one service instance is wired, read from the platform's topology (apex.topology):
its settings (the worker's server namespaces, the worker's fakes in place of its third
parties, the run's secrets), the services it calls, its URL scheme, and what a fault
proxy can stand in for. The kit keeps no table of Apex services of its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from apex import topology
from apex_testkit import _loop
from apex_testkit._level import Level
from apex_testkit._run import Run
from apex_testkit._worker import Worker

if TYPE_CHECKING:
    from apex_testkit._fakes import FakeClient

# The platform keys its Redis data under this prefix: each worker gets its own.
REDIS_PREFIX = "APEX_REDIS_PREFIX"
# L2/L3: the cheapest argon2id the platform accepts (production: 0.5 s a hash on this
# machine; every test user has one). The same algorithm, as Django's test runner keeps
# its hasher's; the production values have a unit test of their own (services/tests).
TEST_COSTS = {
    "APEX_PASSWORD_HASH_TIME_COST": "1",
    "APEX_PASSWORD_HASH_MEMORY_KIB": "8",
    "APEX_PASSWORD_HASH_PARALLELISM": "1",
}
# L2/L3: apex.agents' fixed waits that no test is about, short (production: an LLM retry
# without retry-after waits up to 0.1 s, then 0.2 s; a job of a tenant at its running
# limit is read again 0.2 s later). Their defaults have unit tests (services/tests); a
# test about one of them sets it itself.
TEST_WAITS = {
    "APEX_LLM_BACKOFF": "0.001/0.01",
    "APEX_TENANT_WAIT": "0.02",
}


def migrate(dsn: str) -> None:
    """Bring an empty database to the platform's newest schema (the template's init)."""
    from apex.data.migrations import migrate as apply  # noqa: PLC0415 - the SUT, on demand

    _loop.run(apply(dsn))


def run_secrets(run: Run) -> dict[str, str]:
    """Signing key and admin token shared by every service instance of this run, and the
    usage writers' credential (APEX_USAGE_TOKEN: apex.data and the services calling it)."""
    with run.lock("secrets"):
        stored = run.read("secrets")
        if stored is None:
            from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
            from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
            stored = {
                "jwt_private_key": pem,
                "admin_token": secrets.token_urlsafe(24),
                "usage_token": secrets.token_urlsafe(24),
            }
            run.store("secrets", stored)
    return {str(k): str(v) for k, v in stored.items()}


def _redis(worker: Worker) -> dict[str, str]:
    namespace = worker.redis_namespace()
    return {topology.SERVERS["redis"]: namespace.url, REDIS_PREFIX: namespace.prefix}


def _postgres(worker: Worker) -> dict[str, str]:
    return {topology.SERVERS["postgres"]: worker.postgres_database()}


def _clickhouse(worker: Worker) -> dict[str, str]:
    return {topology.SERVERS["clickhouse"]: worker.clickhouse_database()}


# The servers the kit provides (apex.topology.SERVERS names them): the worker's namespace
# of each, as settings.
_NAMESPACES: dict[str, Callable[[Worker], dict[str, str]]] = {
    "redis": _redis,
    "postgres": _postgres,
    "clickhouse": _clickhouse,
}


def server_env(worker: Worker, server: str) -> dict[str, str]:
    """The settings that point a service at this worker's namespace of `server`."""
    try:
        namespace = _NAMESPACES[server]
    except KeyError:
        raise LookupError(
            f"the platform needs a {server!r} server, which the test kit does not provide "
            f"(it provides: {', '.join(_NAMESPACES)})"
        ) from None
    return namespace(worker)


def third_party_env(worker: Worker, service: str, party: topology.ThirdParty) -> dict[str, str]:
    """The settings that point `service` at this worker's fake of `party` (L2/L3): the
    fake with the third party's name offers a value for each of its roles."""
    from apex_testkit._fakes import FAKES  # noqa: PLC0415 - servers and XML, on demand

    if party.name not in FAKES:
        raise LookupError(
            f"{service} talks to the third party {party.name!r}, and the test kit has no "
            f"fake of it (fakes: {', '.join(FAKES)}): add one to run {service} at L2/L3"
        )
    return party_env(service, party, worker.fake(party.name))


def party_env(service: str, party: topology.ThirdParty, fake: FakeClient) -> dict[str, str]:
    """The settings that point `service` at `fake` in the role of `party` (the fake's
    `settings()` offers a value for each role): L2/L3 fakes and L4 sandboxes alike."""
    offered = fake.settings()
    missing = sorted(set(party.settings) - set(offered))
    if missing:
        raise LookupError(
            f"the {party.name} fake offers no value for role(s) {', '.join(missing)} that "
            f"{service} reads (it offers: {', '.join(sorted(offered))})"
        )
    return {setting: offered[role] for role, setting in party.settings.items()}


def service_env(worker: Worker, service: str) -> dict[str, str]:
    """The APEX_* settings that point one service at this worker's namespaces and, at
    L2/L3, at the worker's fakes of its third parties."""
    entry = topology.service(service)
    shared = run_secrets(worker.run)
    env = {
        "APEX_JWT_PRIVATE_KEY": shared["jwt_private_key"],
        "APEX_ADMIN_TOKEN": shared["admin_token"],
        "APEX_LOG_LEVEL": "WARNING",
    }
    if service == "data" or "data" in entry.calls:
        # The usage writers' service credential: only apex.data and its callers hold it.
        env["APEX_USAGE_TOKEN"] = shared["usage_token"]
    for server in entry.servers:
        env |= server_env(worker, server)
    if worker.settings.level in (Level.L2, Level.L3):
        env |= TEST_COSTS | TEST_WAITS
        for party in entry.third_parties:
            env |= third_party_env(worker, service, party)
    return env


def calls(service: str) -> Mapping[str, str]:
    """The services `service` calls, each with the setting that tells it where."""
    return topology.service(service).calls


def module(service: str) -> str:
    """The module that runs `service` (`python -m <module>`, or imported at L2)."""
    return topology.service(service).module


def service_url(service: str, http_url: str) -> str:
    """The URL a client of `service` uses: ws:// for a WebSocket service."""
    if topology.service(service).protocol == "ws":
        return http_url.replace("http", "ws", 1)
    return http_url


def proxiable(service: str) -> dict[str, str]:
    """What an instance of `service` can reach through a fault proxy: each server, and
    each of its third parties (by name), with the setting holding its address."""
    parties = {party.name: party.url_setting for party in topology.service(service).third_parties}
    return {**topology.SERVERS, **parties}
