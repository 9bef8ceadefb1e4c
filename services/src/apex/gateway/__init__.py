"""apex.gateway: the platform's WebSocket gateway (on the ``websockets`` library).

The service contract (apex.topology): ``load_settings(env)``, then
``create_server(settings)`` gives a :class:`Gateway`; ``async with gateway.serving() as
server`` serves WebSocket (``/ws``) and HTTP (``/healthz``, ``/metrics``, ``/instances``,
``/admin/config``) on one port; ``python -m apex.gateway`` runs it as a process.
``create_gateway`` is the same function under the name the gateway's contract gives it.

Where things are: ``server`` (wiring, lifecycle, drain), ``handshake`` (HTTP routes and
the upgrade), ``handler`` (one connection and its messages), ``messages`` (a handler
per message type), ``pubsub`` (what other instances and apex.auth announce),
``heartbeat`` (registration, leader election, the session sweep), ``feeds`` and
``fanout`` (ordered delivery from the per-user logs), ``registry`` (instances and tabs in
Redis), ``directory`` (who may be addressed: users and tenants), ``database`` (the pool
behind the postgres breaker), ``loops`` (background loops that stop on cancel).
"""

from collections.abc import Mapping

from apex.gateway.routing import pick_instance
from apex.gateway.server import Gateway, RunningServer, create_gateway
from apex.gateway.settings import GatewaySettings

# The service contract's name (apex.topology) for create_gateway.
create_server = create_gateway


def load_settings(env: Mapping[str, str] | None = None) -> GatewaySettings:
    """The gateway's settings from `env` (default: the process environment)."""
    return GatewaySettings.from_env(env)


async def reset_memory(server: Gateway) -> None:
    """Make a serving gateway forget what it holds in memory, as if it had just started
    (:meth:`Gateway.reset_memory`): the service contract's hook (apex.topology) for a test
    harness that keeps one instance running between tests."""
    await server.reset_memory()


__all__ = [
    "Gateway",
    "GatewaySettings",
    "RunningServer",
    "create_gateway",
    "create_server",
    "load_settings",
    "pick_instance",
    "reset_memory",
]
