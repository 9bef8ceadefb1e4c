"""004#2 dev environment initialization: `apex-testkit stack` brings the whole platform up
from nothing, and takes it all down again.

The rules under test (the kit's `apex-testkit stack` and `python -m apex.stack`, README
and contract-foundation.md): started in an empty directory with nothing running, the
stack starts its own servers, migrates its database, starts every service of
`apex.topology` (each healthy, sharing one configuration: the stack checks it) and writes
an L4 target file; SIGTERM stops it with 128 + 15, leaving no process of its run, no run
directory and nothing in the directory it ran in but the target file asked for. The
stack promises no auto-recovery: a service that dies is reported (the stack names it,
with its exit code) and the whole stack stops, leaving nothing either.

Each test starts a stack of its own (its own servers, its own run directory under a
base directory of the test's), so they are L3 tests of the platform's processes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from apex import topology
from apex.stack.consistency import check_services
from apex_testkit import wait_for

STACK = pytest.mark.bvj(
    segment="platform", goal="A developer gets the whole platform running with one command",
    mrr=20000, scenario="004#2",
)  # fmt: skip
pytestmark = [STACK, pytest.mark.L3]

START_TIMEOUT = 180.0
STOP_TIMEOUT = 90.0
_LOG_LINE = re.compile(r"\(log: (\S+/stack\.log)\)")
_READY = re.compile(r"apex\.stack: ready: (.*); manifest ")
_CHILD = re.compile(r"(\w+) at \S+ \(pid (\d+)\)")


def _alive(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie has exited)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rpartition(")")[2].split()[0] != "Z"


def _processes_under(path: Path) -> list[int]:
    """Processes whose command line names `path` (the run's servers and services)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if str(path).encode() in (entry / "cmdline").read_bytes() and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@dataclass
class DevStack:
    """`apex-testkit stack --target-out target.toml` started in `workdir`."""

    workdir: Path
    base: Path
    process: subprocess.Popen[bytes]
    output: Path
    services: dict[str, int] = field(default_factory=dict)
    run_dir: Path | None = None

    @property
    def target_file(self) -> Path:
        return self.workdir / "target.toml"

    def said(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_ready(self) -> dict[str, Any]:
        """Until the target file is written; the target, the run dir and the services' pids."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the stack exited early:\n{self.said()}")
            return self.target_file.is_file() and "platform ready" in self.said()

        wait_for(ready, timeout=START_TIMEOUT, message=lambda: f"stack ready:\n{self.said()}")
        log = _LOG_LINE.search(self.said())
        assert log is not None, self.said()
        stack_log = Path(log.group(1))
        self.run_dir = stack_log.parent
        line = _READY.search(stack_log.read_text(errors="replace"))
        assert line is not None, stack_log.read_text(errors="replace")
        self.services = {name: int(pid) for name, pid in _CHILD.findall(line.group(1))}
        # What assert_nothing_left looks for is there to be seen while the stack runs.
        assert _processes_under(self.base), f"no process names {self.base}"
        target: dict[str, Any] = tomllib.loads(self.target_file.read_text())
        return target

    def wait_exit(self) -> int:
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the stack did not stop:\n{self.said()}") from None

    def assert_nothing_left(self) -> None:
        """No service process, no process of the run, no run directory; the directory it
        ran in holds the target file only."""
        assert self.run_dir is not None
        run_dir = self.run_dir
        assert not [pid for pid in self.services.values() if _alive(pid)], self.services
        # Every file of the run (its servers' too) is under `base`. Its watchdog leaves
        # once its owner is gone: waited for, with a deadline.
        wait_for(
            lambda: not _processes_under(self.base),
            timeout=30,
            message=lambda: f"processes of {self.base} gone (left: {_processes_under(self.base)})",
        )
        assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())
        runs = [p.name for p in run_dir.parent.iterdir() if p.name.startswith("run-")]
        assert runs == [], "run directories left behind"
        assert sorted(p.name for p in self.workdir.iterdir()) == [self.target_file.name]


@pytest.fixture
def dev_stack(tmp_path: Path) -> Iterator[DevStack]:
    """`apex-testkit stack` from nothing: an empty directory, a run base of its own (short:
    servers put sockets there). Killed with everything it started if a test fails."""
    workdir = tmp_path / "empty"
    workdir.mkdir()
    base = Path(tempfile.mkdtemp(prefix="apex-dev-"))
    # Servers that refuse root (PostgreSQL) run as another user: they must reach it to
    # keep their files under it.
    base.chmod(0o755)
    output = tmp_path / "stack.err"
    command = [str(Path(sys.executable).with_name("apex-testkit")), "stack", "--target-out"]
    env = {**os.environ, "APEX_TEST_TMPDIR": str(base)}
    with output.open("wb") as err:
        process = subprocess.Popen(
            [*command, str(workdir / "target.toml")],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
    stack = DevStack(workdir, base, process, output)
    try:
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in stack.services.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def _http(url: str) -> str:
    return url.replace("ws://", "http://", 1)


async def test_the_stack_starts_from_nothing_and_stops_leaving_nothing(
    dev_stack: DevStack,
) -> None:
    target = dev_stack.wait_ready()
    urls = {name: _http(entry["url"]) for name, entry in target["services"].items()}
    admin_token = target["credentials"]["admin_token"]
    assert set(urls) == set(topology.SERVICES)
    assert set(dev_stack.services) == set(topology.SERVICES)
    async with httpx.AsyncClient(timeout=30) as client:
        for name, url in urls.items():
            health = await client.get(f"{url}/healthz")
            assert health.status_code == 200, (name, health.text)
        # Migrated: the data service's role (0012) and its tables (0011) are there.
        isolation = await client.get(
            f"{urls['data']}/admin/isolation", headers={"Authorization": f"Bearer {admin_token}"}
        )
        assert isolation.status_code == 200, isolation.text
        assert isolation.json() == {"role": "apex_data", "usage_records_visible": 0}
    # One configuration: what the stack checked before it wrote the target.
    check_services(urls, admin_token)

    dev_stack.process.send_signal(signal.SIGTERM)
    assert dev_stack.wait_exit() == 128 + signal.SIGTERM, dev_stack.said()
    assert "stopped and cleaned up" in dev_stack.said()
    dev_stack.assert_nothing_left()
    async with httpx.AsyncClient(timeout=5) as client:
        for url in urls.values():
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{url}/healthz")


def test_a_killed_service_is_reported_and_the_stack_stops_leaving_nothing(
    dev_stack: DevStack,
) -> None:
    dev_stack.wait_ready()
    os.kill(dev_stack.services["data"], signal.SIGKILL)
    assert dev_stack.wait_exit() == 1, dev_stack.said()
    said = dev_stack.said()
    assert "apex.data exited unexpectedly with code -9" in said, said
    assert "the platform stack exited with code 1" in said, said
    dev_stack.assert_nothing_left()
