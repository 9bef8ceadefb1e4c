"""The GitHub workflows (.github/workflows/ci.yml, nightly.yml) are valid YAML, name only
nox sessions that exist, and run what README's CI section promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
NOX_SESSION = re.compile(r"nox (?:-\S+ )*-s ([\w-]+)")


def load(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the bare key `on` as true.
    found = workflow.get("on", workflow.get(True))
    assert isinstance(found, dict)
    return found


def runs(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) for step in job["steps"])


@pytest.fixture(name="sessions", scope="module")
def _sessions() -> set[str]:
    # What nox itself lists (a second import of the noxfile here would register twice);
    # `nox -l --json` lists the default sessions only, `nox -l` every one:
    # `- l2-auth [l2,auth,shardable] -> ...`, `- collect(area='auth') [ci-once] -> ...`.
    command = [sys.executable, "-m", "nox", "-l", "-f", str(ROOT / "noxfile.py")]
    listing = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"^[*-] ([\w-]+)", listing, re.MULTILINE))


@pytest.mark.parametrize("name", ["ci.yml", "nightly.yml"])
def test_every_nox_session_a_workflow_runs_exists(name: str, sessions: set[str]) -> None:
    workflow = load(name)
    named = {m for job in workflow["jobs"].values() for m in NOX_SESSION.findall(runs(job))}

    assert named, f"{name} runs no nox session by name"
    assert named <= sessions, f"{name} names sessions the noxfile lacks: {named - sessions}"


def test_ci_plans_shards_and_passes_them_to_the_session() -> None:
    jobs = load("ci.yml")["jobs"]

    assert "--durations .ci/durations.json" in runs(jobs["plan"])
    assert "--summary" in runs(jobs["plan"])
    assert '--shard "$SHARD"' in runs(jobs["test"])
    assert "matrix.job" in str(jobs["test"]["steps"])  # artifact names without `/`


def test_ci_publishes_the_report_after_the_matrix() -> None:
    report = load("ci.yml")["jobs"]["report"]

    assert report["needs"] == "test"
    assert "nox -s report" in runs(report)


def test_the_fast_lane_runs_affected_tests_on_pull_requests_only() -> None:
    ci = load("ci.yml")
    jobs = ci["jobs"]

    assert {"push", "pull_request"} <= set(triggers(ci))
    assert jobs["fast-lane"]["if"] == "${{ github.event_name == 'pull_request' }}"
    assert "nox -s affected -- --base" in runs(jobs["fast-lane"])
    assert jobs["affected-map"]["if"] == "${{ github.event_name == 'push' }}"
    assert "nox -s affected -- --record" in runs(jobs["affected-map"])
    # The full matrix is not limited to pull requests: main pushes run it.
    assert "if" not in jobs["test"]


def test_nightly_runs_l3_bench_flakes_and_publishes_the_report() -> None:
    nightly = load("nightly.yml")
    (job,) = nightly["jobs"].values()
    text = runs(job)

    assert {"schedule", "workflow_dispatch"} <= set(triggers(nightly))
    for command in ("nox -s l3", "nox -s bench", "nox -s flakes -- 5 l2", "nox -s report"):
        assert command in text
    assert text.index("nox -s flakes") < text.index("nox -s report")
    uploads = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload")]
    assert [s["with"]["path"] for s in uploads] == ["reports/"]
