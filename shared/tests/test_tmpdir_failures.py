"""The run's directory: read-only, full, or out of reach of the user a server runs as.
Each is one clear error naming the directory and the fix (or it just works), never a
traceback per test."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import finish, inner_env

from apex_testkit import _run as runs
from apex_testkit._provisioning._chain import Unavailable

USES_POSTGRES = """
import pytest

bvj = pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")

@pytest.mark.L2
@bvj
def test_a(postgres_database):
    assert postgres_database

@pytest.mark.L2
@bvj
@pytest.mark.parametrize("n", range(2))
def test_b(empty_database, n):
    assert empty_database
"""

RECORDS_ITS_RUN = """
import os, pytest

@pytest.mark.L2
@pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")
def test_postgres(postgres_database, apex_run):
    with open(os.environ["RUN_NAME_FILE"], "w") as out:
        out.write(apex_run.path.name)
"""

PYTEST = [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider"]


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return (
        subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode == 0
    )


needs_mount = pytest.mark.skipif(
    not _can_mount(), reason="needs root and a mount namespace (unshare -m) for a tmpfs"
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs as another user as root")


def _on_tmpfs(mountpoint: Path, options: str, argv: list[str]) -> list[str]:
    """`argv` in a private mount namespace where `mountpoint` is a fresh tmpfs: the mount
    is gone with the process, however it ends."""
    script = 'mount -t tmpfs -o "$1" apex-selftest "$2" && shift 2 && exec "$@"'
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", options,
            str(mountpoint), *argv]  # fmt: skip


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    process = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        return finish(process, timeout=150)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """An empty directory every user can enter (pytest's tmp_path is 0700 as root)."""
    path = Path(tempfile.mkdtemp(prefix="apex-selftest-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_mount
def test_runs_live_in_memory_when_it_has_room(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("APEX_TEST_TMPDIR", raising=False)
    memory = tmp_path / "shm"
    memory.mkdir()
    monkeypatch.setattr(runs, "MEMORY_ROOT", memory)
    monkeypatch.setattr(runs, "MEMORY_ROOM", 1)
    assert runs._temp_root() == memory
    monkeypatch.setattr(runs, "MEMORY_ROOM", 1 << 62)  # no room: the temp dir
    assert runs._temp_root() == Path(tempfile.gettempdir())
    monkeypatch.setattr(runs, "MEMORY_ROOT", tmp_path / "absent")
    monkeypatch.setattr(runs, "MEMORY_ROOM", 1)
    assert runs._temp_root() == Path(tempfile.gettempdir())
    monkeypatch.setenv("APEX_TEST_TMPDIR", str(tmp_path))  # the user's choice wins
    monkeypatch.setattr(runs, "MEMORY_ROOT", memory)
    assert runs._temp_root() == tmp_path


def test_a_read_only_tmpdir_is_one_clear_error(test_package, tmp_path: Path):
    """Item 5: pytest and `apex-testkit stack` say which directory, what is wrong and the
    fix, once; no INTERNALERROR, no traceback."""
    project = test_package("test_pg.py", USES_POSTGRES)
    tmpdir = tmp_path / "read-only"
    tmpdir.mkdir()
    env = inner_env(APEX_TEST_TMPDIR=str(tmpdir))
    commands = {
        "pytest": [*PYTEST, str(project)],
        "stack": [sys.executable, "-m", "apex_testkit._cli", "stack", "--", "true"],
    }
    for name, argv in commands.items():
        code, out = _run(_on_tmpfs(tmpdir, "ro,size=1m", argv), cwd=project, env=env)
        assert code == (4 if name == "pytest" else 2), out
        assert "INTERNALERROR" not in out, out
        assert "Traceback" not in out, out
        assert f"APEX_TEST_TMPDIR={tmpdir}" in out, out
        assert out.lower().count("read-only file system") == 1, out
        assert "Fix: set APEX_TEST_TMPDIR=" in out, out


@needs_mount
def test_a_full_tmpdir_is_one_clear_error_and_later_tests_fail_at_once(
    test_package, reachable_dir: Path
):
    """Items 5, 6: room for PostgreSQL's cluster template but not for the run's copy of
    it. The first test that needs PostgreSQL says so (directory, problem, fix); the run
    remembers it, so the others fail at once with one line; no `cp` traceback."""
    project = test_package("test_pg.py", USES_POSTGRES)
    env = inner_env(APEX_TEST_TMPDIR=str(reachable_dir))
    argv = _on_tmpfs(reachable_dir, "size=60m,mode=0755", [*PYTEST, str(project)])
    code, out = _run(argv, cwd=project, env=env)
    assert code == 1, out
    assert "3 errors" in out, out
    assert out.count("No space left on device") == 3, out  # the full error, then one line each
    assert out.count("Fix: free space") == 1, out
    assert str(reachable_dir) in out, out
    assert "Traceback" not in out, out
    assert "CalledProcessError" not in out, out


def test_the_cluster_copy_is_atomic_and_needs_no_cp(tmp_path: Path, monkeypatch):
    """Item 6: the copy needs no external binary, keeps PostgreSQL's 0700, and a copy that
    fails leaves no half-filled data directory for anyone to start a server on."""
    from apex_testkit._provisioning import postgres

    template = tmp_path / "template"
    (template / "base" / "1").mkdir(parents=True)
    (template / "PG_VERSION").write_text("15\n")
    (template / "base" / "1" / "1259").write_bytes(b"x" * 10_000)
    template.chmod(0o700)
    monkeypatch.setenv("PATH", str(tmp_path / "no-binaries-here"))
    runs = tmp_path / "run"
    runs.mkdir()

    postgres._copy_cluster(template, runs / "data")
    assert (runs / "data" / "PG_VERSION").read_text() == "15\n"
    assert (runs / "data" / "base" / "1" / "1259").stat().st_size == 10_000
    assert stat.S_IMODE((runs / "data").stat().st_mode) == 0o700

    os.mkfifo(template / "base" / "pipe")  # copying a named pipe fails
    with pytest.raises(Unavailable, match="could not copy the PostgreSQL cluster"):
        postgres._copy_cluster(template, runs / "data2")
    assert sorted(p.name for p in runs.iterdir()) == ["data"], "nothing half-copied left"


@needs_root
def test_postgres_as_root_works_from_a_private_tmpdir(test_package, inner_pytest, tmp_path):
    """Item 10: APEX_TEST_TMPDIR and the working directory inside directories only root can
    enter (what `mktemp -d` makes): PostgreSQL, run as the postgres user, still starts, and
    the run leaves nothing behind."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    project = test_package("test_pg.py", RECORDS_ITS_RUN)
    run_name = tmp_path / "run-name"
    env = inner_env(APEX_TEST_TMPDIR=str(private / "tmp"), RUN_NAME_FILE=str(run_name))
    code, out = finish(inner_pytest(str(project), env=env))
    assert code == 0, out
    assert "Permission denied" not in out, out
    name = run_name.read_text()
    leftovers = [
        path
        for base in (private / "tmp", Path("/tmp"), Path("/var/tmp"))
        for path in base.glob(f"apex-testkit-*/*{name}*")
    ]
    assert leftovers == []
