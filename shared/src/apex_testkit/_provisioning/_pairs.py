"""The servers of one test's own pair (a primary and its replica): stopped by the test or
at its end, their files removed, their records forgotten; the run's cleanup stops them if
the test's process dies first."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from apex_testkit._faults import FaultProxy
from apex_testkit._processes import ProcessRef
from apex_testkit._provisioning._binaries import Started, reap
from apex_testkit._run import Run


@dataclass
class Node:
    """One server of a pair: recorded in the run as `name`, its files in `folder`."""

    name: str
    process: ProcessRef
    folder: Path
    stopped: bool = False

    @classmethod
    def of(cls, name: str, started: Started, folder: Path) -> Node:
        return cls(name, ProcessRef(started.pid, started.started), folder)

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
        shutil.rmtree(node.folder, ignore_errors=True)
        run.forget(f"dir-{node.name}")
