"""Child processes the test kit owns: spawn, identify, stop.

A process is identified by (pid, start time) so that a recorded pid that the kernel has
since given to an unrelated process is never signalled.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import socket
import stat
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from apex_testkit._waiting import wait_for

_PR_SET_PDEATHSIG = 1


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
    return stat.rsplit(")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """The kernel start time of `pid` (clock ticks since boot), None if it is gone."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":  # a zombie is as good as gone
        return None
    return int(fields[19])


def _exit_status(status: int) -> str:
    """A wait status, as words."""
    if status & 0x7F:
        number = status & 0x7F
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {number} ({name})"
    return f"exited with code {(status >> 8) & 0xFF}"


@dataclass(frozen=True)
class ProcessRef:
    """A process recorded on disk: enough to find it again and stop it safely."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        started = start_time(pid)
        if started is None:
            raise ProcessLookupError(pid)
        return cls(pid, started)

    def alive(self) -> bool:
        return start_time(self.pid) == self.started

    def status(self) -> str:
        """ "running", "stopped (SIGSTOP)", or how it ended ("killed by signal 9 (SIGKILL)",
        "exited with code 1", or "exited" when its parent has already collected it)."""
        fields = _stat_fields(self.pid)
        if fields is None or int(fields[19]) != self.started:
            return "exited (its exit status was collected by its parent)"
        state = fields[0]
        if state == "Z":
            # Field 52: the wait status, kept while the zombie waits for its parent (the
            # process of the run that started it, which never reaps it before the end).
            return _exit_status(int(fields[49])) if len(fields) > 49 else "exited"
        if state in ("T", "t"):
            return "stopped (SIGSTOP)"
        return "running"

    def stop(self, grace: float = 10.0, sig: signal.Signals = signal.SIGTERM) -> None:
        """Send `sig` to its process group, SIGKILL after `grace` seconds; no-op when gone."""
        if not self.alive():
            return
        # A stopped (SIGSTOP) server would act on `sig` only after the grace, and its
        # children (PostgreSQL's backends, each in a session of its own) never: wake all.
        frozen = self.status().startswith("stopped")
        family = [self.pid, *_descendants(self.pid)] if frozen else []
        _signal_group(self.pid, sig)
        for pid in family:
            _signal_group(pid, signal.SIGCONT)
        if not wait_for(lambda: not self.alive(), timeout=grace, raise_on_timeout=False):
            _signal_group(self.pid, signal.SIGKILL)
            wait_for(lambda: not self.alive(), timeout=5.0, raise_on_timeout=False)

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "started": self.started}

    @classmethod
    def from_json(cls, data: Mapping[str, int]) -> ProcessRef:
        return cls(int(data["pid"]), int(data["started"]))


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (read from /proc: only for the rare frozen server)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Servers run in their own session (pgid == pid); fall back to the pid alone.
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return


def _die_with_parent() -> None:
    # SIGTERM, not SIGKILL: a service stopped this way still writes its coverage data.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class RunAs:
    """An unprivileged account to run a server that refuses root (PostgreSQL)."""

    user: str
    uid: int
    gid: int

    @classmethod
    def for_server(cls, name: str, account: str) -> RunAs | None:
        """None when not root; the account when root; a clear error if it is missing."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(account)
        except KeyError:
            raise RuntimeError(
                f"{name} refuses to run as root and there is no '{account}' user to run it as. "
                f"Fix: useradd --system {account} (or run the tests as a normal user)"
            ) from None
        return cls(account, entry.pw_uid, entry.pw_gid)

    def can_enter(self, path: Path) -> bool:
        """Whether this account may traverse every directory down to `path` (mode bits;
        e.g. not inside the 0700 directory `mktemp -d` makes for root)."""
        for folder in (path, *path.parents):
            try:
                info = folder.stat()
            except OSError:
                continue  # not made yet: the kit makes it, traversable
            if info.st_uid == self.uid:
                bit = stat.S_IXUSR
            elif info.st_gid == self.gid:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not info.st_mode & bit:
                return False
        return True

    def own(self, *paths: Path) -> None:
        for path in paths:
            for root, dirs, files in os.walk(path):
                os.chown(root, self.uid, self.gid)
                for name in dirs + files:
                    os.chown(os.path.join(root, name), self.uid, self.gid, follow_symlinks=False)


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    run_as: RunAs | None = None,
    pass_fds: Sequence[int] = (),
    die_with_parent: bool = False,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (so Ctrl-C reaches the test run, not the server),
    with stdout and stderr appended to `log`."""
    preexec: Callable[[], None] | None = _die_with_parent if die_with_parent else None
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            preexec_fn=preexec,
            user=run_as.uid if run_as else None,
            group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None,
            cwd=cwd,
        )


def log_tail(log: Path, lines: int = 15) -> str:
    """The last lines of a log, indented for an error message."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "    (no output)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) or "    (no output)"


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago (callers retry on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    """A bound, listening socket on an ephemeral port, inheritable by a child process.

    Handing the socket itself to the child (`--fd`) leaves no window in which another
    process could take the port.
    """
    sock = bound_socket(host)
    sock.listen(1024)
    return sock


def bound_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket bound to `host`:`port` (0: an ephemeral port) and not listening yet
    (it refuses connections until it listens), inheritable by a child process."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose `proto` says TCP,
    # and an accepted socket takes the listening one's. Without it a server in this
    # process (an L2 service, a fake) that writes a reply in pieces (a multi-line SMTP
    # EHLO, headers then body) waits out the peer's delayed ACK: 40 ms a reply.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def wait_healthy(
    exited: Callable[[], bool], health_url: str, *, timeout: float, interval: float = 0.02
) -> str | None:
    """Wait until `health_url` answers 200 ("ready") or the process has ended (`exited()`
    says so: "exited"); None when neither happened within `timeout` seconds."""

    def state() -> str | None:
        if exited():
            return "exited"
        try:
            healthy = httpx.get(health_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            healthy = False
        return "ready" if healthy else None

    outcome: str | None = wait_for(
        state, timeout=timeout, interval=interval, raise_on_timeout=False
    )
    return outcome
