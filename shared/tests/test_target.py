"""The L4 target file: every mistake is a clear error naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import finish

from apex_testkit._target import TargetError, load_target


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "target.toml"
    path.write_text(text)
    return path


def test_a_good_target(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGING_ADMIN", "s3cret")
    target = load_target(
        write(
            tmp_path,
            'name = "staging"\n[services.auth]\nurl = "https://auth.example.com/"\n'
            '[credentials]\nadmin_token_env = "STAGING_ADMIN"\n',
        )
    )
    assert target.name == "staging"
    assert target.url("auth") == "https://auth.example.com"
    assert target.require_admin_token() == "s3cret"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[services.auth\nurl = 1", "is not valid TOML"),
        ('name = "x"\n', "needs a [services.<name>] table"),
        ("[services.auth]\nport = 1\n", '[services.auth] needs url = "..."'),
        ('[services.auth]\nurl = "ftp://x"\n', "is not an http/https/ws/wss URL"),
        (
            '[services.auth]\nurl = "http://a"\n[sandboxes]\noidc = 1\n',
            "[sandboxes.oidc] needs url",
        ),
        (
            '[services.auth]\nurl = "http://a"\n[sandboxes.smtp]\nurl = "smtp://x:25"\n',
            "[sandboxes.smtp] url 'smtp://x:25' is not an http(s) URL",
        ),
        (
            '[services.auth]\nurl = "http://a"\n[credentials]\nadmin_token_env = "NOPE_UNSET"\n',
            "reads the admin token from $NOPE_UNSET, which is unset",
        ),
    ],
)
def test_bad_targets_say_what_is_wrong(tmp_path, text, says):
    with pytest.raises(TargetError, match=None) as caught:
        load_target(write(tmp_path, text))
    assert says in str(caught.value)
    assert str(tmp_path / "target.toml") in str(caught.value)


def test_a_target_names_its_third_party_sandboxes(tmp_path):
    target = load_target(
        write(
            tmp_path,
            '[services.auth]\nurl = "http://a"\n'
            '[sandboxes.oidc]\nurl = "http://127.0.0.1:4000/"\n'
            '[sandboxes.llm]\nurl = "https://llm-sandbox.example.com"\n',
        )
    )
    # By third-party name, any name: the fixture of a fake says which one it lacks.
    assert target.sandboxes == {
        "oidc": "http://127.0.0.1:4000",
        "llm": "https://llm-sandbox.example.com",
    }
    assert load_target(write(tmp_path, '[services.auth]\nurl = "http://a"\n')).sandboxes == {}


def test_missing_file(tmp_path):
    with pytest.raises(TargetError, match="does not exist"):
        load_target(tmp_path / "nope.toml")


def test_a_service_the_target_lacks(tmp_path):
    target = load_target(write(tmp_path, '[services.auth]\nurl = "http://a"\n'))
    with pytest.raises(TargetError, match=r"has no \[services.gateway\] url \(it names: auth\)"):
        target.url("gateway")
    with pytest.raises(TargetError, match="no \\[credentials\\] admin_token"):
        target.require_admin_token()


def test_l4_without_target_and_bad_target_are_usage_errors(test_package, inner_pytest, tmp_path):
    project = test_package("test_x.py", "def test_x():\n    pass\n")
    code, out = finish(inner_pytest(str(project), "--level", "L4"))
    assert code == 4, out
    assert "--level L4 needs --target FILE" in out, out
    code, out = finish(inner_pytest(str(project), "--level", "L4", "--target", "missing.toml"))
    assert code == 4, out
    assert "target file missing.toml does not exist" in out, out


NEEDS_AUTH_AND_GATEWAY = """
import pytest

@pytest.mark.L4
@pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")
@pytest.mark.parametrize("n", range(3))
def test_auth(platform, n):
    assert platform.target.url("auth")
"""


@pytest.mark.parametrize("processes", [["-p", "no:xdist"], ["-n", "2"]], ids=["one", "xdist"])
def test_a_target_lacking_a_service_the_tests_need_is_one_error(
    test_package, inner_pytest, tmp_path_factory, processes
):
    project = test_package("test_needs.py", NEEDS_AUTH_AND_GATEWAY)
    (project / "pkg_tests" / "__init__.py").write_text('SERVICES = ("auth", "gateway")\n')
    target = tmp_path_factory.mktemp("deployment") / "staging.toml"
    target.write_text('[services.gateway]\nurl = "http://gateway.example"\n')
    code, out = finish(inner_pytest(*processes, "--level", "L4", f"--target={target}"))
    assert code != 0, out
    message = (
        f'target file {target} has no [services.auth] (with url = "..."), which the '
        "selected tests need (auth for pkg_tests); it names: gateway"
    )
    assert out.count(message) == 1, out  # the section; the summary line is shortened
    assert "TargetError" not in out, out  # no test ran into it
    assert " passed" not in out, out
    assert " failed" not in out, out


def test_a_target_naming_every_service_the_tests_need_runs_them(
    test_package, inner_pytest, tmp_path
):
    project = test_package("test_needs.py", NEEDS_AUTH_AND_GATEWAY)
    (project / "pkg_tests" / "__init__.py").write_text('SERVICES = ("auth", "gateway")\n')
    target = write(
        tmp_path, '[services.auth]\nurl = "http://a"\n[services.gateway]\nurl = "http://g"\n'
    )
    code, out = finish(inner_pytest("-p", "no:xdist", "--level", "L4", f"--target={target}"))
    assert code == 0, out
    assert "3 passed" in out, out


PROJECT_INI = """
[pytest]
apex_test_packages = pkg_tests
asyncio_default_fixture_loop_scope = function
addopts = --strict-markers
markers = from_the_project_ini: proves the project's ini file was read
"""


@pytest.mark.parametrize("form", ["space", "equals"])
def test_target_with_a_space_or_equals_keeps_the_projects_configuration(
    test_package, inner_pytest, tmp_path_factory, form
):
    project = test_package(
        "test_x.py",
        """
        import pytest

        @pytest.mark.L2
        @pytest.mark.from_the_project_ini
        @pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10")
        def test_x(pytestconfig):
            print("ini", pytestconfig.inipath, "rootdir", pytestconfig.rootpath)
        """,
    )
    (project / "pytest.ini").write_text(PROJECT_INI)
    # A target outside the project: pytest would take its directory for the rootdir.
    target = tmp_path_factory.mktemp("elsewhere") / "staging.toml"
    target.write_text('[services.auth]\nurl = "http://a"\n')
    option = ["--target", str(target)] if form == "space" else [f"--target={target}"]
    code, out = finish(inner_pytest("-p", "no:xdist", "-s", *option))
    assert code == 0, out
    assert f"ini {project / 'pytest.ini'} rootdir {project}" in out, out
    assert f"rootdir: {project}" in out, out
    assert "1 passed" in out, out
