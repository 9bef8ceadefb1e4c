"""`python -m apex.stack` stops on SIGINT and SIGTERM and leaves no child behind.

Started in the foreground, and in the background of a shell script: a background job
of a non-interactive shell starts with SIGINT ignored, and Python then installs no
KeyboardInterrupt handler, so the stack must install its own. Each case runs the real
stack (auth and gateway as processes) on the kit's Redis and PostgreSQL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apex import topology
from apex_testkit import wait_for

STARTUP_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0
# How the test starts the stack: through `sh -c SCRIPT sh python -m apex.stack ...`;
# each script prints the stack's PID first, and sh exits with the stack's exit code.
LAUNCHERS = {
    # The shell becomes the stack: signals as the test process has them.
    "foreground": 'echo $$; exec "$@"',
    # An asynchronous list of a non-interactive shell: SIGINT and SIGQUIT ignored.
    "background": '"$@" & echo $!; wait $!',
}
# (launcher, signal, whole process group: as a terminal's Ctrl-C is sent)
CASES = [
    ("foreground", signal.SIGINT, False),
    ("foreground", signal.SIGTERM, False),
    ("foreground", signal.SIGINT, True),
    ("background", signal.SIGINT, False),
    ("background", signal.SIGTERM, False),
]
_READY = re.compile(r"apex\.stack: ready: (.*); manifest ")
_CHILD = re.compile(r"(\w+) at \S+ \(pid (\d+)\)")


@pytest.fixture(name="stack_env")
def _stack_env(redis_namespace: Any, postgres_database: str) -> dict[str, str]:
    return {
        **os.environ,
        "APEX_DATABASE_URL": postgres_database,
        "APEX_REDIS_URL": redis_namespace.url,
        "APEX_REDIS_PREFIX": f"{redis_namespace.prefix}stack-signals:",
        "APEX_ADMIN_TOKEN": "stack-signals-admin",
        "APEX_LOG_LEVEL": "WARNING",
        # apex.agents needs a provider's address to start (it calls none until a run).
        "APEX_LLM_BASE_URL": "http://127.0.0.1:9/v1",
        "APEX_LLM_API_KEY": "stack-signals-unused",
        # apex.billing likewise needs its payment provider's (it calls none until asked).
        "APEX_PAYMENTS_BASE_URL": "http://127.0.0.1:9",
        "APEX_PAYMENTS_API_KEY": "sk_test_stack_signals_unused",
        "APEX_PAYMENTS_WEBHOOK_SECRET": "whsec_stack_signals_unused",
    }


class Stack:
    """One `python -m apex.stack` started through a shell launcher."""

    def __init__(self, launcher: str, env: dict[str, str], workdir: Path) -> None:
        self.manifest = workdir / "stack.toml"
        self.log = workdir / "stack.log"
        command = [sys.executable, "-m", "apex.stack", "--manifest", str(self.manifest)]
        with self.log.open("wb") as log:
            self.shell = subprocess.Popen(
                ["sh", "-c", LAUNCHERS[launcher], "sh", *command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                # Its own process group, as a terminal gives a foreground job.
                start_new_session=True,
            )
        assert self.shell.stdout is not None
        # The launcher prints the PID before anything else: this read returns at once.
        self.pid = int(self.shell.stdout.readline())
        self.children: dict[str, int] = {}

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        """Until the manifest is written and the ready line names every child's PID."""

        def ready_line() -> str:
            if self.shell.poll() is not None:
                raise AssertionError(f"the stack exited early:\n{self.output()}")
            found = _READY.search(self.output()) if self.manifest.is_file() else None
            return found.group(1) if found else ""

        line = wait_for(
            ready_line, timeout=STARTUP_TIMEOUT, message=lambda: f"stack ready:\n{self.output()}"
        )
        self.children = {name: int(pid) for name, pid in _CHILD.findall(line)}

    def stop(self, signum: int, *, group: bool) -> int:
        if group:
            os.killpg(self.shell.pid, signum)
        else:
            os.kill(self.pid, signum)
        try:
            return self.shell.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the stack ignored {signal.Signals(signum).name}:\n{self.output()}"
            ) from None

    def kill_everything(self) -> None:
        """After a failed test: nothing this test started may outlive it."""
        for pid in [self.pid, *self.children.values()]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.shell.wait()
        if self.shell.stdout is not None:
            self.shell.stdout.close()


def _alive(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie has exited)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # The state follows the parenthesised command name, which may contain spaces.
    return status.rpartition(")")[2].split()[0] != "Z"


@pytest.fixture(name="start_stack")
def _start_stack(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    stacks: list[Stack] = []

    def start(launcher: str) -> Stack:
        stack = Stack(launcher, stack_env, tmp_path)
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        stack.kill_everything()


@pytest.mark.parametrize(
    ("launcher", "signum", "group"),
    CASES,
    ids=[
        f"{launcher}-{signum.name}{'-group' if group else ''}" for launcher, signum, group in CASES
    ],
)
def test_the_stack_stops_cleanly_on_a_signal(
    start_stack: Any, launcher: str, signum: int, group: bool
) -> None:
    stack = start_stack(launcher)
    stack.wait_ready()
    assert sorted(stack.children) == sorted(topology.SERVICES), stack.output()
    assert all(_alive(pid) for pid in stack.children.values())

    code = stack.stop(signum, group=group)

    assert code == 0, stack.output()
    # The stack waits for its children before it exits: none may be left running.
    left = {name: pid for name, pid in stack.children.items() if _alive(pid)}
    assert not left, f"children left running: {left}\n{stack.output()}"


def test_the_background_launcher_starts_its_job_with_sigint_ignored() -> None:
    """The premise of the background cases: the job inherits SIGINT as SIG_IGN."""
    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"
    result = subprocess.run(
        ["sh", "-c", LAUNCHERS["background"], "sh", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split()[1:] == ["True"]
