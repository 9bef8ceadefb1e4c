"""The whole platform as a local stack: real servers, every service as a process.

`nox -s l4` runs the L4 tests against it exactly as against staging: through a target
file. Developers run it with `nox -s stack` (or `apex-testkit stack`) until Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from apex.topology import SERVICES, servers_needed
from apex_testkit._level import Level
from apex_testkit._processes import log_tail, spawn
from apex_testkit._run import Run, record_process
from apex_testkit._settings import KitSettings
from apex_testkit._sut.wiring import migrate, service_env
from apex_testkit._target import load_target
from apex_testkit._waiting import wait_for
from apex_testkit._worker import Worker

STACK_SLOT = 0


def _say(message: str) -> None:
    print(f"apex-testkit stack: {message}", file=sys.stderr, flush=True)


def run_stack(
    command: Sequence[str],
    *,
    target_out: Path | None,
    chains: dict[str, tuple[str, ...]],
    timeout: float = 120.0,
) -> int:
    """Start the stack, run `command` against it (or wait for Ctrl-C), tear it all down.

    Returns the command's exit code (0 after Ctrl-C when there is no command).
    """
    run = Run.create()
    try:
        manifest, stack = _start(run, chains, timeout)
        if target_out is not None:
            target_out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(manifest, target_out)
            _say(f"target file: {target_out}")
        if command:
            _say(f"running: {' '.join(command)}")
            return subprocess.run(list(command), check=False).returncode
        _say("running; press Ctrl-C to stop")
        code = stack.wait()
        _say(f"the platform stack exited with code {code}:\n{log_tail(run.path / 'stack.log')}")
        return code or 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    finally:
        started = time.monotonic()
        run.close()
        _say(f"stopped and cleaned up in {time.monotonic() - started:.1f} s")


def _start(
    run: Run, chains: dict[str, tuple[str, ...]], timeout: float
) -> tuple[Path, subprocess.Popen[bytes]]:
    began = time.monotonic()
    settings = KitSettings(level=Level.L4, target=None, chains=chains)
    worker = Worker(run, settings, migrate, STACK_SLOT)
    env: dict[str, str] = {}
    for service in SERVICES:
        env |= service_env(worker, service)
    for name in servers_needed():
        server = worker.server(name)
        _say(f"{name}: {server.provider} {server.url} ready in {server.ready_seconds:.3f} s")
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
    target = load_target(manifest)
    for service, url in sorted(target.services.items()):
        _say(f"{service}: {url}")
    _say(f"platform ready in {time.monotonic() - began:.2f} s (log: {log})")
    return manifest, process
