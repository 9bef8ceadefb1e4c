"""The provider chain: url -> local -> embedded -> docker, first that works wins."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from apex_testkit._run import Run

PROVIDERS = ("url", "local", "embedded", "docker")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class Unavailable(Exception):
    """A provider cannot supply the service here; the message says why."""


class ServiceUnavailable(RuntimeError):
    """No provider could supply a service: names each one tried, why, and the fix."""


@dataclass(frozen=True)
class Server:
    """A running server this run may use."""

    service: str
    provider: str
    url: str
    version: str = ""
    ready_seconds: float = 0.0
    # True when the run started it (local, embedded, docker): it may flush whole
    # logical databases; False for an external server shared with others (url).
    owned: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)


Launcher = Callable[[Run], Server]


@dataclass(frozen=True)
class Service:
    """How to obtain one kind of server from each provider."""

    name: str
    title: str
    url_env: str
    fix: str
    providers: Mapping[str, Launcher]


def parse_services(spec: str) -> dict[str, tuple[str, ...]]:
    """Parse `redis=docker,postgres=local|embedded` into provider chains per service."""
    chains: dict[str, tuple[str, ...]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        chain = tuple(p.strip() for p in value.split("|") if p.strip())
        unknown = [p for p in chain if p not in PROVIDERS]
        if not sep or not chain or unknown:
            raise ValueError(
                f"bad --services entry {item!r}: expected SERVICE=PROVIDER[|PROVIDER...] "
                f"with providers from {', '.join(PROVIDERS)}"
            )
        chains[name.strip()] = chain
    return chains


def obtain(run: Run, service: Service, chain: tuple[str, ...] = PROVIDERS) -> Server:
    """The run's one server of `service`: started by the first process that needs it.

    A failure is remembered too, so that every worker fails fast with the same message
    instead of trying every provider again.
    """
    key = f"server-{service.name}"
    with run.lock(key):
        stored = run.read(key)
        if stored is None:
            stored = _provide(run, service, chain)
            run.store(key, stored)
    if "error" in stored:
        raise ServiceUnavailable(stored["error"])
    return Server(**stored)


def _provide(run: Run, service: Service, chain: tuple[str, ...]) -> dict[str, Any]:
    tried = []
    for provider in chain:
        started = time.monotonic()
        try:
            server = service.providers[provider](run)
        except Unavailable as exc:
            tried.append(f"  - {provider}: {exc}")
            continue
        ready = round(time.monotonic() - started, 3)
        return asdict(server) | {"ready_seconds": ready}
    return {"error": _explain(service, chain, tried)}


def _explain(service: Service, chain: tuple[str, ...], tried: list[str]) -> str:
    lines = [
        f"No {service.title} server for this test run. Providers tried, in order:",
        *tried,
        f"Fix: {service.fix}",
        f"  or point {service.url_env} at a running server,",
        "  or start a Docker engine (the docker provider uses testcontainers).",
    ]
    if chain != PROVIDERS:
        lines.append(f"(chain restricted to {'|'.join(chain)} by --services/APEX_TEST_SERVICES)")
    return "\n".join(lines)


def external_url(service: Service) -> str:
    """The url provider's input, or Unavailable naming the variable."""
    url = os.environ.get(service.url_env, "").strip()
    if not url:
        raise Unavailable(f"{service.url_env} is not set")
    return url


def safe_identifier(name: str) -> str:
    """`name`, if it can go unquoted into SQL as a database name (the kit makes them)."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a safe database name: {name!r}")
    return name
