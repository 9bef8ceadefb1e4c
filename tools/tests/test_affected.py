"""Affected tests (tools/affected): the diff parser, the selection rules on a tiny map, the
staleness checks on a tiny git repository, and the map recorded by the contexts plugin
in a real pytest run under coverage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tools.affected import FileChange, affected_tests, default_base, parse_diff, select
from tools.affected.coverage_map import build_map, import_time_lines

ROOT = Path(__file__).parents[2]
APP = "services/src/apex/auth/tokens.py"
TESTS = [
    "auth_tests.test_login::test_login",
    "auth_tests.test_login::test_logout",
    "ws_tests.test_socket::test_connect",
]


def tiny_map(commit: str = "0" * 40) -> dict[str, Any]:
    # tokens.py: line 1 `def issue` (import time), 2-3 its body (login, connect),
    # 5 `def revoke` (import time), 6 its body (logout).
    return {
        "version": 1,
        "commit": commit,
        "dirty": False,
        "recorded": "2026-12-06T00:00:00+00:00",
        "packages": ["auth_tests", "ws_tests"],
        "tests": TESTS,
        "sets": [[0, 2], [1]],
        "files": {APP: {"lines": {"2": 0, "3": 0, "6": 1}, "outside": [1, 5]}},
    }


def test_parse_diff_reads_changed_inserted_new_and_deleted_files() -> None:
    diff = textwrap.dedent(
        """\
        diff --git a/services/src/apex/auth/tokens.py b/services/src/apex/auth/tokens.py
        index 1..2 100644
        --- a/services/src/apex/auth/tokens.py
        +++ b/services/src/apex/auth/tokens.py
        @@ -3 +3 @@ def issue():
        -    return 1
        +    return 2
        @@ -6,0 +7,2 @@ def revoke():
        +    x = 1
        +    y = 2
        @@ -9,2 +10,0 @@
        -a
        -b
        diff --git a/packages/a/src/a/test_new.py b/packages/a/src/a/test_new.py
        new file mode 100644
        --- /dev/null
        +++ b/packages/a/src/a/test_new.py
        @@ -0,0 +1,3 @@
        +def test_new(): ...
        diff --git a/old.py b/old.py
        deleted file mode 100644
        """
    )

    changes = parse_diff(diff)

    assert changes == [
        FileChange(APP, lines=frozenset({3, 9, 10}), inserted_after=frozenset({6})),
        FileChange(
            "packages/a/src/a/test_new.py",
            inserted_after=frozenset({0}),
            added=True,
        ),
        FileChange("old.py", deleted=True),
    ]


def test_a_changed_line_selects_the_tests_that_ran_it() -> None:
    selection = select(tiny_map(), [FileChange(APP, lines=frozenset({6}))], TESTS)

    assert not selection.full
    assert selection.tests == ("auth_tests.test_login::test_logout",)


def test_inserted_lines_select_the_tests_of_the_nearest_run_lines() -> None:
    # After line 3 (end of `issue`): line 3's tests and line 6's (the next run line).
    selection = select(tiny_map(), [FileChange(APP, inserted_after=frozenset({3}))], TESTS)

    assert selection.tests == tuple(TESTS)


def test_a_line_run_at_import_selects_every_test_of_the_file() -> None:
    selection = select(tiny_map(), [FileChange(APP, lines=frozenset({5}))], TESTS)

    assert selection.tests == tuple(TESTS)


def test_a_line_no_test_ran_selects_nothing() -> None:
    selection = select(tiny_map(), [FileChange(APP, lines=frozenset({4}))], TESTS)

    assert (selection.full, selection.tests) == (False, ())


def test_a_changed_test_module_runs_all_its_tests_and_new_tests_always_run() -> None:
    collected = [*TESTS, "auth_tests.test_mfa::test_new"]
    change = FileChange("packages/ws_tests/src/ws_tests/test_socket.py", lines=frozenset({9}))

    selection = select(tiny_map(), [change], collected)

    assert selection.tests == (
        "ws_tests.test_socket::test_connect",
        "auth_tests.test_mfa::test_new",
    )


def test_docs_and_ci_tools_select_nothing() -> None:
    changes = [FileChange("README.md", lines=frozenset({1})), FileChange("tools/shards.py")]

    assert select(tiny_map(), changes, TESTS).tests == ()


@pytest.mark.parametrize(
    "path", ["services/pyproject.toml", "services/src/apex/data/migrations/0001.sql", "noxfile.py"]
)
def test_anything_the_map_cannot_judge_runs_the_whole_session(path: str) -> None:
    selection = select(tiny_map(), [FileChange(path, lines=frozenset({1}))], TESTS)

    assert selection.full
    assert path in selection.reason


def test_a_module_no_test_ran_is_named_and_selects_nothing() -> None:
    change = FileChange("services/src/apex/auth/new_module.py", added=True)

    selection = select(tiny_map(), [change], TESTS)

    assert selection.tests == ()
    assert any("new_module.py: new, and no recorded test ran it" in n for n in selection.notes)


def test_lines_inserted_at_module_level_select_every_test_of_the_file() -> None:
    # After line 4 (blank, before `def revoke` on line 5): a new module-level statement.
    selection = select(tiny_map(), [FileChange(APP, inserted_after=frozenset({4}))], TESTS)

    assert selection.tests == tuple(TESTS)


def test_import_time_lines_are_statements_outside_function_bodies() -> None:
    source = textwrap.dedent(
        """\
        \"\"\"Module docstring.\"\"\"
        LIMIT = 12


        @decorate
        def check(
            value,
        ):
            \"\"\"Docstring.\"\"\"
            return value < LIMIT


        class Box:
            size = 3

            def get(self):
                return self.size
        """
    )

    # A class statement spans its blank lines too (15): a change there selects the file.
    assert import_time_lines(source) == {2, 5, 6, 7, 8, 13, 14, 15, 16}


# -- staleness, on a tiny git repository ---------------------------------------------


def git(repo: Path, *args: str) -> str:
    env = os.environ | {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env=env
    )
    return done.stdout.strip()


@pytest.fixture(name="repo")
def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    source = repo / APP
    source.parent.mkdir(parents=True)
    source.write_text("def issue():\n    a = 1\n    return a\n\ndef revoke():\n    return 0\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "one")
    return repo


def write_map(repo: Path, data: dict[str, Any]) -> Path:
    path = repo.parent / "map.json"
    path.write_text(json.dumps(data))
    return path


def test_without_a_map_the_whole_session_runs(repo: Path) -> None:
    selection = affected_tests(repo, repo / "none.json", "HEAD", TESTS, ["auth_tests"])

    assert selection.full
    assert "no map at" in selection.reason


def test_a_map_of_a_commit_not_in_the_history_is_stale(repo: Path) -> None:
    path = write_map(repo, tiny_map("1234567890" * 4))

    selection = affected_tests(repo, path, "HEAD", TESTS, ["auth_tests"])

    assert selection.full
    assert "stale map" in selection.reason


def test_a_map_recorded_with_uncommitted_changes_is_stale(repo: Path) -> None:
    path = write_map(repo, tiny_map(git(repo, "rev-parse", "HEAD")) | {"dirty": True})

    assert "uncommitted" in affected_tests(repo, path, "HEAD", TESTS, ["auth_tests"]).reason


def test_a_map_without_the_asked_packages_runs_the_whole_session(repo: Path) -> None:
    path = write_map(repo, tiny_map(git(repo, "rev-parse", "HEAD")))

    selection = affected_tests(repo, path, "HEAD", TESTS, ["auth_tests", "db_tests"])

    assert selection.full
    assert "db_tests" in selection.reason


def test_an_uncommitted_line_change_since_the_maps_commit_selects_its_tests(repo: Path) -> None:
    path = write_map(repo, tiny_map(git(repo, "rev-parse", "HEAD")))
    source = repo / APP
    source.write_text(source.read_text().replace("return 0", "return 1"))  # line 6

    selection = affected_tests(repo, path, "HEAD", TESTS, ["auth_tests"])

    assert (selection.full, selection.tests) == (False, ("auth_tests.test_login::test_logout",))


def test_changes_before_the_base_are_not_selected(repo: Path) -> None:
    path = write_map(repo, tiny_map(git(repo, "rev-parse", "HEAD")))
    source = repo / APP
    source.write_text(source.read_text().replace("return 0", "return 1"))
    git(repo, "commit", "-q", "-am", "two")
    (repo / "README.md").write_text("notes\n")

    since_head = affected_tests(repo, path, "HEAD", TESTS, ["auth_tests"])
    since_map = affected_tests(repo, path, "HEAD~1", TESTS, ["auth_tests"])

    assert since_head.tests == ()  # only README.md (untracked) changed since HEAD
    assert since_map.tests == ("auth_tests.test_login::test_logout",)


# -- the map, recorded by the plugin in a real run ------------------------------------


def test_the_contexts_plugin_records_which_test_ran_which_line(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text("def one():\n    return 1\n\n\ndef two():\n    return 2\n")
    (tmp_path / "test_mod.py").write_text(
        "import mod\n\n\ndef test_one():\n    assert mod.one() == 1\n\n\n"
        "def test_two():\n    assert mod.two() == 2\n"
    )
    (tmp_path / ".coveragerc").write_text("[run]\nrelative_files = true\nsource = .\n")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    env.pop("COVERAGE_PROCESS_START", None)
    env["COVERAGE_FILE"] = str(tmp_path / ".coverage")
    command = [sys.executable, "-m", "coverage", "run", "-m", "pytest", "-q", "-p"]
    command += ["tools.affected.contexts", "-p", "no:randomly", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*command, "test_mod.py"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr

    cmap = build_map(tmp_path / ".coverage", "c" * 40, False, ["mod"])

    lines, sets = cmap["files"]["mod.py"]["lines"], cmap["sets"]
    assert cmap["tests"] == ["test_mod::test_one", "test_mod::test_two"]
    assert [cmap["tests"][i] for i in sets[lines["2"]]] == ["test_mod::test_one"]
    assert [cmap["tests"][i] for i in sets[lines["6"]]] == ["test_mod::test_two"]
    assert {1, 5} <= set(cmap["files"]["mod.py"]["outside"])  # the def lines: import time


def test_the_default_base_is_the_merge_base_with_main(repo: Path) -> None:
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "topic")
    (repo / "README.md").write_text("notes\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "topic")
    git(repo, "commit", "-q", "--allow-empty", "-m", "topic 2")

    assert default_base(repo) == first
