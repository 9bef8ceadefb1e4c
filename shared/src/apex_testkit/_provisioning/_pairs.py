"""A test's own pair of servers (a primary and its replica, following it through a
FaultProxy): started together or not at all, stopped by the test or at its end, their
files removed, their records forgotten; the run's cleanup stops them if the test's
process dies first. `Pair` is what PostgresPair and RedisPair share, `start` how both
start."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from apex_testkit._faults import FaultProxy
from apex_testkit._processes import ProcessRef
from apex_testkit._provisioning._binaries import Started, reap
from apex_testkit._run import Run

R = TypeVar("R")
# Start server `name` (a primary): the started server, its folder, its URL.
StartPrimary = Callable[[str], tuple[Started, Path, str]]
# Start server `name` replicating the primary at URL through the link (host:port).
StartReplica = Callable[[str, str, str], tuple[Started, Path, str]]


@dataclass
class Node:
    """One server of a pair: recorded in the run as `name`, its files in `folder`."""

    name: str
    process: ProcessRef
    folder: Path
    url: str = ""
    stopped: bool = False

    @classmethod
    def of(cls, name: str, started: Started, folder: Path, url: str = "") -> Node:
        return cls(name, ProcessRef(started.pid, started.started), folder, url)

    def stop(self, sig: signal.Signals) -> None:
        """Send `sig` (SIGKILL after 10 s) and wait until it is gone; once only."""
        if not self.stopped:
            self.process.stop(grace=10.0, sig=sig)
            reap(self.process.pid)
            self.stopped = True


def close(run: Run, nodes: Iterable[Node], link: FaultProxy | None, sig: signal.Signals) -> None:
    """Stop the link and every node (with `sig`), remove their files, forget them."""
    if link is not None:
        link.stop()
    for node in nodes:
        node.stop(sig)
        run.forget(node.name)
        # What a killed server leaves outside its folder (PostgreSQL's shared memory).
        run.clean(f"{node.name}-shared-memory")
        shutil.rmtree(node.folder, ignore_errors=True)
        run.forget(f"dir-{node.name}")


@dataclass
class Pair(Generic[R]):
    """A primary and its replica `R` of one test's own: stop or kill either server; `link`
    is the FaultProxy the replica follows its primary through."""

    primary_url: str
    replica: R
    link: FaultProxy
    _run: Run = field(repr=False)
    _nodes: dict[str, Node] = field(repr=False)
    # The server's clean shutdown, and the one `close` uses (nothing of it outlives the test).
    _STOP: ClassVar[signal.Signals] = signal.SIGTERM
    _CLOSE: ClassVar[signal.Signals] = signal.SIGKILL

    def stop_primary(self) -> None:
        """Shut the primary down cleanly (its server's own clean shutdown signal)."""
        self._nodes["primary"].stop(self._STOP)

    def kill_primary(self) -> None:
        """Kill the primary (SIGKILL), as a crashed machine would stop it."""
        self._nodes["primary"].stop(signal.SIGKILL)

    def stop_replica(self) -> None:
        """Shut the replica down cleanly."""
        self._nodes["replica"].stop(self._STOP)

    def kill_replica(self) -> None:
        """Kill the replica (SIGKILL)."""
        self._nodes["replica"].stop(signal.SIGKILL)

    def close(self) -> None:
        """Stop both servers and the link; remove their files."""
        close(self._run, self._nodes.values(), self.link, self._CLOSE)


P = TypeVar("P", bound=Pair[Any])


def start(
    kind: type[P],
    run: Run,
    name: str,
    primary: StartPrimary,
    replica: StartReplica,
    view: Callable[[str, str], Any],
) -> P:
    """A pair of `kind`: `name`-primary, the link to it (`name`-link) and `name`-replica
    following it through the link, the replica as `view(replica URL, primary URL)`. On any
    failure, what started is closed and the error raised."""
    nodes: dict[str, Node] = {}
    link: FaultProxy | None = None
    try:
        started, folder, url = primary(f"{name}-primary")
        nodes["primary"] = Node.of(f"{name}-primary", started, folder, url)
        link = FaultProxy(url, name=f"{name}-link").start()
        started, folder, url = replica(f"{name}-replica", url, link.address)
        nodes["replica"] = Node.of(f"{name}-replica", started, folder, url)
    except BaseException:
        close(run, nodes.values(), link, kind._CLOSE)
        raise
    primary_url = nodes["primary"].url
    return kind(primary_url, view(nodes["replica"].url, primary_url), link, run, nodes)
