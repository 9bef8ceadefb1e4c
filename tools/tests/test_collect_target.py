"""tools/collect_target.py: the placeholder L4 target `nox -s collect` collects against."""

from __future__ import annotations

import tomllib
from pathlib import Path

from apex.topology import SERVICES
from tools import collect_target


def test_the_target_names_every_service_with_a_url_of_its_protocol(tmp_path: Path) -> None:
    out = tmp_path / "target.toml"

    assert collect_target.main([str(out)]) == 0

    target = tomllib.loads(out.read_text(encoding="utf-8"))
    assert set(target["services"]) == set(SERVICES)
    for name, service in SERVICES.items():
        assert target["services"][name]["url"] == f"{service.protocol}://127.0.0.1:9"
    assert target["credentials"]["admin_token"]


def test_without_an_output_path_it_says_how_to_use_it() -> None:
    assert collect_target.main([]) == 2
