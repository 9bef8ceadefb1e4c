"""Where the report's inputs live in this repository, and how they are read."""

from __future__ import annotations

import tomllib
from pathlib import Path

__all__ = [
    "BENCH_HISTORY",
    "CATALOGUE",
    "FLAKES",
    "JUNIT_DIR",
    "OUT_DIR",
    "junit_files",
    "package_teams",
]

ROOT = Path(__file__).resolve().parents[2]
# A copy of the user's catalogue (kept beside the repository with the design notes).
CATALOGUE = ROOT / "docs" / "CATALOGUE.md"
OUT_DIR = Path("reports")
JUNIT_DIR = OUT_DIR / "junit"
FLAKES = OUT_DIR / "flakes.json"
BENCH_HISTORY = OUT_DIR / "bench" / "history.jsonl"


def junit_files(directory: Path) -> list[Path]:
    """Every `*.xml` of the directory, by name; none is an empty list."""
    return sorted(directory.glob("*.xml")) if directory.is_dir() else []


def package_teams(root: Path = ROOT) -> dict[str, str]:
    """Test package module -> team, from each `packages/*/pyproject.toml`: the module of its
    `apex_test_packages` entry point and its `[tool.apex] team`."""
    teams = {}
    for pyproject in sorted(root.glob("packages/*/pyproject.toml")):
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        entries = data.get("project", {}).get("entry-points", {}).get("apex_test_packages", {})
        team = data.get("tool", {}).get("apex", {}).get("team")
        if not entries or not team:
            continue
        for module in entries.values():
            teams[str(module).split(":")[0]] = str(team)
    return teams
