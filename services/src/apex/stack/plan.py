"""What ``apex.stack`` starts, read from :mod:`apex.topology`: nothing here names a service.

The start order is the topology's; each service gets a ``--<name>-port`` option; a
child's environment is the stack's plus, for every service it calls, the setting
naming that service (``Service.calls``) set to the URL the manifest lists for it; and
the manifest URL has the scheme of the service's protocol (``ws`` -> ``ws://``).
"""

from __future__ import annotations

from collections.abc import Mapping

from apex import topology
from apex.stack.supervisor import StackError
from apex.topology import Service

__all__ = ["child_env", "port_option", "public_url", "services"]


def services() -> tuple[Service, ...]:
    """The services to start, in start order (each after the services it calls)."""
    return tuple(topology.SERVICES.values())


def port_option(service: Service) -> str:
    """The command-line option that sets the service's port: ``--<name>-port``."""
    return f"--{service.name}-port"


def public_url(service: Service, http_url: str) -> str:
    """The URL clients use: ``http_url`` with the scheme of the service's protocol.

    Every service answers ``GET /healthz`` over plain HTTP on its port (a WebSocket
    service too), so the stack itself always checks ``http_url``.
    """
    scheme, sep, rest = http_url.partition("://")
    if scheme != "http" or not sep:
        raise ValueError(f"not an http:// URL: {http_url!r}")
    return f"{service.protocol}://{rest}"


def child_env(
    service: Service, started: Mapping[str, str], base: Mapping[str, str]
) -> dict[str, str]:
    """``base`` plus where each service ``service`` calls is: its setting -> its public URL.

    ``started`` maps the names of the services already running to their public URLs.
    """
    missing = sorted(set(service.calls) - set(started))
    if missing:
        # The topology's order puts callees first, so this is a bug, not bad input.
        raise StackError(
            f"apex.stack: {service.name} calls {', '.join(missing)}, which did not start first"
        )
    return {**base, **{setting: started[name] for name, setting in service.calls.items()}}
