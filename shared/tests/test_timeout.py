"""--test-timeout / APEX_TEST_TIMEOUT: a hung test fails with what it waits on (its asyncio
tasks' stacks, every thread's stack) and the run goes on, whether it hangs in the test, in a
fixture's setup or teardown, in sync code, or on a task that swallows its cancellation."""

from __future__ import annotations

import pytest
from conftest import finish, inner_env

HANGS = """
import asyncio, signal, threading
import pytest

async def stubborn_forever():
    # What hung a gateway teardown for 13 minutes: a task that swallows its cancellation.
    while True:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass

@pytest.fixture
async def hangs_in_teardown():
    yield
    await asyncio.get_running_loop().create_task(stubborn_forever(), name="stubborn-teardown")

@pytest.fixture
def hangs_in_setup():
    threading.Event().wait()

async def test_call_hangs_on_a_stubborn_task():
    await asyncio.get_running_loop().create_task(stubborn_forever(), name="stubborn-call")

def test_setup_hangs(hangs_in_setup):
    pass

async def test_teardown_hangs(hangs_in_teardown):
    pass

def test_after_them_the_run_goes_on():
    assert signal.getitimer(signal.ITIMER_REAL)[0] > 0  # this phase is limited too
"""


def test_a_hung_test_fails_with_what_it_waits_on_and_the_run_goes_on(inner_pytest, tmp_path):
    (tmp_path / "test_hangs.py").write_text(HANGS)
    # The env variable, one of the two ways to set it, and -p no:xdist: one process.
    run = inner_pytest("-p", "no:xdist", "-rA", env=inner_env(APEX_TEST_TIMEOUT="1"))
    code, out = finish(run)
    assert code == 1, out
    # The call's stubborn task outlives the test: the event loop's teardown, which cancels
    # it, runs past the limit too (an error of its own); test_teardown_hangs's call passed.
    assert "1 failed, 2 passed, 3 errors" in out, out
    assert "PASSED test_hangs.py::test_after_them_the_run_goes_on" in out, out
    for phase, test in [
        ("call", "test_call_hangs_on_a_stubborn_task"),
        ("teardown", "test_call_hangs_on_a_stubborn_task"),
        ("setup", "test_setup_hangs"),
        ("teardown", "test_teardown_hangs"),
    ]:
        assert f"{phase} of test_hangs.py::{test} ran past the 1 s limit" in out, out
    # The dump: the stubborn task, down to the line where it waits, and the threads.
    assert "task stubborn-call" in out, out
    assert "in stubborn_forever" in out, out
    assert "await asyncio.Event().wait()" in out, out
    assert "task stubborn-teardown" in out, out
    assert "thread MainThread (most recent call last)" in out, out
    assert "in hangs_in_setup" in out, out
    assert "Exception Group" not in out, out  # several finalizers past the limit: one report


CHECKS_TIMER = """
import signal

def test_timer():
    print("timer", signal.getitimer(signal.ITIMER_REAL)[0])
"""


@pytest.mark.parametrize(
    ("option", "armed"),
    [(["--test-timeout", "0"], False), (["--test-timeout=7"], True), ([], True)],
)
def test_the_limit_is_a_setting_and_0_turns_it_off(inner_pytest, tmp_path, option, armed):
    (tmp_path / "test_timer.py").write_text(CHECKS_TIMER)
    code, out = finish(inner_pytest("-p", "no:xdist", "-s", *option))
    assert code == 0, out
    remaining = float(out.split("timer ")[1].split()[0])
    assert (remaining > 0) is armed, out
    if option == ["--test-timeout=7"]:
        assert remaining <= 7, out
    elif armed:
        assert remaining > 7, out  # the default, 300 s


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_limit_is_a_usage_error(inner_pytest, tmp_path, value):
    (tmp_path / "test_timer.py").write_text(CHECKS_TIMER)
    code, out = finish(inner_pytest("-p", "no:xdist", f"--test-timeout={value}"))
    assert code == 4, out
    assert "--test-timeout/APEX_TEST_TIMEOUT must be a number of seconds" in out, out
