"""L3 warm spares: a process that has already imported a service, waiting for its settings,
forked from a template interpreter that imported the service once.

Starting `python -m apex.agents` costs 1.5-2 s before /healthz answers, most of it
imports (the openai SDK's types, FastAPI, redis, asyncpg), and an L3 run starts about 350
such processes, one per instance and settings. Spawned spares hid that wait but not its
cost: each spare's imports took 0.4-0.9 s of CPU, about a third of an `nox -s l3` that was
CPU-bound on two cores. Now a worker spawns one template per service module: it imports
the service once, then forks a spare per request (a few milliseconds; `gc.freeze` keeps
the imported objects' pages shared). A spare blocks reading one JSON document from a
pipe (the settings); given them, it becomes `python -m <module> --fd N` in the same
interpreter (`runpy`, with the environment replaced), so only the service's own start is
left. The interpreter runs no kit code: the template's program is the lines of
`_PROGRAM`, and the service sees the environment a plain start would have given it.

A spare is a process of its own: its own PID and session, its own log, signalled and
stopped by PID like any other. It dies with the template (PR_SET_PDEATHSIG), which dies
with the worker, so a killed worker leaves none behind. The template never reaps the
spares it forked: an ended one stays a zombie, whose exit status the kit reads from /proc
(`ProcessRef.status`), until the template ends after the worker's last instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from apex_testkit._processes import ProcessRef, listening_socket, spawn
from apex_testkit._run import Run, record_process

# How long a spare's first use waits for its template's imports (a loaded machine: a few
# seconds; a hung import: the start falls back to a plain one, which says why).
_IMPORT_TIMEOUT: Final = 60.0

# Run with `python -c`: importing the kit would load pytest and more into the service.
# argv: the module, the control socket's fd. Each request on the control socket (one
# SEQPACKET message: its id, with the fds of the spare's listening socket, its orders pipe
# and its log) is answered with {"id": ..., "pid": ...} once forked.
_PROGRAM: Final = """\
import ctypes, gc, importlib, json, os, runpy, signal, socket, sys, threading, warnings
module, control = sys.argv[1], socket.socket(fileno=int(sys.argv[2]))
service = importlib.import_module(module)
if hasattr(service, "__path__"):  # a package: `python -m` runs its __main__
    importlib.import_module(module + ".__main__")
getattr(service, "create_app", None) or getattr(service, "create_server", None)
if threading.active_count() != 1:  # a thread does not survive a fork
    sys.exit(f"{module} started threads as it was imported: its spares cannot be forked")
gc.freeze()  # the imported objects' pages stay shared with the spares
template = os.getpid()
while True:
    request, fds, _, _ = socket.recv_fds(control, 256, 3)
    if not request:  # the kit closed its end: no more spares
        sys.exit(0)
    listener, orders, log = fds
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        control.send(json.dumps({"id": request.decode(), "pid": pid}).encode())
        continue
    control.close()
    os.setsid()
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: die with the template
    if os.getppid() != template:  # it died before the line above
        os._exit(1)
    nothing = os.open(os.devnull, os.O_RDONLY)
    for fd, to in ((nothing, 0), (log, 1), (log, 2)):
        os.dup2(fd, to)
    os.close(nothing)
    os.close(log)
    with os.fdopen(orders, encoding="utf-8") as pipe:
        raw = pipe.read()
    if not raw:
        sys.exit(0)
    os.environ.clear()
    os.environ.update(json.loads(raw))
    sys.argv = [module, "--fd", str(listener)]
    # runpy warns that the __main__ imported above is in sys.modules: it runs it afresh.
    warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning, "runpy")
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    sys.exit(0)
"""


class SpareTemplate:
    """A spawned interpreter that imports `module` once, then forks warm spares of it on
    request (`fork`); `close` ends it once the worker's instances of `module` are gone."""

    def __init__(self, run: Run, module: str, name: str) -> None:
        self.run, self.module, self.name = run, module, name
        self.log: Path = run.path / f"{name}.log"
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-c", _PROGRAM, module, str(theirs.fileno())]
        try:
            process = spawn(
                argv,
                log=self.log,
                env=dict(os.environ),
                pass_fds=[theirs.fileno()],
                die_with_parent=True,
            )
        except BaseException:
            self._control.close()
            raise
        finally:
            theirs.close()
        self.ref: ProcessRef = record_process(run, name, process.pid, grace=10.0)
        self._process = process
        # Spares are asked for from the worker's thread and taken from others (a test's own
        # instance starts in a thread): one reader of the answers at a time.
        self._lock = threading.Lock()
        self._pids: dict[str, int] = {}
        self._requests = 0

    def fork(self, name: str) -> WarmSpare:
        """A new spare of the module named `name`: its imports are the template's, so it is
        ready as soon as the template has finished them."""
        self._requests += 1
        return WarmSpare(self, name, str(self._requests))

    def request(self, request: str, fds: list[int]) -> bool:
        """Ask for a fork with these fds (listening socket, orders pipe, log); False when the
        template has ended."""
        try:
            socket.send_fds(self._control, [request.encode()], fds)
        except OSError:
            return False
        return True

    def pid_of(self, request: str, timeout: float = _IMPORT_TIMEOUT) -> int | None:
        """The PID of the spare forked for `request`, once the template has forked it; None
        when the template ended (its imports failed: its log says why) or took longer
        than `timeout`."""
        with self._lock:
            self._control.settimeout(timeout)
            while request not in self._pids:
                try:
                    answer = self._control.recv(256)
                except OSError:  # TimeoutError too
                    return None
                if not answer:
                    return None
                told = json.loads(answer)
                self._pids[told["id"]] = int(told["pid"])
            return self._pids.pop(request)

    def close(self) -> None:
        """End it: the end of its control socket, so it exits by itself (SIGTERM after 10 s).
        Spares still running die with it: close it after the instances it forked."""
        self._control.close()
        try:
            self._process.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            self.ref.stop(grace=5.0)
            self._process.wait()
        self.run.forget(self.name)


class WarmSpare:
    """A process of its template's module on its own loopback socket (`url`), forked and
    waiting until `take` gives it its settings; `discard` ends it unused."""

    def __init__(self, template: SpareTemplate, name: str, request: str) -> None:
        self.template, self.name, self._request = template, name, request
        self.module = template.module
        self.log: Path = template.run.path / f"{name}.log"
        sock = listening_socket()
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        orders, self._orders = os.pipe()
        log = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._asked = template.request(request, [sock.fileno(), orders, log])
        finally:
            os.close(orders)
            os.close(log)
            sock.close()
        self.ref: ProcessRef | None = None
        self._pid: int | None = None

    @property
    def pid(self) -> int | None:
        """Its process id, once its template has forked it (waits for the template's
        imports); None when the template ended without forking it."""
        if self._pid is None and self._asked:
            self._pid = self.template.pid_of(self._request)
            self._asked = self._pid is not None
        return self._pid

    def take(self, env: Mapping[str, str]) -> ProcessRef | None:
        """Hand the spare its environment: it becomes the service, whose process this is
        (recorded in the run). None if there is no spare (its template ended: the service's
        imports failed, and the template's log says why)."""
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):  # it has ended already
                self.ref = record_process(self.template.run, self.name, pid, grace=10.0)
        try:
            with open(self._orders, "wb") as pipe:  # closes the pipe: the end of the order
                if self.ref is not None:
                    pipe.write(json.dumps(dict(env)).encode())
        except BrokenPipeError:
            self._end()
            return None
        return self.ref

    def discard(self) -> None:
        """End it unused: the end of its pipe, so it exits by itself (SIGTERM after 10 s)."""
        os.close(self._orders)
        self._end()

    def _end(self) -> None:
        if self.ref is not None:
            self.ref.stop(grace=10.0)
            self.template.run.forget(self.name)


__all__ = ["SpareTemplate", "WarmSpare"]
