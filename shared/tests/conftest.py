"""Selftests of apex-testkit: they run pytest inside pytest against real servers."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from apex_testkit._processes import ProcessRef
from apex_testkit._provisioning._binaries import find_binary, reap
from apex_testkit._provisioning.redis import start_redis
from apex_testkit._run import Run

pytest_plugins = ["pytester"]

INI = """
[pytest]
apex_test_packages = pkg_tests
asyncio_default_fixture_loop_scope = function
"""


def inner_env(**extra: str) -> dict[str, str]:
    """The environment of an inner pytest run: none of the outer run's xdist identity, and
    no CI variables (with CI set, pytest prints the short summary untruncated, so an
    inner run's output differs between a laptop and CI)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "APEX_TEST_")) and k not in ("CI", "BUILD_NUMBER")
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env | extra


@contextlib.contextmanager
def own_redis(run: Run, *args: str, password: str | None = None) -> Iterator[int]:
    """A Redis server of the test's own, started as the kit starts the run's (`args` after
    the kit's own), stopped and its files removed after the block; its port. `password`:
    what `args` make it want."""
    name = f"own-redis-{secrets.token_hex(3)}"

    def answers(url: str) -> bool:
        try:
            with redis.Redis.from_url(url, password=password, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    binary = str(find_binary(["redis-server", "valkey-server"]))
    started = start_redis(run, name, binary, args, answers)
    try:
        yield started.port
    finally:
        ProcessRef(started.pid, started.started).stop()
        reap(started.pid)
        run.forget(name)
        shutil.rmtree(run.path / name, ignore_errors=True)


InnerRun = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def test_package(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a module into a throwaway test package `pkg_tests`; return the project dir."""
    (tmp_path / "pytest.ini").write_text(INI)
    package = tmp_path / "pkg_tests"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").touch()

    def write(name: str, source: str) -> Path:
        (package / name).write_text(textwrap.dedent(source))
        return tmp_path

    return write


@pytest.fixture
def inner_pytest(tmp_path: Path) -> InnerRun:
    """Start `python -m pytest ARGS` in the project dir; the caller waits for it."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", *args],
            cwd=tmp_path,
            env=env or inner_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Ctrl-C reaches the inner run even when this run was started in the background
            # of a script (SIGINT ignored, and Python installs no KeyboardInterrupt handler
            # for an ignored SIGINT), as CI may start it.
            preexec_fn=_default_sigint,
        )
        started.append(process)
        return process

    yield start  # type: ignore[misc]
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    """Wait for an inner run; return its exit code and output."""
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output
