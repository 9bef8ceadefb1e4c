"""Duration sharding: test keys, the greedy split, shard counts, durations from JUnit, and
the CI plan's shard jobs (tools/shards.py, tools/plan_matrix.py)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

from tools import plan_matrix, shards

AREAS = {"auth_tests": "auth", "ws_tests": "ws"}


def test_a_test_has_the_same_key_in_every_venv_and_in_junit() -> None:
    venv = ".nox/l2-auth/lib/python3.12/site-packages/auth_tests/test_login.py::TestX::test_y[a b]"
    plain = "auth_tests/test_login.py::TestX::test_y[a b]"
    junit = (".nox.l2.lib.python3.11.site-packages.auth_tests.test_login.TestX", "test_y[a b]")

    assert shards.key_of_nodeid(venv) == shards.key_of_nodeid(plain)
    assert shards.key_of_nodeid(plain) == shards.key_of_junit(*junit)
    assert shards.key_of_junit(*junit) == "auth_tests.test_login::TestX::test_y[a b]"
    assert shards.key_of_junit("services.tests.test_keys", "test_k") == (
        shards.key_of_nodeid("services/tests/test_keys.py::test_k")
    )


def test_every_test_lands_in_exactly_one_shard_and_the_shards_are_balanced() -> None:
    durations = {f"t{n}": float(n) for n in range(1, 10)}  # 45 s in all
    tests = list(durations)

    plan = shards.assign(tests, durations, 3)

    placed = [t for shard in plan.shards for t in shard]
    assert sorted(placed) == sorted(tests)
    assert len(placed) == len(set(placed))
    # Longest first onto the lightest: within one test's length of each other.
    assert plan.seconds == (16.0, 15.0, 14.0)
    assert max(plan.seconds) - min(plan.seconds) <= max(durations.values())
    for shard, seconds in zip(plan.shards, plan.seconds, strict=True):
        assert sum(durations[t] for t in shard) == seconds


def test_a_shard_keeps_the_collection_order_and_the_split_is_deterministic() -> None:
    durations = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 4.0}

    first = shards.assign(["d", "a", "c", "b"], durations, 2)

    assert first == shards.assign(["d", "a", "c", "b"], durations, 2)
    order = ["d", "a", "c", "b"]
    for shard in first.shards:
        assert list(shard) == sorted(shard, key=order.index)


def test_unknown_tests_go_to_the_lightest_shard_weighing_the_mean() -> None:
    durations = {"long": 10.0, "short": 2.0}  # mean 6 s

    plan = shards.assign(["long", "short", "new"], durations, 2)

    assert plan.shards == (("long",), ("short", "new"))
    assert plan.seconds == (10.0, 8.0)


def test_new_tests_spread_over_the_shards() -> None:
    durations = {"a": 3.0, "b": 3.0}

    plan = shards.assign(["a", "b", "n1", "n2", "n3", "n4"], durations, 2)

    assert [len(shard) for shard in plan.shards] == [3, 3]


def test_without_any_duration_tests_are_dealt_out_evenly() -> None:
    plan = shards.assign(["a", "b", "c", "d"], {}, 2)

    assert sorted(len(shard) for shard in plan.shards) == [2, 2]


@pytest.mark.parametrize(
    ("seconds", "tests", "expected"),
    [(100.0, 50, 1), (480.0, 50, 1), (481.0, 50, 2), (2000.0, 50, 5), (2000.0, 3, 3)],
)
def test_shard_count_keeps_each_shard_within_the_budget(
    seconds: float, tests: int, expected: int
) -> None:
    assert shards.shard_count(seconds, 480.0, tests) == expected


def test_shard_count_is_capped() -> None:
    assert shards.shard_count(100_000.0, 480.0, 1000, max_shards=8) == 8
    with pytest.raises(ValueError, match="budget must be positive"):
        shards.shard_count(10.0, 0.0, 3)


@pytest.mark.parametrize("text", ["0/3", "4/3", "2", "a/b", "2/", "/3", ""])
def test_a_bad_shard_names_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match="I/N"):
        shards.parse_shard(text)


def test_parse_shard() -> None:
    assert shards.parse_shard("2/3") == (2, 3)


def write_junit(path: Path, cases: list[tuple[str, str, float]], mtime: float) -> Path:
    body = "".join(f'<testcase classname="{c}" name="{n}" time="{t}"/>' for c, n, t in cases)
    path.write_text(f'<testsuites><testsuite name="pytest">{body}</testsuite></testsuites>')
    os.utime(path, (mtime, mtime))
    return path


def test_an_aggregate_run_counts_for_the_per_area_sessions(tmp_path: Path) -> None:
    prefix = ".nox.l2.lib.python3.11.site-packages."
    junit = write_junit(
        tmp_path / "l2.xml",
        [
            (prefix + "auth_tests.test_a", "test_1", 1.5),
            (prefix + "ws_tests.test_b", "test_2", 2.0),
        ],
        1000,
    )

    assert shards.junit_durations(junit, AREAS) == {
        "l2-auth": {"auth_tests.test_a::test_1": 1.5},
        "l2-ws": {"ws_tests.test_b::test_2": 2.0},
    }


def test_a_shard_jobs_file_counts_for_its_session(tmp_path: Path) -> None:
    junit = write_junit(tmp_path / "l2-ws-2of3.xml", [("ws_tests.test_b", "test_2", 2.0)], 1000)

    assert shards.junit_durations(junit, AREAS) == {"l2-ws": {"ws_tests.test_b::test_2": 2.0}}


def test_refresh_keeps_the_newest_run_of_each_test_and_what_no_file_mentions(
    tmp_path: Path,
) -> None:
    older = write_junit(tmp_path / "l2.xml", [("auth_tests.test_a", "test_1", 9.0)], 1000)
    newer = write_junit(
        tmp_path / "l2-auth.xml",
        [("auth_tests.test_a", "test_1", 1.0), ("auth_tests.test_a", "test_2", 2.0)],
        2000,
    )
    stored = {"l2-auth": {"auth_tests.test_gone::test_0": 4.0}, "unit": {"x::y": 1.0}}

    merged = shards.refresh(stored, [newer, older], AREAS)

    assert merged == {
        "l2-auth": {
            "auth_tests.test_a::test_1": 1.0,
            "auth_tests.test_a::test_2": 2.0,
            "auth_tests.test_gone::test_0": 4.0,
        },
        "unit": {"x::y": 1.0},
    }


def test_durations_file_round_trips_and_a_missing_one_is_empty(tmp_path: Path) -> None:
    path = tmp_path / ".ci" / "durations.json"
    assert shards.load_durations(path) == {}

    shards.save_durations(path, {"unit": {"x::y": 1.25}})

    assert shards.load_durations(path) == {"unit": {"x::y": 1.25}}


def test_refresh_command_writes_the_durations_file(tmp_path: Path) -> None:
    junit = write_junit(tmp_path / "unit.xml", [("services.tests.test_k", "test_1", 3.0)], 1000)
    out = tmp_path / "durations.json"

    assert shards.main(["refresh", str(junit), f"--durations={out}"]) == 0

    assert shards.load_durations(out) == {"unit": {"services.tests.test_k::test_1": 3.0}}


# -- the CI plan ----------------------------------------------------------------------

LISTING = [
    {"name": "l2-ws", "tags": ["l2", "ws", "shardable"]},
    {"name": "l2-auth", "tags": ["l2", "auth", "shardable"]},
    {"name": "lint", "tags": ["ci-once"]},
]


def test_a_session_over_the_budget_becomes_balanced_shards() -> None:
    durations = {"l2-ws": {f"ws_tests.test_{n}::test": 100.0 for n in range(6)}}

    matrix = plan_matrix.plan(LISTING, ["3.11"], durations, budget=250.0)

    ws = [job for job in matrix["include"] if job["session"] == "l2-ws"]
    assert [(j["shard"], j["job"], j["expected_seconds"]) for j in ws] == [
        ("1/3", "l2-ws-1of3", 200.0),
        ("2/3", "l2-ws-2of3", 200.0),
        ("3/3", "l2-ws-3of3", 200.0),
    ]


def test_sessions_without_durations_or_within_budget_run_whole() -> None:
    durations = {"l2-auth": {"auth_tests.test_a::test": 30.0}}

    matrix = plan_matrix.plan(LISTING, ["3.11", "3.12"], durations, budget=250.0)

    assert [
        (j["session"], j["python"], j["shard"], j["expected_seconds"]) for j in matrix["include"]
    ] == [
        ("l2-ws", "3.11", "", None),
        ("l2-ws", "3.12", "", None),
        ("l2-auth", "3.11", "", 30.0),
        ("l2-auth", "3.12", "", 30.0),
        ("lint", "3.11", "", None),
    ]


def test_a_session_that_cannot_take_a_shard_runs_whole_however_long() -> None:
    listing = [{"name": "clickhouse-compat", "tags": ["ci-once"]}]
    durations = {"clickhouse-compat": {f"t{n}::x": 100.0 for n in range(9)}}

    (job,) = plan_matrix.plan(listing, ["3.11"], durations, budget=250.0)["include"]

    assert (job["shard"], job["expected_seconds"]) == ("", 900.0)


def test_the_job_summary_lists_jobs_and_expected_seconds() -> None:
    durations = {"l2-ws": {f"ws_tests.test_{n}::test": 100.0 for n in range(6)}}
    matrix = plan_matrix.plan(LISTING, ["3.11"], durations, budget=250.0)

    text = plan_matrix.summary(matrix, 250.0)

    assert "| `l2-ws 2/3` | 3.11 | 200 s |" in text
    assert "| `l2-auth` | 3.11 | unknown |" in text


def test_main_reads_the_durations_file_and_appends_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    durations = tmp_path / "durations.json"
    shards.save_durations(durations, {"l2-ws": {f"ws_tests.t{n}::t": 100.0 for n in range(4)}})
    summary = tmp_path / "summary.md"
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(LISTING)))

    args = ["--python=3.11", f"--durations={durations}", "--budget=250", f"--summary={summary}"]
    assert plan_matrix.main(args) == 0

    matrix = json.loads(capsys.readouterr().out)
    assert [j["shard"] for j in matrix["include"] if j["session"] == "l2-ws"] == ["1/2", "2/2"]
    assert "`l2-ws 1/2`" in summary.read_text(encoding="utf-8")


def test_the_checked_in_durations_name_only_sessions_ci_knows() -> None:
    # .ci/durations.json is refreshed from JUnit files; aggregates are split per area.
    stored = shards.load_durations(Path(__file__).parents[2] / shards.DURATIONS)
    assert stored, ".ci/durations.json is missing or empty"
    assert not {"l2", "l3", "l4"} & set(stored)
