"""apex.gateway: the platform's WebSocket gateway (on the ``websockets`` library).

``create_gateway(GatewaySettings.from_env())`` then ``async with gateway.serving() as
server`` serves WebSocket (``/ws``) and HTTP (``/healthz``, ``/metrics``, ``/instances``)
on one port; ``python -m apex.gateway`` runs it as a process.
"""

from apex.gateway.routing import pick_instance
from apex.gateway.server import Gateway, RunningServer, create_gateway
from apex.gateway.settings import GatewaySettings

__all__ = ["Gateway", "GatewaySettings", "RunningServer", "create_gateway", "pick_instance"]
