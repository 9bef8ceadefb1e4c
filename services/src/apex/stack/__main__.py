"""``python -m apex.stack --manifest FILE [--host H] [--<service>-port P ...]``.

Starts every service of :mod:`apex.topology`, in its order, as a child process on a
socket the stack binds itself, waits until each answers /healthz, checks that they
resolved the shared settings alike (:mod:`apex.stack.consistency`), writes the manifest,
and runs until SIGINT or SIGTERM; then it stops the children (SIGTERM, SIGKILL after a
grace period), waits for them and exits 0. Migrations are not run here: the caller
runs ``python -m apex.data migrate``.
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
from apex.stack import plan
from apex.stack.consistency import ConfigMismatch, check_services
from apex.stack.manifest import render_manifest, write_manifest
from apex.stack.supervisor import Child, StackError, bind_listener, spawn_service
from apex.topology import Service

# The gateway drains for up to APEX_WS_DRAIN_TIMEOUT (10 s by default) plus its own margin.
STOP_GRACE_SECONDS = 20.0
WATCH_INTERVAL_SECONDS = 0.2


def _port_dest(service: Service) -> str:
    return f"port_of_{service.name}"


def build_parser() -> argparse.ArgumentParser:
    """The command line, with a port option per service of the topology."""
    parser = argparse.ArgumentParser(
        prog="python -m apex.stack", description="Run the Apex services locally."
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface the services listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--manifest", type=Path, required=True, help="where to write the TOML manifest once healthy"
    )
    for service in plan.services():
        parser.add_argument(
            plan.port_option(service),
            dest=_port_dest(service),
            type=int,
            default=0,
            metavar="P",
            help=f"port of {service.module} (default 0: any free)",
        )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for every /healthz",
    )
    return parser


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set ``stop``; the main loop then stops the children.

    Both handlers are installed explicitly: a job started in the background of a shell
    script starts with SIGINT ignored (so Python installs no KeyboardInterrupt handler),
    and Python has no SIGTERM handler of its own.
    """

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stack; return the exit code (0: stopped on request, 1: failure, 2: bad settings)."""
    stop = threading.Event()
    # First of all: a stop request during start-up must not be lost.
    _stop_on_signals(stop)
    args = build_parser().parse_args(argv)
    try:
        # The children read the same environment; failing here gives one clear message
        # instead of one per child.
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"apex.stack: configuration error: {exc}", file=sys.stderr)
        return 2

    children: list[Child] = []
    try:
        urls = _start(args, children)
        deadline = time.monotonic() + args.startup_timeout
        for child in children:
            if not child.wait_healthy(deadline, stop.is_set):
                return 0
        _check_configuration(children, settings.admin_token)
        write_manifest(args.manifest, render_manifest(urls, settings.admin_token))
        running = ", ".join(
            f"{child.name} at {urls[child.name]} (pid {child.process.pid})" for child in children
        )
        print(
            f"apex.stack: ready: {running}; manifest {args.manifest}", file=sys.stderr, flush=True
        )
        _watch(children, stop)
        return 0
    except StackError as exc:
        print(f"apex.stack: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        _stop_all(children)


def _start(args: argparse.Namespace, children: list[Child]) -> dict[str, str]:
    """Spawn every service in topology order (appending to ``children`` as they start);
    return each one's public URL."""
    urls: dict[str, str] = {}
    for service in plan.services():
        listener = bind_listener(args.host, getattr(args, _port_dest(service)))
        try:
            env = plan.child_env(service, urls, os.environ)
            children.append(spawn_service(service, listener, env=env))
        finally:
            # The child holds its own copy. Ours would keep accepting (and hanging)
            # connections if the child died.
            listener.close()
        urls[service.name] = plan.public_url(service, children[-1].url)
    # Output threads start only now: forking (preexec_fn) while other threads run can
    # deadlock the child.
    for child in children:
        child.start_output_pump()
    return urls


def _check_configuration(children: Sequence[Child], admin_token: str | None) -> None:
    """StackError unless the healthy children resolved the shared settings alike (each
    parses the one environment with its own code: a default or a parser of its own
    could differ). Without an admin token there is no way to ask: said, not checked."""
    if admin_token is None:
        print(
            "apex.stack: APEX_ADMIN_TOKEN is unset: the services' shared settings are not compared",
            file=sys.stderr,
        )
        return
    try:
        check_services({child.name: child.url for child in children}, admin_token)
    except ConfigMismatch as exc:
        raise StackError(str(exc)) from None


def _watch(children: Sequence[Child], stop: threading.Event) -> None:
    """Until a stop is requested; StackError if a child exits on its own first."""
    while not stop.wait(WATCH_INTERVAL_SECONDS):
        for child in children:
            # A child that exits because the stop is under way is no failure.
            if not child.alive() and not stop.is_set():
                raise StackError(
                    f"{child.service.module} exited unexpectedly with code "
                    f"{child.process.returncode}; its last output:\n{child.tail()}"
                )


def _stop_all(children: Sequence[Child]) -> None:
    """SIGTERM every child, SIGKILL those still running after the grace; wait for all."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(
                f"apex.stack: {child.service.module} ignored SIGTERM for "
                f"{STOP_GRACE_SECONDS:.0f} s: killing it",
                file=sys.stderr,
            )
            child.kill()
            child.process.wait()
        child.tail()  # lets the output pump drain
        if child.process.returncode != 0:
            print(
                f"apex.stack: {child.service.module} exited with code {child.process.returncode}",
                file=sys.stderr,
            )


if __name__ == "__main__":
    sys.exit(main())
