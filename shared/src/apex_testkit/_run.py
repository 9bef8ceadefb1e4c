"""A test run's registry on disk: what it started, so nothing outlives it.

Every run (a pytest session, or `apex-testkit stack`) owns a directory
`$TMPDIR/apex-testkit-<uid>/run-<pid>-<token>/` with `owner.json` and one JSON record per
resource it created (a server process, a container, a database in an external server).
The owner removes them at the end. If the owner dies first (Ctrl-C twice, kill -9), a
watchdog process that waits on the owner's pidfd removes them at once, and every new run
sweeps the directories of dead owners before it starts, whatever killed them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from apex_testkit._masking import mask_secrets
from apex_testkit._processes import ProcessRef, RunAs, start_time

RESOURCES = "resources"
# Where the kit keeps a server's files when the account it runs as (PostgreSQL as root)
# cannot enter the run directory: directories every user can traverse. The kit makes a
# folder of its own there and checks that it owns it (`_own_folder`).
SHARED_TEMP_ROOTS = (Path("/tmp"), Path("/var/tmp"))  # noqa: S108

# Cleaners by resource kind; provisioning modules register theirs (e.g. dropping a
# database in an external server). Processes and containers are handled here.
_cleaners: dict[str, Callable[[dict[str, Any]], None]] = {}
_after_processes: set[str] = set()


def register_cleaner(
    kind: str, cleaner: Callable[[dict[str, Any]], None], *, after_processes: bool = False
) -> None:
    """Declare how to remove a resource of `kind` that a run recorded: before the run's
    processes are stopped (a namespace in a server), or after (what a process left)."""
    _cleaners[kind] = cleaner
    if after_processes:
        _after_processes.add(kind)


class RunDirError(RuntimeError):
    """The directory runs live in cannot be used: the message names it, why, and the fix."""


def base_dir() -> Path:
    """Where runs live: APEX_TEST_TMPDIR, else /dev/shm (in memory) when it has room, else
    the system temp dir; one folder per user."""
    path = _temp_root() / f"apex-testkit-{os.geteuid()}"
    try:
        return _own_folder(path)
    except OSError as exc:
        raise RunDirError(disk_problem(path, exc)) from None


def _temp_root() -> Path:
    chosen = os.environ.get("APEX_TEST_TMPDIR")
    if chosen:
        return Path(chosen)
    return MEMORY_ROOT if _memory_has_room(MEMORY_ROOT) else Path(tempfile.gettempdir())


# The servers' files in memory: PostgreSQL and ClickHouse make and delete files for every
# database clone and TRUNCATE, and on a disk filesystem (ext4) finding a free inode among
# the recently deleted ones was a sixth of a `nox -s l2`'s CPU (perf: PostgreSQL's kernel
# time, 4x its own). A container's /dev/shm (64 MB by default) has no room: then the temp
# dir, as before.
MEMORY_ROOT = Path("/dev/shm")  # noqa: S108 - a directory of the system's, every user's
MEMORY_ROOM = 2 << 30  # bytes free: an `nox -s l3` keeps under 1 GiB there


def _memory_has_room(root: Path) -> bool:
    try:
        stats = os.statvfs(root)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize >= MEMORY_ROOM and os.access(root, os.W_OK | os.X_OK)


def _own_folder(path: Path) -> Path:
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    if path.stat().st_uid != os.geteuid():
        raise RunDirError(f"{path} belongs to another user; set APEX_TEST_TMPDIR elsewhere")
    # Servers that refuse root (PostgreSQL) run as another user and must traverse it.
    path.chmod(0o755)
    return path


def disk_fix(exc: OSError) -> str | None:
    """The fix for a write into the kit's directories that failed with `exc`, when the
    directory is the problem (full, read-only, not writable); None otherwise."""
    root = _temp_root()
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"Fix: free space on that filesystem (df -h {root}), "
            "or set APEX_TEST_TMPDIR=<a directory with room>"
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "Fix: set APEX_TEST_TMPDIR=<a directory you can write, with free space>"
    return None


def disk_problem(path: Path, exc: OSError) -> str:
    """What is wrong with the kit's directory `path` (read-only, full, ...) and the fix."""
    chosen = os.environ.get("APEX_TEST_TMPDIR")
    where = f"APEX_TEST_TMPDIR={chosen}" if chosen else f"the default run root {_temp_root()}"
    problem = f"apex-testkit cannot write its run files under {where} ({path}): {exc}"
    fix = disk_fix(exc) or "Fix: set APEX_TEST_TMPDIR=<a directory you can write>"
    return f"{problem}\n{fix}"


def server_base(user: RunAs | None) -> Path:
    """The base for the files of a server that runs as `user` (None: as this process):
    the runs' base dir when `user` can reach it, else a kit-owned folder in a temp dir
    every user can traverse (the base may sit in a 0700 directory only root can enter)."""
    base = base_dir()
    if user is None or user.can_enter(base):
        return base
    for root in SHARED_TEMP_ROOTS:
        if user.can_enter(root):
            try:
                return _own_folder(root / f"apex-testkit-{os.geteuid()}")
            except OSError as exc:
                raise RunDirError(disk_problem(root, exc)) from None
    raise RunDirError(
        f"{user.user} (the account the server runs as) cannot enter {base} nor any of "
        f"{', '.join(map(str, SHARED_TEMP_ROOTS))}. "
        f"Fix: chmod o+x the directories on the way, or set APEX_TEST_TMPDIR=<a directory "
        f"every user can enter>"
    )


class Run:
    """One test run's directory and lifetime."""

    def __init__(self, path: Path, *, owner: bool) -> None:
        self.path = path
        self.owner = owner
        self.token = path.name.rsplit("-", 1)[1]

    @property
    def name(self) -> str:
        """A short per-run name for databases and key prefixes: two runs never share one."""
        return f"t{self.token}"

    @classmethod
    def create(cls) -> Run:
        """Sweep dead runs, then make this process the owner of a new run.

        RunDirError (one message: the directory, the problem, the fix) when the base
        directory is read-only, full or otherwise unusable.
        """
        base = base_dir()
        path = base / f"run-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            sweep(base)
            path.mkdir(mode=0o755)
            (path / RESOURCES).mkdir(mode=0o755)
            owner = ProcessRef.of(os.getpid())
            _write_json(path / "owner.json", {**owner.to_json(), "created": time.time()})
        except OSError as exc:
            shutil.rmtree(path, ignore_errors=True)
            raise RunDirError(disk_problem(path, exc)) from None
        run = cls(path, owner=True)
        run._start_watchdog(owner)
        return run

    @classmethod
    def attach(cls, path: str | Path) -> Run:
        """Join a run another process owns (an xdist worker joining its controller's)."""
        return cls(Path(path), owner=False)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive lock shared by every process of this run."""
        with open(self.path / f"{name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def record(self, resource: str, kind: str, **data: Any) -> None:
        """Remember a resource so that it is removed when the run ends, however it ends."""
        _write_json(self.path / RESOURCES / f"{resource}.json", {"kind": kind, **data})

    def forget(self, resource: str) -> None:
        (self.path / RESOURCES / f"{resource}.json").unlink(missing_ok=True)

    def clean(self, resource: str) -> None:
        """Remove a recorded resource now (its cleaner, as at the run's end), then forget
        it; nothing when it is not recorded."""
        path = self.path / RESOURCES / f"{resource}.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return
        _clean(record)
        path.unlink(missing_ok=True)

    def read(self, name: str) -> dict[str, Any] | None:
        """A value another process of this run stored with `store`."""
        try:
            data: dict[str, Any] = json.loads((self.path / f"{name}.json").read_text())
        except FileNotFoundError:
            return None
        return data

    def store(self, name: str, data: dict[str, Any]) -> None:
        _write_json(self.path / f"{name}.json", data)

    def server_dir(self, name: str, user: RunAs | None) -> Path:
        """A directory of this run for server `name`'s files, which `user` (the account the
        server runs as; None: this process's) can reach. Outside the run directory (see
        `server_base`) it is recorded, so it goes with the run however the run ends."""
        if user is None or user.can_enter(self.path):
            path = self.path / name
        else:
            # Not "run-*": sweeps of that base must not take it for a run of its own.
            path = server_base(user) / f"data-{self.path.name}-{name}"
            self.record(f"dir-{name}", "dir", path=str(path))
        try:
            path.mkdir(mode=0o755, exist_ok=True)
        except OSError as exc:
            raise RunDirError(disk_problem(path, exc)) from None
        return path

    def close(self) -> None:
        """Remove every recorded resource and the run directory (owner only)."""
        if self.owner:
            cleanup(self.path)

    def _start_watchdog(self, owner: ProcessRef) -> None:
        argv = [sys.executable, "-m", "apex_testkit._watchdog", str(self.path), str(owner.pid)]
        argv.append(str(owner.started))
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            # The watchdog must not be measured or slowed by coverage's subprocess patch.
            env={k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")},
        )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _owner_alive(run_dir: Path) -> bool:
    try:
        owner = json.loads((run_dir / "owner.json").read_text())
    except FileNotFoundError:
        # A run being created right now has no owner file for a moment.
        return time.time() - run_dir.stat().st_mtime < 60
    except (OSError, ValueError):
        return False
    return ProcessRef.from_json(owner).alive()


def sweep(base: Path) -> list[Path]:
    """Clean up the runs whose owner is dead; return their directories."""
    swept = []
    with _base_lock(base):
        for run_dir in sorted(base.glob("run-*")):
            with contextlib.suppress(FileNotFoundError):
                if not _owner_alive(run_dir):
                    _cleanup_unlocked(run_dir)
                    swept.append(run_dir)
    return swept


def cleanup(run_dir: Path) -> None:
    """Remove what a run recorded, then its directory."""
    with _base_lock(run_dir.parent):
        _cleanup_unlocked(run_dir)


@contextlib.contextmanager
def _base_lock(base: Path) -> Iterator[None]:
    with open(base / ".sweep.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cleanup_unlocked(run_dir: Path) -> None:
    records = []
    for path in (run_dir / RESOURCES).glob("*.json"):
        with contextlib.suppress(FileNotFoundError, ValueError):
            records.append(json.loads(path.read_text()))
    # Namespaces inside servers first (they need their server), then processes and
    # containers, all at once: the slowest stop bounds the teardown, not their sum; then
    # what those processes left (read from their directories); then the directories.
    if any(r["kind"] not in _cleaners for r in records):
        # Cleaners are registered on import of the module that records the kind.
        import apex_testkit._provisioning  # noqa: F401, PLC0415
    stopping = ("process", "container")
    phases = [
        [r for r in records if r["kind"] not in (*stopping, *_after_processes, "dir")],
        [r for r in records if r["kind"] in stopping],
        [r for r in records if r["kind"] in _after_processes],
        [r for r in records if r["kind"] == "dir"],
    ]
    errors = [error for phase in phases if (error := _clean_all(phase))]
    shutil.rmtree(run_dir, ignore_errors=True)
    if errors:
        left = mask_secrets("; ".join(errors))
        print(f"apex-testkit: cleanup of {run_dir.name} left: {left}", file=sys.stderr)


def _clean_all(records: list[dict[str, Any]]) -> str:
    """Clean `records` in parallel; return what failed, if anything."""
    if not records:
        return ""
    with ThreadPoolExecutor(max_workers=len(records)) as pool:
        futures = [pool.submit(_clean, record) for record in records]
    failed = []
    for record, future in zip(records, futures, strict=True):
        exc = future.exception()
        if exc is not None:
            failed.append(f"{record.get('kind')}: {exc}")
    return "; ".join(failed)


def _clean(record: dict[str, Any]) -> None:
    kind = record["kind"]
    if kind == "process":
        sig = signal.Signals(int(record.get("signal", signal.SIGTERM)))
        ProcessRef.from_json(record).stop(grace=float(record.get("grace", 10.0)), sig=sig)
        return
    if kind == "dir":
        path = Path(record["path"])
        if path.name.startswith("data-run-"):  # only ever what `Run.server_dir` made
            shutil.rmtree(path, ignore_errors=True)
        return
    _cleaners[kind](record)


def record_process(
    run: Run, name: str, pid: int, *, grace: float = 10.0, sig: signal.Signals = signal.SIGTERM
) -> ProcessRef:
    """Record a child process of this run; it is stopped (`sig`, then SIGKILL after
    `grace` seconds) at the end of the run."""
    ref = ProcessRef.of(pid)
    run.record(name, "process", **ref.to_json(), grace=grace, signal=int(sig))
    return ref


__all__ = [
    "Run",
    "RunDirError",
    "base_dir",
    "cleanup",
    "disk_fix",
    "disk_problem",
    "record_process",
    "register_cleaner",
    "server_base",
    "start_time",
    "sweep",
]
