"""Test packages: declared levels and BVJ, level selection, reports."""

from __future__ import annotations

from pathlib import Path

from conftest import finish

DECLARED = """
import pytest

bvj = pytest.mark.bvj(segment="mid", goal="Retention", mrr=8000, scenario="001#10")

@pytest.mark.L2
@pytest.mark.L3
@bvj
def test_l2_and_l3():
    pass

@pytest.mark.L3
@bvj
def test_l3_only():
    pass

@pytest.mark.L4
@pytest.mark.destructive
@bvj
def test_destructive_l4():
    pass

@pytest.mark.L2
@pytest.mark.perf
@bvj
def test_benchmark():
    pass
"""


def test_undeclared_tests_are_collection_errors_naming_them(test_package, inner_pytest):
    project = test_package(
        "test_bad.py",
        """
        import pytest

        def test_without_anything():
            pass

        @pytest.mark.L2
        @pytest.mark.bvj(segment="mid", goal="x", scenario="001#10")
        def test_without_mrr():
            pass

        @pytest.mark.L2
        @pytest.mark.bvj(segment="galactic", goal="x", mrr=1, scenario="someday")
        def test_with_bad_values():
            pass
        """,
    )
    code, out = finish(inner_pytest(str(project)))
    assert code == 2, out  # interrupted: errors during collection
    assert "ERROR collecting pkg_tests/test_bad.py" in out
    assert "test_bad.py::test_without_anything: no level marker" in out
    assert "test_bad.py::test_without_anything: no bvj(" in out
    assert "test_bad.py::test_without_mrr: bvj needs keyword arguments" in out
    assert "'galactic' is not one of" in out
    assert "'someday' is not a catalogue id" in out


def test_tests_outside_test_packages_need_no_markers(pytester):
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=1)


def _selected(out: str) -> set[str]:
    return {line.split("::")[1].split()[0] for line in out.splitlines() if " PASSED" in line}


def test_level_selects_the_tests_marked_for_it(test_package, inner_pytest):
    project = test_package("test_levels.py", DECLARED)
    code, out = finish(inner_pytest(str(project), "-v", "--level", "L3"))
    assert code == 0, out
    assert _selected(out) == {"test_l2_and_l3", "test_l3_only"}

    code, out = finish(inner_pytest(str(project), "-v"))  # L2 is the default
    assert _selected(out) == {"test_l2_and_l3"}, out


def test_level_from_environment(test_package, inner_pytest):
    from conftest import inner_env

    project = test_package("test_levels.py", DECLARED)
    _code, out = finish(inner_pytest(str(project), "-v", env=inner_env(APEX_TEST_LEVEL="L3")))
    assert _selected(out) == {"test_l2_and_l3", "test_l3_only"}, out


def test_destructive_tests_never_run_at_l4(test_package, inner_pytest, tmp_path: Path):
    project = test_package("test_levels.py", DECLARED)
    target = tmp_path / "target.toml"
    target.write_text('[services.auth]\nurl = "http://127.0.0.1:9"\n')
    code, out = finish(inner_pytest(str(project), "-v", "--level", "L4", "--target", str(target)))
    assert "test_destructive_l4" not in _selected(out)
    assert "4 deselected" in out, out
    assert code == 5, out  # nothing left to run


def test_benchmarks_run_only_with_perf(test_package, inner_pytest):
    project = test_package("test_levels.py", DECLARED)
    code, out = finish(inner_pytest(str(project), "-v", "--perf", "-m", "perf"))
    assert code == 0, out
    assert _selected(out) == {"test_benchmark"}


def test_bad_level_is_a_usage_error(test_package, inner_pytest):
    project = test_package("test_levels.py", DECLARED)
    code, out = finish(inner_pytest(str(project), "--level", "L9"))
    assert code == 4, out
    assert "--level/APEX_TEST_LEVEL must be one of L2, L3, L4, not 'L9'" in out


def test_bvj_reaches_the_junit_report(test_package, inner_pytest, tmp_path: Path):
    project = test_package("test_levels.py", DECLARED)
    code, out = finish(inner_pytest(str(project), f"--junitxml={tmp_path / 'junit.xml'}"))
    assert code == 0, out
    xml = (tmp_path / "junit.xml").read_text()
    assert '<property name="bvj_scenario" value="001#10"' in xml
    assert '<property name="bvj_mrr" value="8000"' in xml


def test_every_bvj_marker_of_a_test_reaches_the_junit_report(
    test_package, inner_pytest, tmp_path: Path
):
    project = test_package(
        "test_two.py",
        """
        import pytest

        @pytest.mark.L2
        @pytest.mark.bvj(segment="mid", goal="a", mrr=100, scenario="001#10")
        @pytest.mark.bvj(segment="enterprise", goal="b", mrr=200, scenario="001#11")
        def test_two_scenarios():
            pass
        """,
    )
    code, out = finish(inner_pytest(str(project), f"--junitxml={tmp_path / 'junit.xml'}"))
    assert code == 0, out
    xml = (tmp_path / "junit.xml").read_text()
    assert '<property name="bvj_scenario" value="001#10"' in xml
    assert '<property name="bvj_scenario" value="001#11"' in xml
    assert '<property name="bvj_mrr" value="200"' in xml
