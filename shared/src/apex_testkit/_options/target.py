"""--target FILE (env APEX_TEST_TARGET): the TOML file naming a deployment's URLs (L4).

Declared and parsed here; L4 needs it. Both `--target FILE` and `--target=FILE` work:
pytest picks its rootdir and ini file before it loads plugins, so it takes the FILE of the
first form for a test path (a file elsewhere moves the rootdir there and loses the
project's configuration); the kit picks them again without it, before the ini is read
further.

Checked once, after collection: each test package declares the platform's services its
tests reach (`SERVICES = ("auth", ...)` in its `__init__.py`, apex.topology names), and a
target that lacks one the selected tests need stops the run with one error naming the file
and the missing tables (not one failure per test). Applied by the `platform` fixture at L4
(`apex_testkit._sut.deployed`); a test that needs another key the file lacks fails with the
TargetError alone (the kit's plugin reports it without a traceback).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
from _pytest.config.findpaths import determine_setup

from apex_testkit._collection import in_test_package
from apex_testkit._level import Level
from apex_testkit._settings import SETTINGS
from apex_testkit._target import Target, TargetError, load_target

ENV = "APEX_TEST_TARGET"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("apex", "Apex test kit").addoption(
        "--target",
        dest="apex_target",
        metavar="FILE",
        help=f"TOML file with the deployment's URLs, for L4 (env {ENV})",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """`--target FILE`: choose pytest's rootdir and ini file again, without FILE."""
    if "--target" not in args[:-1]:
        return
    known = parser.parse_known_args(args)  # now the kit's options are known
    config: Any = early_config  # pytest's own attributes, set from its first choice
    try:
        rootpath, inipath, inicfg, ignored = determine_setup(
            inifile=known.inifilename,
            override_ini=known.override_ini,
            args=known.file_or_dir,
            rootdir_cmd_arg=known.rootdir or None,
            invocation_dir=early_config.invocation_params.dir,
        )
        if (rootpath, inipath) == (config.rootpath, config.inipath):
            return
        wrong_addopts = config.getini("addopts")
        config._rootpath, config._inipath = rootpath, inipath
        config._inicfg, config._ignored_config_files = inicfg, ignored
        config._inicache.clear()
    except (TypeError, ValueError, AttributeError):  # a pytest whose internals differ
        raise pytest.UsageError(
            "this pytest took the FILE of `--target FILE` for a test path when it chose its "
            "rootdir and ini file: write --target=FILE"
        ) from None
    parser.extra_info.update(rootdir=str(rootpath), inifile=str(inipath))
    # The wrong ini's addopts are at the front of args; the right one's go there instead.
    del args[: len(wrong_addopts)]
    args[:0] = config.getini("addopts")
    if known.confcutdir is None:  # pytest's default: the ini file's directory, or rootdir
        config.known_args_namespace.confcutdir = str(inipath.parent if inipath else rootpath)


def parse(config: pytest.Config, level: Level) -> Target | None:
    """The target file the option (else the env variable) names, read and checked."""
    path = config.getoption("apex_target") or os.environ.get(ENV)
    if path:
        try:
            return load_target(path)
        except TargetError as exc:
            raise pytest.UsageError(str(exc)) from None
    if level is Level.L4:
        raise pytest.UsageError(
            f"--level L4 needs --target FILE (or {ENV}): a TOML file with the "
            "deployment's URLs. `nox -s l4` makes one by starting a local stack."
        )
    return None


def needed_services(items: list[pytest.Item]) -> dict[str, list[str]]:
    """Service -> the test packages of `items` that declare they reach it (`SERVICES`)."""
    packages = sorted(
        {
            item.module.__name__.split(".")[0]
            for item in items
            if isinstance(item, pytest.Function) and in_test_package(item)
        }
    )
    needed: dict[str, list[str]] = {}
    for package in packages:
        for service in getattr(sys.modules[package], "SERVICES", ()):
            needed.setdefault(service, []).append(package)
    return needed


@pytest.hookimpl(trylast=True)  # after --level and --perf deselected theirs
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """A target lacking a service the selected tests need is one collection error, and no
    test runs (in every xdist worker alike: the controller shows the error once)."""
    settings = config.stash[SETTINGS]
    if settings.level is not Level.L4 or settings.target is None:
        return
    needed = needed_services(items)
    missing = sorted(set(needed) - set(settings.target.services))
    if not missing:
        return
    tables = ", ".join(f"[services.{service}]" for service in missing)
    who = "; ".join(f"{service} for {', '.join(needed[service])}" for service in missing)
    message = (
        f"apex-testkit: target file {settings.target.path} has no {tables} "
        f'(with url = "..."), which the selected tests need ({who}); it names: '
        f"{', '.join(sorted(settings.target.services))}. Add the table(s), or deselect "
        "those tests."
    )
    config.hook.pytest_deselected(items=list(items))
    items.clear()
    report = pytest.CollectReport(str(settings.target.path), "failed", message, [])
    config.hook.pytest_collectreport(report=report)
