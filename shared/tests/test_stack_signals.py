"""`apex-testkit stack` stops cleanly on SIGINT and SIGTERM, in the foreground and as a
background job (started with SIGINT ignored), and its COMMAND dies with it on kill -9.

Each test starts the real stack (servers and services), waits for its target file, signals
it, then checks that every process it started (its descendants, and what its run
recorded) is gone and that its run directory was removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import inner_env

from apex_testkit import wait_for
from apex_testkit._run import base_dir

READY_TIMEOUT = 180.0
GONE_TIMEOUT = 60.0
# A COMMAND that runs until it is stopped.
PAUSE = [sys.executable, "-c", "import signal; signal.pause()"]


def start_time(pid: int) -> int | None:
    """The kernel start time of `pid`, None once it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def descendants(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of every live process below `root`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found = set()
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        started = start_time(pid)
        if started is not None:
            found.add((pid, started))
        todo += children.get(pid, [])
    return found


def alive(process: tuple[int, int]) -> bool:
    return start_time(process[0]) == process[1]


@dataclass
class Stack:
    """A running `apex-testkit stack` and what it started."""

    process: subprocess.Popen[str]
    target: Path
    run_dir: Path

    def recorded(self) -> dict[str, tuple[int, int]]:
        """The processes its run recorded, by resource name."""
        found = {}
        for record in (self.run_dir / "resources").glob("*.json"):
            data = json.loads(record.read_text())
            if data["kind"] == "process":
                found[record.stem] = (int(data["pid"]), int(data["started"]))
        return found

    def service_urls(self) -> list[str]:
        text = self.target.read_text()
        return [line.split('"')[1] for line in text.splitlines() if line.startswith("url")]


def runs_env() -> dict[str, str]:
    """The stack's environment; its runs go where this run's do (pytest's tmp_path is
    mode 0700: as root, PostgreSQL's own user could not reach a data directory there)."""
    tmpdir = os.environ.get("APEX_TEST_TMPDIR")
    return inner_env(**({"APEX_TEST_TMPDIR": tmpdir} if tmpdir else {}))


def runs_dir() -> Path:
    return base_dir()


@pytest.fixture
def start_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Start `apex-testkit stack [-- COMMAND]`; wait until its target file is written."""
    started: list[subprocess.Popen[str]] = []

    def start(*command: str, sigint_ignored: bool = False) -> Stack:
        target = tmp_path / "target.toml"
        argv = [str(Path(sys.executable).with_name("apex-testkit")), "stack"]
        argv += [f"--target-out={target}", *(["--", *command] if command else [])]

        def background() -> None:  # what a script's `cmd &` gets (no job control)
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        process = subprocess.Popen(
            argv,
            env=runs_env(),
            stdin=subprocess.DEVNULL,  # not a terminal's foreground job: signals are ours
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=background if sigint_ignored else None,
        )
        started.append(process)
        wait_for(
            lambda: target.is_file() or process.poll() is not None,
            timeout=READY_TIMEOUT,
            message="the stack's target file",
        )
        assert process.poll() is None, process.communicate()[0]
        (run_dir,) = runs_dir().glob(f"run-{process.pid}-*")
        return Stack(process, target, run_dir)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()  # its watchdog cleans up
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def stop_and_check(stack: Stack, sig: signal.Signals) -> str:
    """Send `sig`, then check: a clean exit, nothing left running, no run directory."""
    everything = descendants(stack.process.pid) | set(stack.recorded().values())
    assert stack.recorded(), "the run recorded no process"

    stack.process.send_signal(sig)
    output, _ = stack.process.communicate(timeout=GONE_TIMEOUT + 30)

    assert stack.process.returncode == 128 + sig, output  # its own exit, not death by sig
    assert f"stopping ({sig.name})" in output
    assert "stopped and cleaned up" in output
    assert not stack.run_dir.exists(), output  # removed by the stack, not its watchdog
    wait_for(
        lambda: not any(alive(p) for p in everything),
        timeout=GONE_TIMEOUT,
        message=lambda: f"processes left: {sorted(p for p in everything if alive(p))}",
    )
    for url in stack.service_urls():
        with pytest.raises(httpx.TransportError):
            httpx.get(url.replace("ws://", "http://") + "/healthz", timeout=2)
    return output


@pytest.mark.parametrize(
    ("sig", "sigint_ignored", "command"),
    [
        # Ctrl-C of `apex-testkit stack` (until Ctrl-C, as documented)
        (signal.SIGINT, False, ()),
        # `kill -INT` of `apex-testkit stack -- COMMAND &` in a script: COMMAND inherits
        # SIGINT ignored, yet stops when the stack passes SIGINT on
        (signal.SIGINT, True, PAUSE),
        # `kill` of a background stack
        (signal.SIGTERM, True, ()),
        # `kill` of `apex-testkit stack -- COMMAND`
        (signal.SIGTERM, False, PAUSE),
    ],
    ids=["sigint", "sigint-background-command", "sigterm-background", "sigterm-command"],
)
def test_a_signal_stops_the_stack_and_leaves_nothing(
    start_stack: Callable[..., Stack],
    sig: signal.Signals,
    sigint_ignored: bool,
    command: list[str],
) -> None:
    stack = start_stack(*command, sigint_ignored=sigint_ignored)
    if command:  # recorded in the run like every process the kit starts
        wait_for(lambda: "command" in stack.recorded(), timeout=30, message="command recorded")

    stop_and_check(stack, sig)


def test_kill_9_of_the_stack_takes_its_command_with_it(start_stack: Callable[..., Stack]) -> None:
    stack = start_stack(*PAUSE)
    wait_for(lambda: "command" in stack.recorded(), timeout=30, message="command recorded")
    command = stack.recorded()["command"]
    everything = descendants(stack.process.pid) | set(stack.recorded().values())
    # Without the watchdog (which would stop the recorded command too), only the kernel's
    # parent-death signal (PR_SET_PDEATHSIG) can end the command.
    kill_watchdog_of(stack)

    stack.process.kill()  # SIGKILL: no handler, no teardown in the stack
    stack.process.communicate()

    wait_for(lambda: not alive(command), timeout=GONE_TIMEOUT, message="the command to die")
    # What the dead run left (its servers, apex.stack) goes with the next run's sweep.
    sweep = [str(Path(sys.executable).with_name("apex-testkit")), "sweep"]
    subprocess.run(sweep, env=runs_env(), check=True, capture_output=True, timeout=GONE_TIMEOUT)
    assert not stack.run_dir.exists()
    wait_for(
        lambda: not any(alive(p) for p in everything),
        timeout=GONE_TIMEOUT,
        message=lambda: f"processes left: {sorted(p for p in everything if alive(p))}",
    )


def kill_watchdog_of(stack: Stack) -> None:
    """SIGKILL the watchdog the stack's run started (a child of the stack)."""
    (watchdog,) = [
        process
        for process in descendants(stack.process.pid)
        if b"_watchdog" in cmdline(process[0]) and bytes(stack.run_dir) in cmdline(process[0])
    ]
    os.kill(watchdog[0], signal.SIGKILL)
    wait_for(lambda: not alive(watchdog), timeout=10, message="the watchdog to die")


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
