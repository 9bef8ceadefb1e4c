"""``python -m apex.stack --manifest FILE [--host H] [--auth-port P]``.

Starts every service as a child process on a socket the stack binds itself, waits
until each answers /healthz, writes the manifest, and runs until SIGTERM/SIGINT;
then it stops the children (SIGTERM, SIGKILL after a grace period) and exits 0.
Migrations are not run here: the caller runs ``python -m apex.data migrate``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from apex.common.config import ConfigError, Settings
from apex.stack.manifest import render_manifest, write_manifest
from apex.stack.supervisor import Child, StackError, bind_listener, spawn_service

SERVICES = ("auth", "gateway")
# Services whose manifest URL is not http:// (the gateway's /healthz is plain HTTP on
# the same port, so the stack still checks it over http://).
URL_SCHEMES = {"gateway": "ws"}
# The gateway drains for up to APEX_WS_DRAIN_TIMEOUT (10 s by default) plus its own margin.
STOP_GRACE_SECONDS = 20.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apex.stack", description="Run the Apex services locally."
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface the services listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--manifest", type=Path, required=True, help="where to write the TOML manifest once healthy"
    )
    for service in SERVICES:
        parser.add_argument(
            f"--{service}-port",
            type=int,
            default=0,
            metavar="P",
            help=f"port of apex.{service} (default 0: any free)",
        )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for every /healthz",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stack; return the exit code (0: stopped on request, 1: failure, 2: bad settings)."""
    args = _parser().parse_args(argv)
    try:
        # The children read the same environment; failing here gives one clear message
        # instead of one per child.
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"apex.stack: configuration error: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    children: list[Child] = []
    try:
        for service in SERVICES:
            listener = bind_listener(args.host, getattr(args, f"{service}_port"))
            try:
                children.append(spawn_service(service, listener, env=_child_env(service, children)))
            finally:
                # The child holds its own copy. Ours would keep accepting (and
                # hanging) connections if the child died.
                listener.close()
        # Output threads start only now: forking (preexec_fn) while other threads
        # run can deadlock the child.
        for child in children:
            child.start_output_pump()

        deadline = time.monotonic() + args.startup_timeout
        for child in children:
            if not child.wait_healthy(deadline, stop.is_set):
                return 0
        write_manifest(
            args.manifest,
            render_manifest(
                {child.name: _public_url(child) for child in children}, settings.admin_token
            ),
        )
        urls = ", ".join(f"{child.name} at {child.url}" for child in children)
        print(f"apex.stack: ready: {urls}; manifest {args.manifest}", file=sys.stderr, flush=True)

        while not stop.wait(0.2):
            for child in children:
                if not child.alive():
                    raise StackError(
                        f"apex.{child.name} exited unexpectedly with code "
                        f"{child.process.returncode}; "
                        f"its last output:\n{child.tail()}"
                    )
        return 0
    except StackError as exc:
        print(f"apex.stack: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        _stop_all(children)


def _child_env(service: str, children: Sequence[Child]) -> dict[str, str] | None:
    """The gateway verifies tokens with the JWKS of the auth child started before it."""
    auth = next((child for child in children if child.name == "auth"), None)
    if service != "gateway" or auth is None:
        return None
    return {**os.environ, "APEX_AUTH_URL": auth.url}


def _public_url(child: Child) -> str:
    scheme = URL_SCHEMES.get(child.name)
    return child.url.replace("http://", f"{scheme}://", 1) if scheme else child.url


def _stop_all(children: Sequence[Child]) -> None:
    for child in children:
        child.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(
                f"apex.stack: apex.{child.name} ignored SIGTERM for "
                f"{STOP_GRACE_SECONDS:.0f} s: killing it",
                file=sys.stderr,
            )
            child.kill()
            child.process.wait()
        child.tail()  # lets the output pump drain
        if child.process.returncode != 0:
            print(
                f"apex.stack: apex.{child.name} exited with code {child.process.returncode}",
                file=sys.stderr,
            )


if __name__ == "__main__":
    sys.exit(main())
