"""apex.gateway: the platform's WebSocket gateway (on the ``websockets`` library).

The service contract (apex.topology): ``load_settings(env)``, then
``create_server(settings)`` gives a :class:`Gateway`; ``async with gateway.serving() as
server`` serves WebSocket (``/ws``) and HTTP (``/healthz``, ``/metrics``, ``/instances``)
on one port; ``python -m apex.gateway`` runs it as a process.
"""

from collections.abc import Mapping

from apex.gateway.routing import pick_instance
from apex.gateway.server import Gateway, RunningServer
from apex.gateway.server import create_gateway as create_server
from apex.gateway.settings import GatewaySettings


def load_settings(env: Mapping[str, str] | None = None) -> GatewaySettings:
    """The gateway's settings from `env` (default: the process environment)."""
    return GatewaySettings.from_env(env)


__all__ = [
    "Gateway",
    "GatewaySettings",
    "RunningServer",
    "create_server",
    "load_settings",
    "pick_instance",
]
