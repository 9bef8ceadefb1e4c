"""The stack manifest: valid TOML, written atomically, private."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

from apex.stack.manifest import render_manifest, write_manifest


def test_manifest_has_the_contract_shape() -> None:
    text = render_manifest({"auth": "http://127.0.0.1:4000"}, "tok")
    assert tomllib.loads(text) == {
        "name": "local-stack",
        "services": {"auth": {"url": "http://127.0.0.1:4000"}},
        "credentials": {"admin_token": "tok"},
    }


def test_strings_are_escaped() -> None:
    token = 'a"b\\c\nd\x01'
    assert tomllib.loads(render_manifest({}, token))["credentials"]["admin_token"] == token


def test_without_admin_token_the_credentials_table_is_empty() -> None:
    assert tomllib.loads(render_manifest({}, None))["credentials"] == {}


def test_write_replaces_the_file_and_keeps_it_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "manifest.toml"
    write_manifest(path, "name = 'one'\n")
    write_manifest(path, "name = 'two'\n")
    assert path.read_text() == "name = 'two'\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["manifest.toml"]
