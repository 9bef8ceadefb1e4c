"""`apex_testkit.bench_report`: what every team's benchmarks write and print."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apex_testkit import Level, bench_report


def test_sections_merge_into_one_file_with_the_level_and_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APEX_BENCH_DIR", str(tmp_path / "bench"))
    first = bench_report("team", "one", {"rows": 3, "rate": 1234.5}, Level.L3)
    second = bench_report("team", "two", {"rows": 4}, Level.L2)
    assert first == second == tmp_path / "bench" / "team.json"
    data = json.loads(first.read_text())
    assert sorted(data) == ["one", "two"]
    assert (data["one"]["level"], data["one"]["rows"], data["one"]["rate"]) == ("L3", 3, 1234.5)
    assert data["two"]["level"] == "L2"
    assert {"cpus", "loadavg_1min"} <= set(data["one"])
    shown = capsys.readouterr().out
    assert "== team benchmark: one (L3" in shown
    assert "1,234.500" in shown


@pytest.mark.parametrize("name", ["", "../up", ".hidden"])
def test_a_name_that_is_not_a_file_name_is_refused(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APEX_BENCH_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="is not a report name"):
        bench_report(name, "section", {"rows": 1}, Level.L2)
    assert list(tmp_path.iterdir()) == []
