"""``python -m apex.gateway [--host H] [--port P] [--fd N]``.

SIGTERM or SIGINT drains the gateway (clients get a shutdown message and close 1012)
and the process exits 0. Exit 2: bad settings; exit 3: cannot start (Redis down,
port taken).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence

from redis.exceptions import RedisError

from apex.common.config import ConfigError
from apex.common.logging import configure_logging
from apex.common.serve import EXIT_CONFIG_ERROR, EXIT_STARTUP_FAILURE, parse_args
from apex.gateway.server import create_gateway
from apex.gateway.settings import GatewaySettings


async def _serve(
    settings: GatewaySettings, sock: socket.socket | None, host: str, port: int
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway = create_gateway(settings)
    async with gateway.serving(sock=sock, host=host, port=port):
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway until SIGTERM/SIGINT; return the exit code."""
    args = parse_args("gateway", argv)
    try:
        settings = GatewaySettings.from_env()
    except ConfigError as exc:
        print(f"apex.gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    configure_logging(settings.log_level)
    # websockets logs every plain HTTP response (health checks) at INFO.
    websockets_logger = logging.getLogger("websockets")
    websockets_logger.setLevel(max(logging.WARNING, websockets_logger.getEffectiveLevel()))
    sock: socket.socket | None = None
    if args.fd is not None:
        try:
            sock = socket.socket(fileno=args.fd)
        except OSError as exc:
            print(f"apex.gateway: --fd {args.fd} is not an open socket: {exc}", file=sys.stderr)
            return EXIT_CONFIG_ERROR
    try:
        asyncio.run(_serve(settings, sock, args.host, args.port))
    except (RedisError, OSError, TimeoutError) as exc:
        print(f"apex.gateway: cannot start: {exc!r}", file=sys.stderr)
        return EXIT_STARTUP_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
