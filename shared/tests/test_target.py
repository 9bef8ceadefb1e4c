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
