"""What the README promises about each team's test package holds for every package, and
every dist (kit, platform, packages) has a changelog section for its version.

A team adds a package by copying packages/auth_tests; these checks name what is
missing instead of letting CI, coverage or ownership silently skip the package.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
PYPROJECTS = sorted(ROOT.glob("packages/*/pyproject.toml"))
# Every distribution of the repo: the kit, the platform, the test packages.
DISTS = [ROOT / "shared", ROOT / "services", *(p.parent for p in PYPROJECTS)]


def load(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def codeowners() -> dict[str, list[str]]:
    owners = {}
    for line in (ROOT / ".github" / "CODEOWNERS").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            pattern, *teams = line.split()
            owners[pattern] = teams
    return owners


def test_there_is_at_least_one_package() -> None:
    assert PYPROJECTS


@pytest.fixture(name="package", params=PYPROJECTS, ids=lambda p: p.parent.name)
def _package(request: pytest.FixtureRequest) -> Path:
    return request.param.parent  # type: ignore[no-any-return]


def test_package_declares_team_area_and_fixtures(package: Path) -> None:
    data = load(package / "pyproject.toml")
    project = data["project"]
    module = package.name

    assert data["tool"]["apex"]["team"], "[tool.apex] team = ... is missing"
    assert project["entry-points"]["apex_test_packages"] == {module.removesuffix("_tests"): module}
    assert project["entry-points"]["pytest11"] == {module: f"{module}.fixtures"}
    assert project["name"] == f"apex-{module.removesuffix('_tests')}-tests"
    assert project["version"]
    assert any(dep.startswith("apex-testkit") for dep in project["dependencies"])
    assert (package / "src" / module / "__init__.py").is_file()


def test_package_has_a_readme(package: Path) -> None:
    assert (package / "README.md").is_file()


@pytest.mark.parametrize("dist", DISTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_dist_has_a_changelog_section_for_its_version(dist: Path) -> None:
    # Every dist is released on its own: the kit, the platform and each team's package.
    project = load(dist / "pyproject.toml")["project"]
    changelog = dist / "CHANGELOG.md"
    assert changelog.is_file(), f"{project['name']}: {changelog.relative_to(ROOT)} is missing"
    version = re.escape(project["version"])
    # `## 0.2.0` or Keep a Changelog's `## [0.2.0] - 2026-01-31`.
    section = re.compile(rf"^## \[?{version}\]?(?:\s|$)", re.MULTILINE)
    assert section.search(changelog.read_text(encoding="utf-8")), (
        f"{changelog.relative_to(ROOT)} has no '## {project['version']}' section "
        f"for {project['name']} {project['version']}"
    )


def test_package_is_owned_by_its_team(package: Path) -> None:
    team = load(package / "pyproject.toml")["tool"]["apex"]["team"]
    assert codeowners().get(f"/packages/{package.name}/") == [f"@apex/{team}"]


def test_package_code_is_measured_and_mapped_back(package: Path) -> None:
    coverage = load(ROOT / "pyproject.toml")["tool"]["coverage"]
    module = package.name
    assert module in coverage["run"]["source_pkgs"]
    assert coverage["paths"][module] == [
        f"packages/{module}/src/{module}",
        f"*/site-packages/{module}",
    ]
