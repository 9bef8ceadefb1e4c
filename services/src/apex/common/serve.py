"""``python -m apex.<service>``: run a service's ASGI app under uvicorn.

The process listens on ``--host/--port`` or on an already bound socket inherited as
``--fd N`` (how ``apex.stack`` starts services: the parent owns the port, so there is
no race between choosing a free port and binding it). SIGTERM and SIGINT shut the
server down gracefully and the process exits 0, so atexit hooks (coverage data) run.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
from collections.abc import Callable, Generator, Sequence
from typing import TypeVar

import uvicorn
from starlette.types import ASGIApp

from apex.common.config import ConfigError
from apex.common.logging import configure_logging
from apex.common.settings import ServiceSettings

__all__ = ["EXIT_CONFIG_ERROR", "EXIT_STARTUP_FAILURE", "main", "parse_args"]

EXIT_CONFIG_ERROR = 2
EXIT_STARTUP_FAILURE = 3

_Settings = TypeVar("_Settings", bound=ServiceSettings)


class _GracefulServer(uvicorn.Server):
    """A uvicorn server that does not re-raise the stop signal after shutting down.

    uvicorn re-raises a captured SIGTERM once it has shut down, so the process dies
    "by" the signal: atexit hooks (coverage's data file) never run and the parent
    sees -15. We want a plain exit 0 after a graceful stop.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        originals = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def parse_args(service: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``[--host H] [--port P] [--fd N]``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m apex.{service}", description=f"Run the apex.{service} service."
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument(
        "--fd", type=int, default=None, help="serve on this inherited, already bound socket"
    )
    return parser.parse_args(argv)


def main(
    service: str,
    create_app: Callable[[_Settings], ASGIApp],
    argv: Sequence[str] | None = None,
    *,
    load_settings: Callable[[], _Settings],
) -> int:
    """Serve ``create_app(load_settings())`` until SIGTERM/SIGINT; return the exit code.

    ``load_settings``: the service's own (its package's ``load_settings``), reading the
    process environment."""
    args = parse_args(service, argv)
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        app = create_app(settings)
    except ConfigError as exc:
        print(f"apex.{service}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR

    sockets: list[socket.socket] | None = None
    if args.fd is not None:
        try:
            # socket(fileno=...) detects the family of the inherited socket (uvicorn's own
            # fd support assumes AF_UNIX, which garbles the peer addresses of TCP clients).
            sockets = [socket.socket(fileno=args.fd)]
        except OSError as exc:
            print(f"apex.{service}: --fd {args.fd} is not an open socket: {exc}", file=sys.stderr)
            return EXIT_CONFIG_ERROR

    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        lifespan="on",
        log_config=None,
        access_log=True,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    server = _GracefulServer(config)
    try:
        server.run(sockets=sockets)
    except SystemExit as exc:
        # uvicorn exits with code 3 when the lifespan startup fails (database down...).
        return exc.code if isinstance(exc.code, int) else EXIT_STARTUP_FAILURE
    if not server.started:
        return EXIT_STARTUP_FAILURE
    return 0
