"""--test-timeout SECONDS (env APEX_TEST_TIMEOUT; default 300, 0 = off): the time limit of
each phase of a test (setup, call, teardown).

Declared, parsed and applied here. A phase that runs past the limit fails the test (an
error in setup or teardown) with what it was waiting on: the stack of every asyncio task
of the event loop running in the test's thread, awaited chain included, and the stack of
every thread. The run goes on with the next test.

How: a real-time interval timer (setitimer, SIGALRM) whose handler raises in the main
thread, where pytest runs tests (xdist workers too), wherever the thread waits: in the
event loop's select(), on a lock, on a socket. It raises outside the coroutine that hangs,
so a task that swallows its cancellation cannot swallow it. Code that catches even that is
interrupted again every few seconds; a thread stuck in C code that never returns to
Python makes the process exit with every thread's stack on stderr (faulthandler), which
xdist reports as a crashed worker and replaces. Arming the timer costs two system calls
per phase.
"""

from __future__ import annotations

import asyncio
import faulthandler
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest

from apex_testkit._settings import SETTINGS

ENV = "APEX_TEST_TIMEOUT"
DEFAULT = 300.0
# After the first expiry: interrupt again this often, and give up on the process (exit with
# every thread's stack) after this many more intervals.
REPEAT = 5.0
GIVE_UP_AFTER = 3


class TestTimeout(pytest.fail.Exception):  # type: ignore[misc, name-defined]
    """A phase of a test ran past the limit: reported as its message (the stacks) alone."""

    __test__ = False  # not a test class, whatever its name


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("apex", "Apex test kit").addoption(
        "--test-timeout",
        dest="apex_test_timeout",
        metavar="SECONDS",
        help=f"time limit of each phase of a test (setup, call, teardown); a test past it "
        f"fails with the stacks of what it waits on (env {ENV}; default {DEFAULT:g}; 0 = off)",
    )


def parse(config: pytest.Config) -> float:
    """The option, else the env variable, else 300 s; 0 turns the limit off."""
    raw = config.getoption("apex_test_timeout") or os.environ.get(ENV) or str(DEFAULT)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise pytest.UsageError(
            f"--test-timeout/{ENV} must be a number of seconds (0 = no limit), not {raw!r}"
        )
    return seconds


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    with _limit(item, "setup"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _limit(item, "call"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    with _limit(item, "teardown"):
        return (yield)


@contextmanager
def _limit(item: pytest.Item, phase: str) -> Iterator[None]:
    """Fail `phase` of `item` if it runs past the run's limit (see the module's doc)."""
    seconds = item.config.stash[SETTINGS].test_timeout
    # SIGALRM is handled in the main thread only; a test run in another thread is left
    # alone.
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    repeat = min(seconds, REPEAT)

    def expired(signum: int, frame: FrameType | None) -> None:
        signal.setitimer(signal.ITIMER_REAL, repeat)  # again, should this one be swallowed
        raise TestTimeout(
            f"apex-testkit: {phase} of {item.nodeid} ran past the {seconds:g} s limit "
            f"(--test-timeout / {ENV}); it was waiting on:\n{waiting_on(frame)}",
            pytrace=False,
        )

    previous = signal.signal(signal.SIGALRM, expired)
    # To the process's own stderr (fd 2): pytest's sys.stderr may be an in-memory capture.
    give_up = seconds + GIVE_UP_AFTER * repeat
    faulthandler.dump_traceback_later(give_up, exit=True, file=2)
    # A run inside a test's run (pytester in process): the outer phase's timer goes on after.
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    except BaseExceptionGroup as group:
        # Several finalizers past the limit (a fixture, then the event loop that cancels
        # the task it left): one report, the first one's stacks.
        timeouts, others = group.split(TestTimeout)
        if timeouts is None or others is not None:
            raise
        raise _first(timeouts) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 0.001))


def _first(group: BaseExceptionGroup[TestTimeout]) -> TestTimeout:
    first = group.exceptions[0]
    return first if isinstance(first, TestTimeout) else _first(first)


def waiting_on(main_frame: FrameType | None) -> str:
    """The stacks of the asyncio tasks of the loop running in this thread, then of every
    thread (this one from `main_frame`, where it was interrupted)."""
    sections = []
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        sections.append("asyncio: no event loop running in the test's thread")
    else:
        tasks = asyncio.all_tasks(loop)
        sections.append(f"asyncio: {len(tasks)} task(s) of the test's event loop")
        sections += [_task_stack(task) for task in tasks]
    frames = sys._current_frames()  # the documented way to see other threads' stacks
    for thread in threading.enumerate():
        here = thread is threading.current_thread()
        frame = main_frame if here else frames.get(thread.ident or 0)
        if frame is not None:
            stack = "".join(traceback.format_stack(frame))
            sections.append(f"thread {thread.name} (most recent call last):\n{stack}")
    return "\n".join(sections)


def _task_stack(task: asyncio.Task[Any]) -> str:
    """A task's stack down the chain of what it awaits (Task.get_stack shows only the
    outermost coroutine of a suspended task), and the future at its end."""
    frames: list[FrameType] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = next(
            (
                getattr(awaited, a)
                for a in ("cr_frame", "gi_frame", "ag_frame")
                if hasattr(awaited, a)
            ),
            None,
        )
        if frame is None:
            break
        frames.append(frame)
        awaited = next(
            (
                getattr(awaited, a)
                for a in ("cr_await", "gi_yieldfrom", "ag_await")
                if hasattr(awaited, a)
            ),
            None,
        )
    stack = traceback.StackSummary.extract((f, f.f_lineno) for f in frames)
    end = f"  awaiting {awaited!r}\n" if isinstance(awaited, asyncio.Future) else ""
    return f"task {task.get_name()} ({task!r}):\n{''.join(stack.format())}{end}"
