"""The platform's topology, declared once, as data.

For each service: the module that runs it, its protocol, the servers it needs (and the
setting naming each), the services it calls (and the setting naming each), and the third
parties it talks to (and the settings naming each of their values). `apex.stack` starts
the platform from this table, and the test kit wires every level from it: a new service
is one `Service` entry here plus its package, with no change to the kit.

The roles of a third party's settings (`issuer`, `base_url`, ...) are the contract with
whoever stands in for it: a real provider's sandbox, or the test kit's fake, which offers
a value for each role it knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = [
    "SERVERS",
    "SERVICES",
    "Service",
    "ThirdParty",
    "register",
    "servers_needed",
    "service",
    "unregister",
]

Protocol = Literal["http", "ws"]

# The servers a service may need, and the setting that names each (a URL).
SERVERS: Mapping[str, str] = MappingProxyType(
    {
        "postgres": "APEX_DATABASE_URL",
        "redis": "APEX_REDIS_URL",
        "clickhouse": "APEX_CLICKHOUSE_URL",
    }
)


@dataclass(frozen=True)
class ThirdParty:
    """A third party a service talks to: each role (`issuer`, `client_id`, ...) and the
    setting that carries its value; `url` is the role holding its address (what a fault
    proxy can stand in for)."""

    name: str
    settings: Mapping[str, str]
    url: str

    def __post_init__(self) -> None:
        if self.url not in self.settings:
            raise ValueError(f"third party {self.name}: url role {self.url!r} has no setting")

    @property
    def url_setting(self) -> str:
        """The setting holding this third party's address."""
        return self.settings[self.url]


@dataclass(frozen=True)
class Service:
    """One platform service: how it runs and what it is wired to."""

    name: str
    # Runs as `python -m <module> --fd N` (answering GET /healthz on that socket, and
    # GET /admin/config with the admin token: apex.stack compares what services share). In
    # process: `<module>.load_settings(env)`, then `create_app(settings)` (an ASGI app) or
    # `create_server(settings)` (its own server: `async with server.serving(sock=...)`,
    # `await server.shutdown()`). A service may also offer `await reset_memory(app)` (ASGI)
    # or `await reset_memory(server)` (its own server, serving): a running instance forgets
    # what it holds in memory (caches, modes, connections) as if it had just started, so a
    # test harness can keep one instance running between tests.
    module: str
    protocol: Protocol = "http"
    servers: tuple[str, ...] = ()
    # Service name -> the setting that tells this service where that one is.
    calls: Mapping[str, str] = field(default_factory=dict)
    third_parties: tuple[ThirdParty, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.servers) - set(SERVERS))
        if unknown:
            raise ValueError(
                f"service {self.name}: unknown server(s) {', '.join(unknown)}; "
                f"known: {', '.join(SERVERS)}"
            )

    def third_party(self, name: str) -> ThirdParty:
        """The third party `name` of this service (LookupError names the known ones)."""
        for party in self.third_parties:
            if party.name == name:
                return party
        known = ", ".join(p.name for p in self.third_parties) or "none"
        raise LookupError(f"{self.name} talks to no third party {name!r}; it talks to: {known}")


_IDP = ThirdParty(
    "oidc",
    {
        "issuer": "APEX_IDP_ISSUER",
        "client_id": "APEX_IDP_CLIENT_ID",
        "client_secret": "APEX_IDP_CLIENT_SECRET",
    },
    url="issuer",
)
_SAML = ThirdParty("saml", {"metadata_url": "APEX_SAML_IDP_METADATA_URL"}, url="metadata_url")
_SMTP = ThirdParty("smtp", {"smtp_url": "APEX_SMTP_URL"}, url="smtp_url")
_SMS = ThirdParty(
    "sms",
    {
        "base_url": "APEX_SMS_BASE_URL",
        "account_sid": "APEX_SMS_ACCOUNT_SID",
        "auth_token": "APEX_SMS_AUTH_TOKEN",
        "from_number": "APEX_SMS_FROM",
    },
    url="base_url",
)
_LLM = ThirdParty(
    "llm", {"base_url": "APEX_LLM_BASE_URL", "api_key": "APEX_LLM_API_KEY"}, url="base_url"
)
_PAYMENTS = ThirdParty(
    "payments",
    {
        "base_url": "APEX_PAYMENTS_BASE_URL",
        "api_key": "APEX_PAYMENTS_API_KEY",
        "webhook_secret": "APEX_PAYMENTS_WEBHOOK_SECRET",
    },
    url="base_url",
)
# apex.agents' fallback provider (optional for the service: unset, no failover).
_LLM_FALLBACK = ThirdParty(
    "llm_fallback",
    {"base_url": "APEX_LLM_FALLBACK_BASE_URL", "api_key": "APEX_LLM_FALLBACK_API_KEY"},
    url="base_url",
)

# In start order: a service comes after the services it calls.
_SERVICES: dict[str, Service] = {
    "auth": Service(
        "auth",
        module="apex.auth",
        servers=("postgres", "redis"),
        third_parties=(_IDP, _SAML, _SMTP, _SMS),
    ),
    "gateway": Service(
        "gateway",
        module="apex.gateway",
        protocol="ws",
        servers=("postgres", "redis"),
        calls={"auth": "APEX_AUTH_URL"},
    ),
    "data": Service(
        "data",
        module="apex.data",
        servers=("postgres", "redis", "clickhouse"),
        calls={"auth": "APEX_AUTH_URL"},
    ),
    "agents": Service(
        "agents",
        module="apex.agents",
        servers=("postgres", "redis"),
        calls={"auth": "APEX_AUTH_URL", "data": "APEX_DATA_URL"},
        third_parties=(_LLM, _LLM_FALLBACK),
    ),
    "billing": Service(
        "billing",
        module="apex.billing",
        servers=("postgres", "redis", "clickhouse"),
        calls={"auth": "APEX_AUTH_URL", "data": "APEX_DATA_URL"},
        third_parties=(_PAYMENTS,),
    ),
}

# Read-only view of the registered services, in start order.
SERVICES: Mapping[str, Service] = MappingProxyType(_SERVICES)


def service(name: str) -> Service:
    """The service `name`; LookupError names the known ones."""
    try:
        return _SERVICES[name]
    except KeyError:
        raise LookupError(f"no platform service {name!r}; known: {', '.join(_SERVICES)}") from None


def servers_needed(names: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The servers the services `names` (default: all) need, in SERVERS order."""
    wanted = {
        s for n in (names if names is not None else tuple(_SERVICES)) for s in service(n).servers
    }
    return tuple(s for s in SERVERS if s in wanted)


def register(entry: Service) -> None:
    """Add a service (after those it calls). For a platform extension, or a test of the
    wiring with a toy service; a name already taken is a ValueError."""
    if entry.name in _SERVICES:
        raise ValueError(f"a service named {entry.name!r} is already registered")
    missing = sorted(set(entry.calls) - set(_SERVICES))
    if missing:
        raise ValueError(
            f"service {entry.name} calls {', '.join(missing)}, which are not registered yet"
        )
    _SERVICES[entry.name] = entry


def unregister(name: str) -> None:
    """Remove a service registered with `register` (a toy service after its test)."""
    dependents = [s.name for s in _SERVICES.values() if name in s.calls]
    if dependents:
        raise ValueError(f"{name} is called by {', '.join(dependents)}")
    _SERVICES.pop(name, None)
