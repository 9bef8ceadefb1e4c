"""L3 warm spares: an interpreter that has already imported a service, waiting for its
settings.

Starting `python -m apex.agents` costs 1.5-2 s before /healthz answers, most of it
imports (the openai SDK's types, FastAPI, redis, asyncpg), and an L3 run starts about 300
such processes, one per instance and settings. A spare pays the imports while the tests
before it run: it is spawned on a loopback socket of its own, imports the service's
modules, then blocks reading one JSON document from a pipe (the settings and the
arguments). Given them, it becomes `python -m <module> --fd N` in the same interpreter
(`runpy`, with the environment replaced), so only the service's own start is left.
The interpreter runs no kit code: the spare's program is the few lines of `_PROGRAM`,
and the service sees the environment a plain start would have given it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from apex_testkit._processes import ProcessRef, listening_socket, spawn
from apex_testkit._run import Run, record_process

# Run with `python -c`: importing the kit would load pytest and more into the service.
_PROGRAM: Final = """\
import importlib, json, os, runpy, sys
module, orders = sys.argv[1], int(sys.argv[2])
service = importlib.import_module(module)
if hasattr(service, "__path__"):  # a package: `python -m` runs its __main__
    importlib.import_module(module + ".__main__")
getattr(service, "create_app", None) or getattr(service, "create_server", None)
with os.fdopen(orders, encoding="utf-8") as pipe:
    raw = pipe.read()
if not raw:
    sys.exit(0)
order = json.loads(raw)
os.environ.clear()
os.environ.update(order["env"])
sys.argv = [module, *order["args"]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


class WarmSpare:
    """A spawned interpreter importing `module`, on its own loopback socket (`url`), until
    `take` gives it its settings; `discard` ends it unused."""

    def __init__(self, run: Run, module: str, name: str) -> None:
        self.run, self.module, self.name = run, module, name
        self.log: Path = run.path / f"{name}.log"
        sock = listening_socket()
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self._args = ["--fd", str(sock.fileno())]
        orders, self._orders = os.pipe()
        argv = [sys.executable, "-c", _PROGRAM, module, str(orders)]
        try:
            self.process: subprocess.Popen[bytes] = spawn(
                argv,
                log=self.log,
                env=dict(os.environ),
                pass_fds=[sock.fileno(), orders],
                die_with_parent=True,
            )
        except BaseException:
            os.close(self._orders)
            raise
        finally:
            os.close(orders)
            sock.close()
        self.ref: ProcessRef = record_process(run, name, self.process.pid, grace=10.0)

    def take(self, env: Mapping[str, str]) -> bool:
        """Hand the spare its environment: it becomes the service. False if it had already
        exited (its imports failed: its log says why), and then it is ended."""
        order = json.dumps({"env": dict(env), "args": self._args}).encode()
        alive = self.process.poll() is None
        try:
            with open(self._orders, "wb") as pipe:  # closes the pipe: the end of the order
                if alive:
                    pipe.write(order)
        except BrokenPipeError:
            alive = False
        if not alive:
            self._end()
        return alive

    def discard(self) -> None:
        """End it unused: the end of its pipe, so it exits by itself (SIGTERM after 10 s)."""
        os.close(self._orders)
        self._end()

    def _end(self) -> None:
        self.ref.stop(grace=10.0)
        self.run.forget(self.name)


__all__ = ["WarmSpare"]
