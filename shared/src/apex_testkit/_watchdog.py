"""Watchdog of one run: cleans the run up the moment its owner process dies.

Started by `Run.create` in its own session, so Ctrl-C in the terminal does not reach it.
It blocks on the owner's pidfd (no polling); when the owner exits normally the run
directory is already gone and it exits without doing anything.

Usage: python -m apex_testkit._watchdog RUN_DIR OWNER_PID OWNER_START_TIME
"""

from __future__ import annotations

import os
import select
import sys
from pathlib import Path

from apex_testkit._processes import ProcessRef
from apex_testkit._run import cleanup


def main(argv: list[str]) -> int:
    run_dir, pid, started = Path(argv[0]), int(argv[1]), int(argv[2])
    owner = ProcessRef(pid, started)
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = None
    if fd is not None and owner.alive():
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll()
        os.close(fd)
    if run_dir.exists():
        cleanup(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
