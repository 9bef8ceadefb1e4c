"""The root coverage config measures what the nox sessions need measured.

A toy package stands in for the platform: it is imported from a directory named
site-packages (as the non-editable installs are), a pytest run with xdist workers
tests it in-process, through `subprocess.run` and through a `Popen` server stopped
with SIGTERM, and the whole run sits inside a wrapper process that starts another
server first, as `apex-testkit stack -- pytest ...` does at L4. The session recipe
(COVERAGE_PROCESS_START, one data file per process, `coverage combine`) must report
every line that ran, in the source tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import coverage

ROOT = Path(__file__).parents[2]

TOY = {
    "__init__.py": """
        import time


        def in_process(x):
            if x > 0:
                return "in-process"
            return "never"


        def in_subprocess():
            return "subprocess"


        def serve():
            announced = False
            while True:
                time.sleep(0.01)
                if not announced:
                    # Said after one pass of the loop: a reader of "ready" knows every
                    # line of serve() has run, with no sleep of its own.
                    announced = True
                    print("ready", flush=True)
    """,
    "__main__.py": """
        import apex_toy

        apex_toy.serve()
    """,
}

TESTS = """
    import subprocess
    import sys

    import apex_toy


    def test_in_process():
        assert apex_toy.in_process(1) == "in-process"


    def test_subprocess_run():
        code = "import apex_toy; print(apex_toy.in_subprocess())"
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert run.stdout.strip() == "subprocess"


    def test_server_stopped_with_sigterm():
        server = subprocess.Popen([sys.executable, "-m", "apex_toy"], stdout=subprocess.PIPE)
        assert server.stdout.readline().strip() == b"ready"
        server.terminate()
        server.wait(10)
"""

# Stands in for `apex-testkit stack -- COMMAND`: a server, COMMAND, SIGTERM to the server.
WRAPPER = """
    import subprocess, sys
    server = subprocess.Popen([sys.executable, "-m", "apex_toy"], stdout=subprocess.PIPE)
    server.stdout.readline()
    code = subprocess.run(sys.argv[1:]).returncode
    server.terminate()
    server.wait(10)
    sys.exit(code)
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")


def toml_value(value: object) -> str:
    return json.dumps(value)  # strings, booleans and lists of strings: JSON is TOML here


def coverage_config(tmp_path: Path) -> Path:
    """The root [tool.coverage.run] with this toy as the only measured package."""
    run = dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["coverage"]["run"])
    run["source_pkgs"] = ["apex_toy"]
    lines = ["[tool.coverage.run]", *(f"{k} = {toml_value(v)}" for k, v in run.items())]
    lines += [
        "[tool.coverage.paths]",
        'apex_toy = ["src/apex_toy", "*/site-packages/apex_toy"]',
    ]
    config = tmp_path / "pyproject.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def test_every_process_is_measured_and_mapped_to_the_source(tmp_path: Path) -> None:
    for name, text in TOY.items():
        write(tmp_path / "src" / "apex_toy" / name, text)  # the source tree
        write(tmp_path / "venv" / "site-packages" / "apex_toy" / name, text)  # "installed"
    write(tmp_path / "tests" / "test_toy.py", TESTS)
    write(tmp_path / "wrapper.py", WRAPPER)
    write(tmp_path / "pytest.ini", "[pytest]\n")
    data_file = tmp_path / "reports" / ".coverage.l4-toy"
    data_file.parent.mkdir()
    # Not the measurement of this very test run (nox -s selftest): drop its COVERAGE_*.
    outer = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    env = {
        **outer,
        "PYTHONPATH": str(tmp_path / "venv" / "site-packages"),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",  # only xdist, not this venv's plugins
        "COVERAGE_FILE": str(data_file),
        "COVERAGE_PROCESS_START": str(coverage_config(tmp_path)),
    }
    pytest = [sys.executable, "-m", "pytest", "-p", "xdist.plugin", "-n", "2", "-q", "tests"]

    run = subprocess.run(
        [sys.executable, "wrapper.py", *pytest],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr

    per_process = list(data_file.parent.glob(".coverage.l4-toy.*"))
    # wrapper, its server, pytest, 2 workers, the subprocess.run child, the Popen server
    assert len(per_process) >= 6, per_process
    cov = coverage.Coverage(data_file=str(data_file), config_file=str(tmp_path / "pyproject.toml"))
    cwd = Path.cwd()
    os.chdir(tmp_path)  # relative_files: paths are relative to where combine runs
    try:
        cov.combine()
        cov.save()
        data = cov.get_data()
        measured = {
            Path(f).resolve().relative_to(tmp_path).as_posix(): f for f in data.measured_files()
        }
        assert set(measured) == {"src/apex_toy/__init__.py", "src/apex_toy/__main__.py"}
        _, _, _, missing, _ = cov.analysis2(measured["src/apex_toy/__init__.py"])
    finally:
        os.chdir(cwd)
    source = textwrap.dedent(TOY["__init__.py"]).lstrip().splitlines()
    assert missing == [source.index('    return "never"') + 1]  # all the rest ran somewhere
