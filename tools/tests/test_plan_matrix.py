"""tools/plan_matrix.py against listings captured from the real `nox -l --json`.

data/nox_list.json: this repo (auth only); data/nox_list_two_packages.json: the same
noxfile with a second package (ws_tests) beside auth_tests; data/nox_list_force_python.json:
the listing under --force-python 3.12; data/nox_list_default.json: plain `nox -l --json`;
data/nox_list_collect.json: two packages and the parametrized `collect` session.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tools import plan_matrix

DATA = Path(__file__).parent / "data"
PYTHONS = ["3.11", "3.12"]


def listing(name: str) -> list[dict[str, Any]]:
    return json.loads((DATA / name).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def jobs(matrix: dict[str, Any]) -> list[tuple[str, str]]:
    return [(job["session"], job["python"]) for job in matrix["include"]]


def test_every_level_session_and_unit_run_on_every_python() -> None:
    matrix = plan_matrix.plan(listing("nox_list.json"), PYTHONS)

    for session in ("l2-auth", "l3-auth", "l4-auth", "unit"):
        assert [p for s, p in jobs(matrix) if s == session] == PYTHONS


def test_lint_and_selftest_run_once_on_the_first_python() -> None:
    matrix = plan_matrix.plan(listing("nox_list.json"), PYTHONS)

    assert [(s, p) for s, p in jobs(matrix) if s in {"lint", "selftest"}] == [
        ("selftest", "3.11"),
        ("lint", "3.11"),
    ]


def test_a_new_package_joins_the_matrix_without_edits() -> None:
    matrix = plan_matrix.plan(listing("nox_list_two_packages.json"), PYTHONS)

    sessions = {s for s, _ in jobs(matrix)}
    assert {"l2-ws", "l3-ws", "l4-ws", "l2-auth", "l3-auth", "l4-auth"} <= sessions
    assert len(jobs(matrix)) == len(set(jobs(matrix))) == 6 * 2 + 2 + 2


def test_a_parametrized_session_is_one_job_run_by_its_name() -> None:
    # `collect(auth)`, `collect(ws)`: `nox -s collect` runs both in one job.
    matrix = plan_matrix.plan(listing("nox_list_collect.json"), PYTHONS)

    assert [(s, p) for s, p in jobs(matrix) if s.startswith("collect")] == [("collect", "3.11")]


def test_aggregates_and_local_only_sessions_are_not_jobs() -> None:
    everything = [
        {"name": name, "tags": tags}
        for name, tags in [
            ("l2", ["aggregate"]),
            ("coverage", ["report"]),
            ("stack", ["dev"]),
            ("ci", []),
            ("bench", ["perf"]),
            ("l2-auth", ["l2", "auth"]),
        ]
    ]

    assert jobs(plan_matrix.plan(everything, PYTHONS)) == [("l2-auth", "3.11"), ("l2-auth", "3.12")]


def test_force_python_listing_uses_plain_session_names() -> None:
    # Under --force-python nox lists `l2-auth-3.12`; the job passes its own --force-python.
    matrix = plan_matrix.plan(listing("nox_list_force_python.json"), PYTHONS)

    assert ("l2-auth", "3.12") in jobs(matrix)
    assert all(not s.endswith("3.12") for s, _ in jobs(matrix))


def test_a_listing_without_ci_sessions_is_an_error() -> None:
    # Plain `nox -l --json` lists only the default sessions (here: l2): the workflow must
    # select by tag, and forgetting that must fail the plan job, not plan nothing.
    with pytest.raises(ValueError, match="no session carries a CI tag"):
        plan_matrix.plan(listing("nox_list_default.json"), PYTHONS)


def test_main_reads_stdin_and_prints_compact_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO((DATA / "nox_list.json").read_text()))

    assert plan_matrix.main(["--python", "3.11", "--python", "3.12"]) == 0

    out = capsys.readouterr().out
    assert "\n" not in out.strip()  # one line: it goes to $GITHUB_OUTPUT as matrix=<json>
    assert len(json.loads(out)["include"]) == 10


def test_main_reports_bad_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("nox > not json"))

    assert plan_matrix.main(["--python", "3.11"]) == 1
    assert "plan_matrix:" in capsys.readouterr().err
