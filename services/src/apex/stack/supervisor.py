"""Child service processes of ``apex.stack``: spawn on a pre-bound socket, wait, stop.

The stack binds each service's listening socket itself and hands it down with
``pass_fds``, so a port chosen as 0 is known before the child starts and no other
process can take it in between. Children get PR_SET_PDEATHSIG: if the stack dies,
even by SIGKILL, the kernel sends them SIGTERM, so they never outlive it. Each child
runs in its own process group: a terminal's Ctrl-C (sent to the whole foreground group)
reaches only the stack, which then stops its children itself.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Final

from apex.topology import Service

__all__ = ["Child", "StackError", "bind_listener", "spawn_service"]

PR_SET_PDEATHSIG: Final = 1
TAIL_LINES: Final = 60
POLL_INTERVAL_SECONDS: Final = 0.05


class StackError(RuntimeError):
    """A service could not be started or became unhealthy."""


def bind_listener(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: an ephemeral port), inheritable by children."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise StackError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.set_inheritable(True)
    return sock


def _pdeathsig_hook() -> Callable[[], None]:
    """A preexec_fn that asks the kernel to SIGTERM the child when the stack dies."""
    # Resolve prctl before forking: after fork only the bare call should run.
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def hook() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The stack may have died between fork and prctl; then no signal would come.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


class Child:
    """One running service process and the tail of its output."""

    def __init__(self, service: Service, process: subprocess.Popen[bytes], url: str) -> None:
        self.service = service
        self.name = service.name
        self.process = process
        # Where it serves, over plain HTTP (/healthz is HTTP whatever its protocol).
        self.url = url
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._reader: threading.Thread | None = None

    def start_output_pump(self) -> None:
        """Copy the child's output to our stderr (prefixed) and keep its last lines."""
        stream = self.process.stdout
        if stream is None:  # pragma: no cover - spawn_service always pipes stdout
            return
        self._reader = threading.Thread(
            target=self._pump, args=(stream,), name=f"{self.name}-output", daemon=True
        )
        self._reader.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            self._tail.append(line)
            sys.stderr.write(f"[{self.name}] {line}\n")
        stream.close()

    def tail(self) -> str:
        """The last lines the child wrote (stdout and stderr)."""
        if self._reader is not None and not self.alive():
            # Let the pump drain what the exited child wrote last.
            self._reader.join(timeout=1.0)
        return "\n".join(self._tail) or "(no output)"

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def wait_healthy(self, deadline: float, cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Poll ``GET /healthz`` until it answers 200 (True) or ``cancelled()`` (False).

        StackError if the child exits or the deadline passes first.
        """
        last_error = "no answer yet"
        while not cancelled():
            if not self.alive():
                raise StackError(
                    f"{self.service.module} exited with code {self.process.returncode} "
                    "before becoming healthy; "
                    f"its last output:\n{self.tail()}"
                )
            # A short timeout: the kernel queues our connection on the pre-bound socket
            # until the child serves, and we want to notice a dying child promptly.
            status, detail = _get_health(
                self.url, timeout=max(0.05, min(0.5, deadline - time.monotonic()))
            )
            if status == 200:
                return True
            last_error = f"HTTP {status}: {detail}" if status else detail
            if time.monotonic() >= deadline:
                raise StackError(
                    f"{self.service.module} at {self.url} was not healthy in time "
                    f"(last check: {last_error}); "
                    f"its last output:\n{self.tail()}"
                )
            time.sleep(POLL_INTERVAL_SECONDS)
        return False

    def terminate(self) -> None:
        """Ask the child to stop (SIGTERM: graceful shutdown)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()

    def kill(self) -> None:
        """Stop the child now (SIGKILL)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


def _get_health(base_url: str, *, timeout: float) -> tuple[int, str]:
    host_port = base_url.removeprefix("http://")
    host, _, port = host_port.rpartition(":")
    connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        return response.status, response.read(500).decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()


def spawn_service(
    service: Service, listener: socket.socket, env: Mapping[str, str] | None = None
) -> Child:
    """Start ``python -m <service.module> --fd N`` serving on ``listener``."""
    fd = listener.fileno()
    host, port = listener.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    # The command is this interpreter and a module named by the topology, not outside input.
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", service.module, "--fd", str(fd)],
        pass_fds=(fd,),
        preexec_fn=_pdeathsig_hook(),
        process_group=0,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None,
    )
    return Child(service, process, f"http://{url_host}:{port}")
