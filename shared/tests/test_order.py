"""--test-order: durations recorded per run, xdist workers run the longest tests first."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from apex_testkit._options.order import duration_class, longest_first, record_key

TESTS = """
def test_short_a():
    pass

def test_long():
    pass

def test_short_b():
    pass

def test_medium():
    pass

def test_new():
    pass
"""
# What the last run took (the keys are node ids); test_new has no record.
DURATIONS = {
    "test_timed.py::test_short_a": 0.01,
    "test_timed.py::test_long": 2.5,
    "test_timed.py::test_short_b": 0.02,
    "test_timed.py::test_medium": 0.4,
}
STORED = Path(".pytest_cache/v/apex_testkit/durations/L2")


def test_keys_leave_out_the_path_to_site_packages() -> None:
    venv = ".nox/l2-db/lib/python3.11/site-packages/db_tests/test_x.py::test_y[a/b]"
    assert record_key(venv) == "db_tests/test_x.py::test_y[a/b]"
    assert record_key("tests/test_x.py::test_y") == "tests/test_x.py::test_y"


def test_duration_classes_double() -> None:
    assert [duration_class(s) for s in (0.0, 0.05, 0.099, 0.1, 0.2, 0.4, 3.2)] == [
        0, 0, 0, 1, 2, 3, 6
    ]  # fmt: skip


def test_unknown_first_then_longest_class_first_stable_inside_a_class() -> None:
    ids = ["m.py::short_b", "m.py::long", "m.py::new", "m.py::short_a", "m.py::medium"]
    durations = {"m.py::short_a": 0.01, "m.py::long": 2.5, "m.py::short_b": 0.02}
    durations["m.py::medium"] = 0.4
    order = [ids[i] for i in longest_first(ids, durations)]
    # short_b before short_a: one class (under 0.1 s), the given order kept.
    assert order == ["m.py::new", "m.py::long", "m.py::medium", "m.py::short_b", "m.py::short_a"]


def _ran(out: str) -> list[str]:
    """The tests in the order the (single) xdist worker ran them."""
    return re.findall(r"PASSED test_timed\.py::(\w+)", out)


def test_a_run_records_each_tests_duration(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_timed=TESTS)
    pytester.runpytest_subprocess("-p", "no:randomly", "-n", "1").assert_outcomes(passed=5)
    stored = json.loads((pytester.path / STORED).read_text())
    assert sorted(stored) == sorted([*DURATIONS, "test_timed.py::test_new"])
    assert all(isinstance(seconds, float) and seconds >= 0 for seconds in stored.values())
    # A later run of some tests keeps the others' records.
    (pytester.path / STORED).write_text(json.dumps({"test_timed.py::test_gone": 9.0}))
    pytester.runpytest_subprocess("-p", "no:randomly", "-k", "long").assert_outcomes(passed=1)
    stored = json.loads((pytester.path / STORED).read_text())
    assert sorted(stored) == ["test_timed.py::test_gone", "test_timed.py::test_long"]


def test_xdist_workers_run_the_longest_first(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_timed=TESTS)
    stored = pytester.path / STORED
    stored.parent.mkdir(parents=True)
    stored.write_text(json.dumps(DURATIONS))
    plain = ("-p", "no:randomly", "-n", "1", "-v")
    result = pytester.runpytest_subprocess(*plain)
    result.assert_outcomes(passed=5)
    assert _ran(result.stdout.str()) == [
        "test_new", "test_long", "test_medium", "test_short_a", "test_short_b"
    ]  # fmt: skip
    # As collected when asked, and in a run without xdist (it keeps its full shuffle).
    for run in ((*plain, "--test-order", "as-collected"), ("-p", "no:randomly", "-v")):
        stored.write_text(json.dumps(DURATIONS))
        out = pytester.runpytest_subprocess(*run).stdout.str()
        ran = re.findall(r"test_timed\.py::(\w+) PASSED", out) or _ran(out)
        assert ran == ["test_short_a", "test_long", "test_short_b", "test_medium", "test_new"]


def test_random_order_stays_random_inside_a_duration_class(pytester: pytest.Pytester) -> None:
    many = {f"test_timed.py::test_short_{i}": 0.01 for i in range(12)}
    pytester.makepyfile(test_timed="\n".join(f"def test_short_{i}(): pass" for i in range(12)))
    pytester.makepyfile(test_slow="def test_slow(): pass")
    stored = pytester.path / STORED
    stored.parent.mkdir(parents=True)
    orders = set()
    for seed in ("1", "2"):
        stored.write_text(json.dumps({**many, "test_slow.py::test_slow": 3.0}))
        result = pytester.runpytest_subprocess("-n", "1", "-v", f"--randomly-seed={seed}")
        result.assert_outcomes(passed=13)
        out = result.stdout.str()
        ran = re.findall(r"PASSED (test_\w+\.py::\w+)", out)
        assert ran[0] == "test_slow.py::test_slow", out
        orders.add(tuple(ran))
    assert len(orders) == 2  # the seeds shuffled the short ones differently
