"""The whole platform as a local stack: real servers, every service as a process.

`nox -s l4` runs the L4 tests against it exactly as against staging: through a target
file. Developers run it with `nox -s stack` (or `apex-testkit stack`) until Ctrl-C.

SIGINT and SIGTERM stop it cleanly, in the foreground or as a background job (which a
script starts with SIGINT ignored): the stack stops COMMAND, its services and servers and
removes its run. COMMAND dies with the stack even when the stack is killed (kill -9).

The platform's third parties are the kit's fakes, started as sandboxes (processes of the
run) and written into the target as `[sandboxes.<name>]` tables (see `_sandboxes`).

With `check_leftovers`, once COMMAND has exited the stack counts what it left in the
database of test namespaces (`_leftovers`): any row makes the exit code 1 (or COMMAND's own,
if it failed), so an L4 run proves it cleaned up after itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from apex.topology import SERVICES, servers_needed
from apex_testkit._leftovers import leftovers
from apex_testkit._level import Level
from apex_testkit._masking import mask_secrets
from apex_testkit._processes import _die_with_parent, log_tail, spawn
from apex_testkit._run import Run, record_process
from apex_testkit._sandboxes import sandbox_env, sandbox_tables, start_sandboxes
from apex_testkit._settings import KitSettings
from apex_testkit._sut.wiring import migrate, service_env
from apex_testkit._target import load_target
from apex_testkit._waiting import wait_for
from apex_testkit._worker import Worker

STACK_SLOT = 0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How long COMMAND (a pytest run) gets to tear down after the stack was told to stop.
COMMAND_GRACE = 30.0


class _Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the stack (a KeyboardInterrupt: nothing swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


def _say(message: str) -> None:
    print(f"apex-testkit stack: {mask_secrets(message)}", file=sys.stderr, flush=True)


def run_stack(
    command: Sequence[str],
    *,
    target_out: Path | None,
    chains: dict[str, tuple[str, ...]],
    check_leftovers: bool = False,
    timeout: float = 120.0,
) -> int:
    """Start the stack, run `command` against it (or wait for Ctrl-C), tear it all down.

    Returns the command's exit code, or 128 + the signal's number when SIGINT or SIGTERM
    stopped the stack (130 after Ctrl-C). With `check_leftovers` (a `command` only), 1
    when the command succeeded but left rows of a test namespace in the database.
    """
    if check_leftovers and not command:
        raise ValueError("--check-leftovers needs a COMMAND to check after")
    run = Run.create()
    # Set explicitly: a script's background job starts with SIGINT ignored, and SIGTERM
    # would end the stack without its teardown (only the watchdog would clean up).
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS}
    try:
        manifest, stack, database = _start(run, chains, timeout)
        if target_out is not None:
            target_out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(manifest, target_out)
            _say(f"target file: {target_out}")
        if command:
            _say(f"running: {' '.join(command)}")
            code = _run_command(run, command)
            return _leftovers_checked(code, database) if check_leftovers else code
        _say("running; press Ctrl-C to stop")
        code = stack.wait()
        _say(f"the platform stack exited with code {code}:\n{log_tail(run.path / 'stack.log')}")
        return code or 1
    except _Stopped as stop:
        _say(f"stopping ({signal.Signals(stop.signum).name})")
        return 128 + stop.signum
    finally:
        started = time.monotonic()
        run.close()
        _say(f"stopped and cleaned up in {time.monotonic() - started:.1f} s")
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _leftovers_checked(code: int, database: str) -> int:
    """`code`, or 1 when it is 0 and test namespaces left rows in `database` (said either way)."""
    left = leftovers(database)
    if not left:
        _say("no rows of a test namespace left in the database")
        return code
    counts = ", ".join(f"{table}: {count}" for table, count in sorted(left.items()))
    _say(f"the run left rows of test namespaces in the database ({counts})")
    return code or 1


def _run_command(run: Run, command: Sequence[str]) -> int:
    """Run COMMAND in the foreground until it exits; it is stopped with the stack."""
    process = subprocess.Popen(list(command), preexec_fn=_command_preexec(os.getpid()))
    try:
        # Recorded like every process of the run: the watchdog stops it after a kill -9.
        with contextlib.suppress(ProcessLookupError):  # already gone: nothing to stop
            record_process(run, "command", process.pid, grace=COMMAND_GRACE)
        return process.wait()
    except _Stopped as stop:
        _stop_command(process, stop.signum)
        raise


def _command_preexec(stack_pid: int) -> Callable[[], None]:
    def preexec() -> None:
        # Ignored in a background job; the stack forwards SIGINT, so it must act.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _die_with_parent()  # SIGTERM when the stack dies, even by SIGKILL
        if os.getppid() != stack_pid:  # the stack died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _stop_command(process: subprocess.Popen[bytes], signum: int) -> None:
    """Pass `signum` on to COMMAND, give it COMMAND_GRACE seconds, then kill it."""
    # Ctrl-C in a terminal reaches the whole foreground process group, COMMAND too:
    # a second SIGINT would cut its own teardown short.
    from_terminal = signum == signal.SIGINT and _in_terminal_foreground()
    if process.poll() is None and not from_terminal:
        process.send_signal(signum)
    try:
        process.wait(timeout=COMMAND_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _in_terminal_foreground() -> bool:
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:  # stdin is not a terminal
        return False


def _start(
    run: Run, chains: dict[str, tuple[str, ...]], timeout: float
) -> tuple[Path, subprocess.Popen[bytes], str]:
    """Start the platform: its target file, its process and the DSN of its database."""
    began = time.monotonic()
    settings = KitSettings(level=Level.L4, target=None, chains=chains)
    worker = Worker(run, settings, migrate, STACK_SLOT)
    # The kit's fakes as the platform's third-party sandboxes, named in the target.
    sandboxes = start_sandboxes(run)
    for name, client in sorted(sandboxes.items()):
        _say(f"sandbox {name}: {client.url}")
    env: dict[str, str] = {}
    for service in SERVICES:
        env |= service_env(worker, service) | sandbox_env(service, sandboxes)
    for name in servers_needed():
        server = worker.server(name)
        _say(f"{name}: {server.provider} {server.url} ready in {server.ready_seconds:.3f} s")
    database = worker.postgres_database()  # the services' database (service_env made it)
    worker.close()
    manifest = run.path / "manifest.toml"
    log = run.path / "stack.log"
    argv = [sys.executable, "-m", "apex.stack", "--manifest", str(manifest)]
    _say("starting the platform (python -m apex.stack)")
    process = spawn(argv, log=log, env={**os.environ, **env})
    # More than the stack gives its services (20 s): a draining gateway is not cut short.
    record_process(run, "apex-stack", process.pid, grace=25.0)

    def state() -> str | None:
        if manifest.is_file():
            return "ready"
        return "exited" if process.poll() is not None else None

    outcome = wait_for(state, timeout=timeout, interval=0.02, raise_on_timeout=False)
    if outcome != "ready":
        what = (
            f"exited with code {process.returncode}" if outcome else f"not ready in {timeout:g} s"
        )
        raise RuntimeError(f"the platform stack {what}:\n{log_tail(log, 30)}")
    with manifest.open("a") as out:
        out.write(sandbox_tables(sandboxes))
    target = load_target(manifest)
    for service, url in sorted(target.services.items()):
        _say(f"{service}: {url}")
    _say(f"platform ready in {time.monotonic() - began:.2f} s (log: {log})")
    return manifest, process, database
