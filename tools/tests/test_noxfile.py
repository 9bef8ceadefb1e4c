"""The noxfile's own logic: package discovery, local dependencies, tags, -j job count, xdist
sizing, import contracts."""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from tools import plan_matrix

ROOT = Path(__file__).parents[2]


@pytest.fixture(name="noxfile", scope="module")
def _noxfile() -> ModuleType:
    # Loaded once per process: xdist's worksteal can tear a module fixture down between
    # chunks of this module's tests, and a second load registers every session again.
    if (loaded := sys.modules.get("apex_noxfile")) is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("apex_noxfile", ROOT / "noxfile.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def write_package(root: Path, area: str, team: str) -> None:
    package = root / "packages" / f"{area}_tests"
    package.mkdir(parents=True)
    (package / "pyproject.toml").write_text(
        f"""
[project]
name = "apex-{area}-tests"
version = "0.1.0"
[project.entry-points.apex_test_packages]
{area} = "{area}_tests"
[tool.apex]
team = "{team}"
""",
        encoding="utf-8",
    )


def test_packages_are_discovered_from_their_pyproject(noxfile: ModuleType, tmp_path: Path) -> None:
    write_package(tmp_path, "auth", "identity")
    write_package(tmp_path, "billing", "revenue")
    (tmp_path / "packages" / "notes").mkdir()  # no pyproject: not a package

    found = noxfile.discover_packages(tmp_path)

    assert [(p.area, p.module, p.dist, p.path, p.team) for p in found] == [
        ("auth", "auth_tests", "apex-auth-tests", "./packages/auth_tests", "identity"),
        ("billing", "billing_tests", "apex-billing-tests", "./packages/billing_tests", "revenue"),
    ]


def write_dist(root: Path, path: str, name: str, *dependencies: str) -> None:
    (root / path).mkdir(parents=True)
    lines = ", ".join(f"'{d}'" for d in dependencies)  # TOML literal strings
    (root / path / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\nversion = "1.0"\ndependencies = [{lines}]\n',
        encoding="utf-8",
    )


@pytest.fixture(name="repo")
def _repo(tmp_path: Path) -> Path:
    """A repo whose ws package needs auth's, which needs the kit, which needs the platform."""
    write_dist(tmp_path, "services", "apex-platform", "fastapi>=0.115")
    write_dist(tmp_path, "shared", "apex-testkit", "pytest>=8.3", "apex-platform>=0.1")
    write_dist(tmp_path, "packages/auth_tests", "apex-auth-tests", "apex-testkit>=0.1,<0.2")
    write_dist(
        tmp_path,
        "packages/ws_tests",
        "apex-ws-tests",
        "apex-testkit>=0.1,<0.2",
        "Apex_Auth.Tests>=0.2,<0.3",  # spelled otherwise: names are compared normalized
        "websockets>=13",
        'apex-billing-tests; python_version < "3"',  # a marker that excludes it
    )
    write_dist(tmp_path, "packages/billing_tests", "apex-billing-tests")
    return tmp_path


def test_local_dists_are_named_by_their_pyproject(noxfile: ModuleType, repo: Path) -> None:
    assert noxfile.local_dists(repo) == {
        "apex-testkit": "./shared",
        "apex-platform": "./services",
        "apex-auth-tests": "./packages/auth_tests",
        "apex-billing-tests": "./packages/billing_tests",
        "apex-ws-tests": "./packages/ws_tests",
    }


def test_a_package_brings_its_local_dependencies_transitively(
    noxfile: ModuleType, repo: Path
) -> None:
    # What `nox -s l2-ws` installs: without ./packages/auth_tests uv looked
    # apex-auth-tests up in the registry and failed before any test ran.
    assert noxfile.with_local_dependencies(["./packages/ws_tests"], repo) == [
        "./packages/ws_tests",
        "./shared",
        "./packages/auth_tests",
        "./services",
    ]


def test_local_dependencies_are_listed_once_in_the_order_given(
    noxfile: ModuleType, repo: Path
) -> None:
    paths = ["./shared", "./services", "./packages/auth_tests", "./packages/ws_tests"]
    assert noxfile.with_local_dependencies(paths, repo) == paths
    assert noxfile.with_local_dependencies(["./services"], repo) == ["./services"]


def test_every_package_of_this_repo_installs_with_what_it_needs(noxfile: ModuleType) -> None:
    dists = noxfile.local_dists()
    for package in noxfile.PACKAGES:
        closure = noxfile.with_local_dependencies([package.path])
        for path in closure:
            for requirement in noxfile.local_requirements(path):
                assert requirement in closure
        assert dists[package.dist] == package.path


def test_each_package_has_one_session_per_level(noxfile: ModuleType) -> None:
    names = {s.name for s in noxfile.SESSIONS}
    for package in noxfile.PACKAGES:
        for level in ("l2", "l3", "l4"):
            assert f"{level}-{package.area}" in names


def test_a_level_tag_selects_each_package_once_and_no_aggregate(noxfile: ModuleType) -> None:
    for level in ("l2", "l3", "l4"):
        tagged = [s.name for s in noxfile.SESSIONS if level in s.tags]
        assert sorted(tagged) == sorted(f"{level}-{p.area}" for p in noxfile.PACKAGES)


def test_ci_requires_the_project_tests_in_order(noxfile: ModuleType) -> None:
    (ci,) = [s for s in noxfile.SESSIONS if s.name == "ci"]
    assert ci.requires == (
        "lint",
        "collect",
        "selftest",
        "clickhouse-compat",
        "unit",
        "l2",
        "l3",
        "l4",
    )


def test_collect_covers_every_level_session_the_matrix_plans(noxfile: ModuleType) -> None:
    listing = [{"name": s.name, "tags": list(s.tags)} for s in noxfile.SESSIONS]
    planned = {job["session"] for job in plan_matrix.plan(listing, ["3.11"])["include"]}
    levels = {name for name in planned if name.split("-")[0] in noxfile.LEVELS}
    collected = {f"{level}-{p.area}" for p in noxfile.PACKAGES for level in noxfile.LEVELS}

    assert levels == collected
    assert "collect" in planned  # a CI job of its own, besides being part of `ci`


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-s", "l2"], 1),
        (["-j", "2", "-s", "l2-auth"], 1),  # one session: it gets every core
        (["-j", "4", "-s", "lint", "selftest", "unit"], 3),
        (["--parallel=2", "-s", "ci"], 2),  # ci's requirements run side by side
        (["-j", "3", "-s", "stack"], 1),  # not parallel: runs alone
        (["-j", "8", "-k", "auth"], 8),  # -k: not evaluated, assume the worst
        (["--bogus-option"], 1),
    ],
)
def test_concurrent_sessions(noxfile: ModuleType, argv: list[str], expected: int) -> None:
    assert noxfile._concurrent_sessions(argv) == expected


def test_a_level_tag_with_jobs_counts_the_packages(noxfile: ModuleType) -> None:
    per_level = len(noxfile.PACKAGES)
    assert noxfile._concurrent_sessions(["-j", "16", "-t", "l2", "l3"]) == 2 * per_level


def test_nox_parallel_env_counts_like_the_option(
    noxfile: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOX_PARALLEL", "2")
    assert noxfile._concurrent_sessions(["-s", "selftest", "unit"]) == 2


def test_l3_sessions_get_a_worker_more_than_their_cores(noxfile: ModuleType) -> None:
    assert noxfile.level_workers("l3") == 1
    assert noxfile.level_workers("l2") == 0
    assert noxfile.level_workers("l4") == 0


@pytest.mark.parametrize(
    ("env", "posargs", "extra", "expected"),
    [
        ({}, [], 0, ["-n", "auto"]),
        ({"APEX_NOX_JOBS": "1"}, [], 0, ["-n", "auto"]),
        ({"APEX_NOX_JOBS": "2"}, [], 0, ["-n", "4"]),
        ({"APEX_NOX_JOBS": "3"}, [], 0, ["-n", "2"]),
        ({"APEX_NOX_JOBS": "16"}, [], 0, ["-n", "1"]),
        ({"APEX_NOX_JOBS": "2", "APEX_TEST_WORKERS": "7"}, [], 0, ["-n", "7"]),
        ({}, ["-n", "0"], 0, []),
        ({}, ["-n3"], 0, []),
        ({}, ["--numprocesses=3"], 0, []),
        # An L3 session's extra worker: on top of its share of the cores, never over a choice.
        ({}, [], 1, ["-n", "9"]),
        ({"APEX_NOX_JOBS": "2"}, [], 1, ["-n", "5"]),
        ({"APEX_NOX_JOBS": "16"}, [], 1, ["-n", "2"]),
        ({"APEX_TEST_WORKERS": "2"}, [], 1, ["-n", "2"]),
        ({}, ["-n", "2"], 1, []),
    ],
)
def test_xdist_workers(
    noxfile: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    posargs: list[str],
    extra: int,
    expected: list[str],
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.delenv("APEX_NOX_JOBS", raising=False)
    monkeypatch.delenv("APEX_TEST_WORKERS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert noxfile.xdist_workers(posargs, extra=extra) == expected


def test_a_target_is_given_by_option_or_env(
    noxfile: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("APEX_TEST_TARGET", raising=False)
    assert not noxfile.has_target(["-x"])
    assert noxfile.has_target(["--target", "staging.toml"])
    assert noxfile.has_target(["--target=staging.toml"])
    monkeypatch.setenv("APEX_TEST_TARGET", "staging.toml")
    assert noxfile.has_target([])


def test_import_contracts_name_each_test_package(noxfile: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        """
[tool.importlinter]
root_packages = ["apex", "*_tests"]
[[tool.importlinter.contracts]]
name = "teams"
type = "forbidden"
source_modules = ["*_tests", "apex"]
forbidden_modules = ["*_tests.*", "apex_testkit.*"]
ignore_imports = ["** -> *.client"]
allow_indirect_imports = true
""",
        encoding="utf-8",
    )
    write_package(tmp_path, "auth", "identity")
    write_package(tmp_path, "billing", "revenue")
    packages = noxfile.discover_packages(tmp_path)

    config = tomllib.loads(noxfile.import_linter_config(packages, tmp_path))

    linter = config["tool"]["importlinter"]
    assert linter["root_packages"] == ["apex", "auth_tests", "billing_tests"]
    assert linter["contracts"] == [
        {
            "name": "teams",
            "type": "forbidden",
            "source_modules": ["auth_tests", "billing_tests", "apex"],
            "forbidden_modules": ["auth_tests.*", "billing_tests.*", "apex_testkit.*"],
            "ignore_imports": ["** -> *.client"],
            "allow_indirect_imports": True,
        }
    ]


def test_every_import_contract_is_documented(noxfile: ModuleType) -> None:
    config = tomllib.loads(noxfile.import_linter_config(noxfile.PACKAGES))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Import contracts\n", 1)[1].split("\n## ", 1)[0]
    for contract in config["tool"]["importlinter"]["contracts"]:
        assert f"`{contract['id']}`" in section, f"README: no entry for {contract['id']}"
    assert "*_tests" not in str(config)


@pytest.mark.parametrize(
    ("posargs", "expected"),
    [
        ([], ["--dist=worksteal"]),
        (["-n", "1"], ["--dist=worksteal"]),
        (["--dist", "load"], []),
        (["--dist=loadfile"], []),
        (["-d"], []),
        (["-p", "no:xdist"], []),
    ],
)
def test_xdist_schedule_is_worksteal_unless_chosen(
    noxfile: ModuleType, posargs: list[str], expected: list[str]
) -> None:
    assert noxfile.xdist_schedule(posargs) == expected


@pytest.mark.parametrize(
    ("posargs", "shard", "rest"),
    [
        (["-k", "x"], None, ["-k", "x"]),
        (["--shard", "2/3", "-x"], (2, 3), ["-x"]),
        (["-x", "--shard=1/2"], (1, 2), ["-x"]),
    ],
)
def test_shard_is_taken_out_of_the_posargs(
    noxfile: ModuleType, posargs: list[str], shard: tuple[int, int] | None, rest: list[str]
) -> None:
    assert noxfile.split_shard(posargs) == (shard, rest)


@pytest.mark.parametrize(
    ("posargs", "modules", "rest"),
    [
        ([], ["agent_tests", "auth_tests", "ws_tests"], []),
        (
            ["-x", "-k", "refresh"],
            ["agent_tests", "auth_tests", "ws_tests"],
            ["-x", "-k", "refresh"],
        ),
        (["ws_tests", "-x", "auth_tests", "ws_tests"], ["ws_tests", "auth_tests"], ["-x"]),
        (["billing_tests"], ["agent_tests", "auth_tests", "ws_tests"], ["billing_tests"]),
    ],
)
def test_a_level_runs_the_packages_posargs_name(
    noxfile: ModuleType, posargs: list[str], modules: list[str], rest: list[str]
) -> None:
    packages = [
        noxfile.TestPackage(
            area, f"{area}_tests", f"apex-{area}-tests", f"./packages/{area}_tests", "t"
        )
        for area in ("agent", "auth", "ws")
    ]
    chosen, others = noxfile.chosen_packages(packages, posargs)
    assert [p.module for p in chosen] == modules
    assert others == rest


@pytest.mark.parametrize("posargs", [["--shard"], ["--shard", "3/2"], ["--shard=x"]])
def test_a_bad_shard_is_refused(noxfile: ModuleType, posargs: list[str]) -> None:
    with pytest.raises(ValueError, match="I/N"):
        noxfile.split_shard(posargs)


def test_collected_node_ids_are_read_from_collect_only_output(noxfile: ModuleType) -> None:
    output = (
        "nox > pytest --collect-only -q\n"
        ".nox/l2-auth/lib/python3.11/site-packages/auth_tests/test_a.py::test_x[a b]\n"
        ".nox/l2-auth/lib/python3.11/site-packages/auth_tests/test_a.py::TestY::test_z\n"
        "\n"
        "2 tests collected in 0.50s\n"
        "warnings summary: thing.py::test_w\n"
    )

    assert noxfile.collected_nodeids(output) == [
        ".nox/l2-auth/lib/python3.11/site-packages/auth_tests/test_a.py::test_x[a b]",
        ".nox/l2-auth/lib/python3.11/site-packages/auth_tests/test_a.py::TestY::test_z",
    ]


def test_per_area_sessions_and_unit_take_a_shard(noxfile: ModuleType) -> None:
    shardable = {s.name for s in noxfile.SESSIONS if "shardable" in s.tags}
    per_area = {f"{level}-{p.area}" for p in noxfile.PACKAGES for level in noxfile.LEVELS}

    assert shardable == per_area | {"unit"}


def test_a_dist_is_stale_until_its_sources_are_recorded_and_again_once_they_change(
    noxfile: ModuleType, tmp_path: Path
) -> None:
    module = tmp_path / "shared" / "src" / "kit" / "__init__.py"
    module.parent.mkdir(parents=True)
    module.write_text("VERSION = 1\n", encoding="utf-8")
    record = tmp_path / "venv" / noxfile.INSTALLED_RECORD
    digest = noxfile.source_digest("./shared", tmp_path)

    assert noxfile.stale_dists({"kit": digest}, record) == ["kit"]  # never installed
    record.parent.mkdir()
    record.write_text("not json", encoding="utf-8")
    assert noxfile.stale_dists({"kit": digest}, record) == ["kit"]  # a record unread
    record.write_text(json.dumps({"kit": digest, "other": "x"}), encoding="utf-8")
    assert noxfile.stale_dists({"kit": digest}, record) == []

    # Caches and build output are not sources; a changed line is.
    for written in ("src/kit/__pycache__/x.pyc", "src/kit.egg-info/PKG-INFO", "build/lib/x.py"):
        (tmp_path / "shared" / written).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "shared" / written).write_text("built", encoding="utf-8")
    assert noxfile.source_digest("./shared", tmp_path) == digest
    module.write_text("VERSION = 2\n", encoding="utf-8")
    changed = noxfile.source_digest("./shared", tmp_path)
    assert noxfile.stale_dists({"kit": changed}, record) == ["kit"]
    (tmp_path / "shared" / "src" / "kit" / "new.py").write_text("", encoding="utf-8")
    assert noxfile.source_digest("./shared", tmp_path) != changed  # a new, empty file
